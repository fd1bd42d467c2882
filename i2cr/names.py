"""Names as knowledge bases write them, and mentions as texts write them.

Every comparison of a mention with a candidate name goes through here, so that ``Justin_Bieber``,
``St._Louis,_Missouri``, ``Iron_Man_(Ultimate_Marvel_character)`` and ``Caf%C3%A9`` mean what they
say before any matching or embedding:

- :func:`title_parts` splits a title into its base (``St. Louis``), a comma qualifier
  (``Missouri``) and a trailing parenthesised disambiguator (``Ultimate Marvel character``), after
  undoing underscores and percent-escapes;
- :func:`mention_forms` gives the surface forms a mention may stand for: the mention itself without
  a possessive or a leading article, and its singular (:func:`lookup_forms`, what a search by
  words looks for), and the mention as written (``The Times``); :func:`demonym_forms`, for a demonym or
  adjectival form (``Chinese``, ``South African``), the place and the people it names, from the
  shipped table ``demonyms.tsv``;
- :func:`is_acronym_of` tells whether a mention (``UN``, ``U.N.``, ``OLPC``) is the initialism of a
  name;
- :func:`expansions` gives the fuller names a short mention stands for in its document (``Walters``
  after ``Barbara Walters``, ``UN`` after ``United Nations``): the document's other mentions that
  contain the mention's words, or whose initials it is. A news text
  names a person in full once and by surname after that; so do entity linkers (REL, AIDA expand
  mentions this way before looking them up);
- :func:`unlisted_fuller_name` tells when a one-word mention's fuller name in its document
  (``Walters`` after ``Barbara Walters``) is none of the candidates: the referent is then not among
  them. Given names compare through their short forms (``Bob`` is ``Robert``: the shipped table
  ``nicknames.tsv``).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from urllib.parse import unquote

from rapidfuzz import fuzz
from rapidfuzz.distance import Levenshtein

_SPACES = re.compile(r"\s+")
_DISAMBIG = re.compile(r"^(.*\S)\s*\(([^()]+)\)\s*$")
# a possessive ending: 's, or the apostrophe alone after an s (Texas' keeps its s)
_POSSESSIVE = re.compile(r"(?:['\u2019]s|(?<=s)['\u2019])$", re.I)
_ARTICLE = re.compile(r"^(the|a|an)\s+", re.I)
_WORD = re.compile(r"[^\W_]+")
_SIGNS = ("@", "#")
# words an initialism usually skips ("United Nations Educational, Scientific and Cultural ...")
_MINOR = {"of", "the", "and", "for", "de", "du", "des", "la", "le", "in", "on", "at", "to", "&",
          "a", "an", "y", "e", "del", "der", "von", "van"}


def clean(text: str) -> str:
    """Underscores to spaces, percent-escapes decoded, white space folded."""
    text = text or ""
    if "%" in text:
        text = unquote(text)
    return _SPACES.sub(" ", text.replace("_", " ")).strip()


@lru_cache(maxsize=131072)
def fold(text: str) -> str:
    """Lower case, accents removed, punctuation to spaces: the form exact comparisons use."""
    t = unicodedata.normalize("NFKD", clean(text))
    t = "".join(ch for ch in t if not unicodedata.combining(ch)).lower()
    return " ".join(_WORD.findall(t))


def name_fold(name: str) -> str:
    """:func:`fold` of a name or mention, keeping the sign of a handle or hashtag: '@Bieber' (an
    account) is not the name 'Bieber'. For names only: a text is folded with :func:`fold`,
    where a sign is punctuation wherever it stands."""
    words = fold(name)
    t = clean(name)
    return t[0] + words if t[:1] in _SIGNS and words and _WORD.match(t, 1) else words


@dataclass(frozen=True)
class Title:
    """A knowledge-base title taken apart: ``base, qualifier (disambiguator)``."""

    full: str  # cleaned, whole
    base: str  # without the disambiguator and the comma qualifier
    qualifier: str  # after the first ", " of the part before the disambiguator ('' if none)
    disambiguator: str  # inside the trailing parentheses ('' if none)

    @property
    def display(self) -> str:
        """The title without its disambiguator (``St. Louis, Missouri``)."""
        return f"{self.base}, {self.qualifier}" if self.qualifier else self.base


@lru_cache(maxsize=65536)
def title_parts(name: str) -> Title:
    full = clean(name)
    head, disamb = full, ""
    m = _DISAMBIG.match(full)
    if m:
        head, disamb = m.group(1).strip(), m.group(2).strip()
    base, qual = head, ""
    if ", " in head:
        b, q = head.split(", ", 1)
        # a qualifier names a place ('St. Louis, Missouri'); a list with '&' is the name itself
        # ('Earth, Wind & Fire', 'Crosby, Stills, Nash & Young')
        if b.strip() and q.strip() and "&" not in q:
            base, qual = b.strip(), q.strip()
    return Title(full=full, base=base, qualifier=qual, disambiguator=disamb)


def _table(name: str) -> list[tuple[str, str]]:
    """The rows of a shipped two-column table (``demonyms.tsv``, ``nicknames.tsv``): its lines
    split at the first tab, blank lines and ``#`` comments left out."""
    text = files("i2cr").joinpath(name).read_text(encoding="utf-8")
    return [(a, b) for a, _, b in (line.partition("\t") for line in text.splitlines()
                                   if line.strip() and not line.startswith("#"))]


@lru_cache(maxsize=1)
def demonyms() -> dict[str, str]:
    """Folded demonym or adjectival form -> place title (from the shipped ``demonyms.tsv``)."""
    return {fold(form): place.strip() for form, place in _table("demonyms.tsv") if place.strip()}


def strip_mention(mention: str) -> str:
    """The mention without a possessive ending or a leading article, cleaned."""
    m = clean(mention)
    m2 = _POSSESSIVE.sub("", m).strip() if len(m) > 3 else m
    m2 = _ARTICLE.sub("", m2).strip()
    return m2 or m


def singular(folded: str) -> str:
    """The folded phrase with its last word made singular (``power stations`` -> ``power
    station``, ``policies`` -> ``policy``); unchanged when it does not look plural."""
    head, _, last = folded.rpartition(" ")
    if len(last) <= 3 or last.endswith(("ss", "us", "is")):
        return folded
    if last.endswith("ies"):
        last = last[:-3] + "y"
    elif last.endswith(("ches", "shes", "xes", "sses")):
        last = last[:-2]
    elif last.endswith("s"):
        last = last[:-1]
    return f"{head} {last}".strip()


@lru_cache(maxsize=65536)
def lookup_forms(mention: str) -> tuple[str, ...]:
    """The forms a name lookup searches for (a KB's full-text index): the mention folded as a
    name (:func:`name_fold`) without possessive or article (the first form), and its singular
    (``newspapers`` -> ``newspaper``)."""
    f = name_fold(strip_mention(mention))
    return tuple(dict.fromkeys(x for x in (f, singular(f)) if x))


@lru_cache(maxsize=65536)
def mention_forms(mention: str) -> tuple[str, ...]:
    """The forms a mention is compared with titles in: :func:`lookup_forms`, and the mention as
    written, for a name whose article or ``'s`` is its own (``The Times``, ``McDonald's``; a
    lookup by words would add 'the' and 's' to every such search)."""
    return tuple(dict.fromkeys((*lookup_forms(mention), *filter(None, [name_fold(mention)]))))


@lru_cache(maxsize=65536)
def demonym_forms(mention: str) -> tuple[str, ...]:
    """For a demonym or adjectival form, its place and the people, folded (``Russian`` ->
    ``russia``, ``russians``, ``russian people``); () for any other mention."""
    f = fold(strip_mention(mention))
    place = demonyms().get(f)
    if place is None and f.endswith("s"):
        f = f[:-1]  # "Russians"
        place = demonyms().get(f)
    if not place:
        return ()
    # the people: 'russians', 'russian people'; 'swiss' is its own plural
    return (fold(place), f if f.endswith("s") else f + "s", f + " people")


def initials(name: str, *, skip_minor: bool) -> str:
    words = _WORD.findall(clean(name))
    if skip_minor:
        words = [w for w in words if w.lower() not in _MINOR]
    return "".join(w[0] for w in words).lower()


def is_acronym_of(mention: str, name: str) -> bool:
    """``UN`` / ``U.N.`` for ``United Nations``, ``OLPC`` for ``One Laptop per Child``: the
    mention (2 to 8 letters, written in capitals or with dots) is the name's initials, with or
    without its minor words."""
    m = clean(mention)
    letters = "".join(_WORD.findall(m))
    if not (2 <= len(letters) <= 8) or not (letters.isupper() or "." in m):
        return False
    if len(_WORD.findall(title_parts(name).display)) < 2:
        return False
    low = letters.lower()
    base = title_parts(name).display
    return low in (initials(base, skip_minor=True), initials(base, skip_minor=False))


MAX_DOCUMENT_NAMES = 500  # names of a document looked at (a cap on hostile input)


def _contains(longer: list[str], shorter: list[str]) -> bool:
    k = len(shorter)
    return any(longer[i:i + k] == shorter for i in range(len(longer) - k + 1))


def expansions(mention: str, document: tuple[str, ...] | list[str] = ()) -> tuple[str, ...]:
    """Fuller names the mention may stand for, folded: each of the document's other mentions
    (``document``) that is longer than the mention and contains its words in order, or whose
    initials the mention is. Only for a capitalised mention (a lower-case one is a common noun or
    a pronoun); () when there is none. (Capitalised words of the context were tried too: on the
    held-out datasets sentence-initial words and titles made them noise.)"""
    return _expansions(mention, tuple(x for x in document if isinstance(x, str)))


# the ranker asks the two functions below again every round of a mention; each call's key holds its
# document (up to MAX_DOCUMENT_NAMES names), so a cache of many would hold a served API's documents
# by the gigabyte (8192 of them: 1.2 GB of text at 300 characters a name)
DOCUMENT_CACHE = 512


@lru_cache(maxsize=DOCUMENT_CACHE)
def _expansions(mention: str, document: tuple[str, ...]) -> tuple[str, ...]:
    m = strip_mention(mention)
    if not m[:1].isupper():
        return ()
    words = fold(m).split()
    if not words:
        return ()
    out: dict[str, None] = {}
    for name in document[:MAX_DOCUMENT_NAMES]:
        n = strip_mention(name)
        f = fold(n).split()
        if (len(f) > len(words) and _contains(f, words)) or is_acronym_of(m, n):
            out[" ".join(f)] = None
    return tuple(out)


# words before a surname that are a title, not a given name ("President Bush" is George W. Bush,
# "Attorney General Ashcroft" John Ashcroft), wherever they stand before it
_TITLES = {"mr", "mrs", "ms", "miss", "dr", "prof", "professor", "sir", "dame", "lord", "lady",
           "president", "vice", "prime", "minister", "premier", "chancellor", "senator", "sen",
           "governor", "gov", "mayor", "rep", "representative", "congressman", "congresswoman",
           "secretary", "judge", "justice", "general", "gen", "colonel", "col", "captain", "capt",
           "lieutenant", "lt", "sergeant", "sgt", "admiral", "adm", "commander", "coach", "king",
           "queen", "prince", "princess", "pope", "saint", "st", "father", "rev", "reverend",
           "bishop", "cardinal", "rabbi", "sheikh", "ayatollah", "chairman", "director", "officer",
           "agent", "detective", "inspector", "chief", "former", "late", "young", "old",
           "attorney", "ambassador", "speaker", "sheriff", "commissioner", "deputy", "marshal",
           "major", "maj", "corporal", "cpl", "private", "pvt", "sister", "brother", "archbishop",
           "imam", "emir", "sultan", "emperor", "empress", "duke", "duchess", "count", "countess",
           "baron", "baroness", "earl", "chairwoman", "spokesman", "spokeswoman", "anchor"}
# titles that name anybody of the surname politely; any other ("President Bush") names one whom the
# document may mean by the surname alone, beside a fuller name ("Laura Bush")
_COURTESY = {"mr", "mrs", "ms", "miss", "dr"}
# words before a last word that make another place of it, not a given name ("New England" is not
# England, "North Carolina" not Carolina, "Latin America" not America, "Santa Barbara" not a
# Barbara, "San Diego" not a Diego)
_PLACE_WORDS = {"new", "north", "south", "east", "west", "northern", "southern", "eastern",
                "western", "northeast", "northwest", "southeast", "southwest", "northeastern",
                "northwestern", "southeastern", "southwestern", "central", "upper", "lower",
                "greater", "great", "little", "latin", "middle", "san", "santa", "santo", "sao",
                "los", "las", "el", "la", "le", "les", "sainte", "ste", "fort", "port", "puerto",
                "porto", "costa", "saudi", "sri", "equatorial"}
# the longest name the rule reads (a given name or two, a surname, a suffix): longer text in a
# mention or a document is no such name, and is not folded word by word on every round
_NAME_CHARS = 100
# the generation after a name ("Robert Downey Jr."), no part of the surname
_SUFFIXES = {"jr", "sr", "junior", "senior", "ii", "iii", "iv"}
# punctuation around a name as written ('"Walters"', "(Barbara Walters)", "Walters,")
_AROUND = re.compile(r"^[^\w'\u2019]+|[^\w'\u2019.]+$|(?<=\w\w)\.$")


@lru_cache(maxsize=1)
def nicknames() -> dict[str, frozenset[str]]:
    """Folded given name -> every folded form of it (itself, its formal name, its short forms), from
    the shipped ``nicknames.tsv`` (a short form of several names, 'Kate', gets them all)."""
    groups: dict[str, set[str]] = {}
    for formal, short in _table("nicknames.tsv"):
        forms = {fold(formal)} | {fold(x) for x in short.split()}
        for f in forms:
            groups.setdefault(f, set()).update(forms)
    return {k: frozenset(v) for k, v in groups.items()}


def same_given_name(a: str, b: str) -> bool:
    """Whether two folded given names can name one person: equal, one the other's initial
    ('t' for 'thomas'), forms of one name (``Bob`` and ``Robert``, ``Steven`` and ``Stephen``:
    :func:`nicknames`; two names that share a short form are not one: ``Albert`` and ``Alfred``, both
    ``Al``), or spellings of one (five letters or more, one letter apart: ``Jonathon`` and
    ``Jonathan``, ``Phillip`` and ``Philip``)."""
    if a == b or (len(a) == 1 and b[:1] == a) or (len(b) == 1 and a[:1] == b):
        return True
    if b in nicknames().get(a, ()):
        return True
    return min(len(a), len(b)) >= 5 and Levenshtein.distance(a, b, score_cutoff=1) <= 1


def _bare(name: str) -> str:
    """A name as written, without the punctuation around it, a possessive or a leading article."""
    return strip_mention(_AROUND.sub("", clean(name)))


def _unsuffixed(words: list[str]) -> list[str]:
    return words[:-1] if len(words) > 1 and words[-1] in _SUFFIXES else words


def unlisted_fuller_name(mention: str, candidate_names: Sequence[str],
                         document: Sequence[str] = ()) -> str | None:
    """The fuller name a one-word mention stands for in its document when no candidate is it,
    else None: the referent is then not among the candidates (NIL, where that is allowed).

    It applies to a mention written as one capitalised word, not an acronym (``Walters``,
    ``O'Donnell``; quotes or brackets around it do not count), when the document names it with one
    or two capitalised words before it (``Barbara Walters``, ``Richard Norton Smith``; a suffix such
    as ``Jr.`` after it is no part of it, and a title such as ``President`` or ``Attorney General``
    is not a given name, nor a word such as ``New``, ``North`` or ``San`` that makes another place
    of it: ``New England``, ``San Diego``), when some candidate bears the mention's name (the rule's
    ground: they are other bearers of it; candidates in another script or found by other means say
    nothing), and when no candidate is that fuller name: none whose title (its base, without a
    disambiguator, qualifier or suffix) contains it or is contained in it (``Ross Perot`` for ``H.
    Ross Perot``), or ends with the mention after one of its given names (``Bob Nardelli`` is
    ``Robert Nardelli``, ``Thomas Eliot`` is ``T. S. Eliot``: :func:`same_given_name`), or is
    written family name first (``Walters, Barbara``). With several fuller names it applies only when
    none is a candidate. It does not apply when a candidate's plain title is the mention itself
    (``California`` beside ``Central California``: the mention may be that entity), nor when the
    document names a candidate that bears the mention's name (``Washington, D.C.``, ``Kingdom of
    Jordan``) or names a bearer by a title other than a courtesy one (``President Bush`` beside
    ``Laura Bush``)."""
    return _unlisted_fuller_name(mention, tuple(str(c) for c in candidate_names),
                                 tuple(x for x in document if isinstance(x, str)))


@lru_cache(maxsize=DOCUMENT_CACHE)
def _unlisted_fuller_name(mention: str, candidate_names: tuple[str, ...],
                          document: tuple[str, ...]) -> str | None:
    if len(mention) > _NAME_CHARS:
        return None
    m = _bare(mention)
    if len(m.split()) != 1 or not m[:1].isupper() or m.isupper():
        return None
    sur = fold(m).split()
    if not sur:
        return None
    k = len(sur)
    fuller: dict[str, list[str]] = {}
    written: set[str] = set()  # the document's names, folded
    for name in document[:MAX_DOCUMENT_NAMES]:
        if len(name) > _NAME_CHARS:
            continue
        n = _bare(name)
        written.add(fold(n))
        words = n.split()
        if len(words) > 2 and fold(words[-1]) in _SUFFIXES:
            words = words[:-1]
        # the surname a word of its own: 'Austria-Hungary' names no Hungary, 'Mercedes-Benz' no Benz
        if len(words) < 2 or fold(words[-1]).split() != sur:
            continue
        f = fold(" ".join(words)).split()
        given = f[:-k]
        if any(w in _TITLES and w not in _COURTESY for w in given):
            return None  # 'President Bush': a bearer the document names otherwise than in full
        if (len(given) > 2 or any(w in _TITLES or w in _PLACE_WORDS for w in given)
                or not all(w[:1].isupper() for w in words)):
            continue
        fuller[" ".join(f)] = f
    if not fuller:
        return None
    borne = False  # some candidate bears the mention's name
    for c in candidate_names:
        t = title_parts(c)
        base = _unsuffixed(name_fold(t.base).split())
        bears = _contains(fold(t.full).split(), sur)
        borne = borne or bears
        if bears and written & {fold(t.full), fold(t.display), fold(f"{t.base} {t.disambiguator}")}:
            return None  # the document names this one too ('Washington, D.C.', 'Kingdom of Jordan')
        if base == sur:
            if not t.disambiguator and not t.qualifier:
                return None  # the plain title: the mention may be that entity
            qual = fold(t.qualifier).split()  # 'Walters, Barbara': family name first
            if qual[:1] and len(qual[0]) > 1 and any(same_given_name(qual[0], f[0])
                                                     for f in fuller.values()):
                return None
        if any(_names_it(base, f, k) for f in fuller.values()):
            return None
    return next(iter(fuller)) if borne else None


# how close, as rapidfuzz's token-set or partial ratio of the folded forms (0..1), a candidate's
# title must come to the mention's for :func:`no_candidate_bears_it` to count it as bearing it
BEARS_RATIO = 0.6


def scripts(text: str) -> frozenset[str]:
    """The scripts of a text's letters, by the first word of their Unicode names ('LATIN',
    'CYRILLIC', 'GREEK', 'CJK', ...)."""
    return frozenset(unicodedata.name(ch, "?").split(" ", 1)[0] for ch in text if ch.isalpha())


def no_candidate_bears_it(mention: str, candidate_names: Sequence[str]) -> bool:
    """Whether a proper name bears no likeness to any candidate's title, so that its referent is
    not among them (a KB's search, finding nothing under the name, hands over whatever comes
    nearest: "Jordan" with only "Amman" and "Paris Hilton").

    It applies to a mention written as a proper name (a capitalised word, every other word
    capitalised or a number; up to 100 characters) whose candidates' titles are written in its
    script (:func:`scripts`: letters say nothing across scripts), when no candidate's title is
    the mention under any of its forms (:func:`mention_forms`), holds all its words, is a title
    that it or one of its words is the initials of (``VOA News``: ``Voice of America``), is the
    place it is the demonym of, or comes within :data:`BEARS_RATIO` of it in token-set or partial
    ratio. False without candidates."""
    return _no_candidate_bears_it(mention, tuple(str(c) for c in candidate_names))


@lru_cache(maxsize=DOCUMENT_CACHE)
def _no_candidate_bears_it(mention: str, candidate_names: tuple[str, ...]) -> bool:
    if not candidate_names or len(mention) > _NAME_CHARS:
        return False
    m = _bare(mention)
    words = _WORD.findall(m)
    if (not any(w[:1].isupper() for w in words)
            or not all(w[:1].isupper() or w[:1].isdigit() for w in words)):
        return False  # ('1984' is no name to judge by its letters: 'Nineteen Eighty-Four')
    script = scripts(m)
    if any(scripts(c) != script for c in candidate_names):
        return False  # a title in another script bears no likeness in letters ('Moscow', 'Москва')
    forms = set(mention_forms(mention))
    men_f = next(iter(mention_forms(mention)), "")
    if not men_f:
        return False
    men_t = set(men_f.split())
    places = set(demonym_forms(mention))
    for c in candidate_names:
        t = title_parts(c)
        titles = {name_fold(t.base), name_fold(t.display), name_fold(t.full)}
        disp = name_fold(t.display)
        if (forms & titles or places & titles or men_t <= set(disp.split())
                or any(is_acronym_of(w, c) for w in [m, *words] if w.isupper())
                or fuzz.token_set_ratio(men_f, disp) >= 100 * BEARS_RATIO
                or fuzz.partial_ratio(men_f, disp) >= 100 * BEARS_RATIO):
            return False
    return True


def _names_it(base: list[str], fuller: list[str], k: int) -> bool:
    """Whether a candidate's folded base is the folded ``fuller`` name (its last ``k`` words the
    surname): it contains it, is it in another order ('Xi Jinping' for 'Jinping Xi'), with fewer
    words ('Ross Perot' for 'H. Ross Perot') or under another form of a given name ('Robert' for
    'Bob')."""
    if _contains(base, fuller) or sorted(base) == sorted(fuller):
        return True
    return len(base) > k and base[-k:] == fuller[-k:] and (
        _contains(fuller, base) or any(same_given_name(base[0], g) for g in fuller[:-k]))
