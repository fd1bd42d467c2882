"""The ranker's features: one row per candidate, meaning the same for every entity type.

Groups (see :data:`FEATURES`):

- **embedding**: the ICR embedder's similarity of the round's query (mention + context + clues) with
  the entity text, and its gap to the best candidate; the context alone against the entity text
  (topical fit, whatever the name), as a gap; the document's other names together against the entity
  text (the document's topic), as a gap, 0 for all without a document; and the context's gap
  again where there is no document (the context is then all the topic there is: it gets its own
  weight, so the document's weight does not take from it);
- **name**: every comparison on title parts (:mod:`.names`): exact match of a mention form with the
  base title (and whether that title is plain: no disambiguator, no qualifier; and that for a
  lower-case mention, a common noun, whose plain title is the general concept), fuzzy ratios,
  the mention's words in the name, as its last words (a surname) or first, an initialism, a
  demonym, the mention in the description, words of the name beyond the mention's, the
  disambiguator or qualifier's words in the context, the name's words in the context and in the
  clue text; the context's content words found in the candidate's text (:func:`context_in_desc`);
- **document**: the fuller names the mention stands for in its document (:func:`.names.expansions`:
  ``Walters`` after ``Barbara Walters``): whether the candidate's name is one (exact), and the
  share of words they have in common (Jaccard), all 0 when there is none; and whether there is one
  (the same for every candidate: the softmax ignores it, the NIL model reads it);
- **prior**: the candidate generator's or KB's ``prior`` (popularity or p(entity | mention), any
  non-negative scale where higher is likelier) as its share of the mention's top prior, whether
  it is the top one, and whether this candidate has none while others have one (its fitted
  weight stands in for the unknown share: see :func:`prior_columns`); 0 for every candidate when
  no candidate has a prior, which a softmax over one mention's candidates cannot tell from absent
  (neutral);
- **popularity**: the Wikidata QID number's gap to the lowest among the candidates (constant, so
  neutral, without QIDs);
- **records**: the embedding, name, document and popularity features again, times the share of
  the mention's candidates whose description is a record of fields (``Name: … . Sex: … .``, as
  WikiMEL's are) rather than prose (:func:`record_share`): 0 for every candidate with prose
  descriptions, so prose KBs are ranked by the first block alone, while a KB of records gets its
  own correction to each weight (how much a name match or a text similarity says depends on how
  the KB writes its descriptions);
- **people**: agreement of gender words with a ``Sex:`` field, the context's years against
  ``Birth:``/``Death:`` years, the image era from the clue, the context against ``Occupation:``.
  They read structured descriptions (WikiMEL's); where a description has no such field they are 0
  for that candidate.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from rapidfuzz import fuzz

from ..names import (
    demonym_forms,
    expansions,
    fold,
    is_acronym_of,
    mention_forms,
    name_fold,
    strip_mention,
    title_parts,
)

FEATURES = [
    # embedding
    "sim", "sim_gap", "context_sim_gap", "document_sim_gap", "context_sim_gap_alone",
    # name
    "exact", "exact_plain", "exact_plain_common_noun", "has_disambiguator", "token_set", "partial", "wratio",
    "mention_in_name", "surname_match", "given_name_match", "acronym", "demonym",
    "mention_in_desc", "extra_words", "qualifier_in_context", "name_in_context", "name_in_clue",
    "context_in_desc",
    # document
    "has_expansion", "expansion_exact", "expansion_jaccard",
    # prior and popularity
    "prior", "prior_top", "prior_missing", "qid_gap",
    # people (their own block, already 0 where a description has no such field)
    "gender_clue", "gender_context", "gender_words_context", "year_fit", "has_spouse",
    "before_birth", "child_at_year", "in_lifetime", "after_death", "painting_era",
    "monochrome_era", "occupation_context", "no_occupation",
]
# the features repeated in the records block: every one before the people block but the prior's
# (WikiMEL's records carry no prior, so such weights could not be fitted)
RECORD_SHARED = [f for f in FEATURES[:FEATURES.index("gender_clue")]
                 if f not in ("prior", "prior_top", "prior_missing")]
FEATURES += [f"{f}_in_records" for f in RECORD_SHARED]
_SHARED_COLS = [FEATURES.index(f) for f in RECORD_SHARED]
# a record's description: 'Key: value.' fields from its first character ('Name: X. Sex: male. ...');
# prose that glosses a name in other languages ('Algeria (; Literary Arabic: ...') is not one
_FIELD = re.compile(r"(?:^|\. )[A-Z][A-Za-z ]{0,30}: ")

_WORD = re.compile(r"\w+")
_YEAR = re.compile(r"\b(1[0-9]{3}|20[0-3][0-9])\b")
_FEM = re.compile(r"\b(woman|women|girl|lady|female|actress|queen|princess|mother|wife)\b", re.I)
_MAL = re.compile(r"\b(man|men|boy|gentleman|male|king|prince|father|husband|beard)\b", re.I)
_SHE = re.compile(r"\b(she|her|hers|herself)\b", re.I)
_HE = re.compile(r"\b(he|his|him|himself)\b", re.I)
_FEM_WORDS = re.compile(r"\b(actress|mrs|miss|ms|queen|princess|wife|mother|daughter|sister|lady|"
                        r"duchess|empress|countess|she|her|herself|woman|girl)\b", re.I)
_MAL_WORDS = re.compile(r"\b(mr|king|prince|husband|father|sir|lord|duke|emperor|he|his|him|"
                        r"himself|man|boy)\b", re.I)
_YOUNG = re.compile(r"\b(infant|baby|child|children|boy|girl|young|youth|toddler|kid|born|birth)\b",
                    re.I)
_AFTER = re.compile(r"\b(grave|gravesite|tomb|statue|memorial|monument|funeral|buried|death|died|"
                    r"plaque|bust|museum|posthumous)\b", re.I)
_PAINTING = re.compile(r"\b(painting|drawing|engraving|sketch|fresco|illustration|miniature)\b", re.I)
_MONO = re.compile(r"\b(black and white|monochrome|retro|vintage)\b", re.I)
_BIRTH = re.compile(r"Birth: (\d{3,4})")
_DEATH = re.compile(r"Death: (\d{3,4})")
_OCCUPATION = re.compile(r"Occupation: ([^.]*)")


def is_record(desc: str) -> bool:
    """Whether a description is a record of fields (``Name: X. Sex: male. Birth: 1887, ...``):
    it starts with a ``Key: `` field and has at least two."""
    return bool(re.match(r"[A-Z][A-Za-z ]{0,30}: ", desc)) and len(_FIELD.findall(desc)) >= 2


def record_share(candidates: Sequence[dict[str, Any]]) -> float:
    """The share of the candidates whose description is a record (:func:`is_record`)."""
    if not candidates:
        return 0.0
    return sum(is_record(c.get("desc") or "") for c in candidates) / len(candidates)


def _toks(s: str) -> set[str]:
    return set(fold(s).split())


def _sign(fem: bool, mal: bool) -> int:
    return 1 if fem and not mal else (-1 if mal and not fem else 0)


def _sex(desc: str) -> int:
    if "Sex: female" in desc:
        return 1
    if "Sex: male" in desc:
        return -1
    return 0


def _year(pattern: re.Pattern[str], desc: str) -> int | None:
    m = pattern.search(desc)
    return int(m.group(1)) if m else None


def occupation(cand: dict[str, Any]) -> str:
    """The ``Occupation:`` field of a structured description ('' when there is none)."""
    m = _OCCUPATION.search(cand.get("desc") or "")
    return m.group(1).strip() if m else ""


def _qid_num(c: dict[str, Any]) -> float:
    q = str(c.get("qid") or "")
    return float(q[1:]) if q[:1] in "Qq" and q[1:].isdigit() else math.inf


def qid_gaps(candidates: Sequence[dict[str, Any]]) -> list[float]:
    """How many orders of magnitude each candidate's Wikidata QID number is above the lowest of the
    candidates, capped at 3 and scaled to 0..1 (0: the best-known candidate; 0.5 without a QID).
    A gap, not a rank, so it means the same with 3 candidates as with 10."""
    logs = [math.log10(q) if 0 < q < math.inf else None for q in map(_qid_num, candidates)]
    known = [x for x in logs if x is not None]
    low = min(known) if known else 0.0
    return [0.5 if x is None else min(x - low, 3.0) / 3.0 for x in logs]


def prior_of(c: dict[str, Any]) -> float | None:
    """A candidate's prior as a non-negative float, or None when it has none."""
    p = c.get("prior")
    if p is None or isinstance(p, bool):
        return None
    try:
        p = float(p)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int too large for a float
        return None
    return p if math.isfinite(p) and p >= 0 else None


def prior_columns(candidates: Sequence[dict[str, Any]]
                  ) -> tuple[list[float], list[float], list[float]]:
    """(prior as a share of the mention's top prior, is the top prior, has no prior while others
    do): all 0 when no candidate has a prior. A candidate without a prior among candidates with
    one gets share 0 and ``prior_missing`` 1, whose fitted weight stands in for the share it
    would have had (fitted on mentions whose priors were withheld from candidates at random), so
    a missing prior is neither a vote against the candidate nor one for it."""
    return prior_share_columns([prior_of(c) for c in candidates])


def prior_share_columns(ps: Sequence[float | None]
                        ) -> tuple[list[float], list[float], list[float]]:
    """:func:`prior_columns` from the priors themselves (None: unknown), any non-negative scale:
    the one rule, also for the fit's withheld copies, whose shares are read back as priors."""
    known = [p for p in ps if p is not None]
    top = max(known) if known else 0.0
    n = len(ps)
    if top <= 0:
        return [0.0] * n, [0.0] * n, [0.0] * n
    return ([0.0 if p is None else p / top for p in ps],
            [float(p is not None and p >= top) for p in ps],
            [float(p is None) for p in ps])


def has_prior(candidates: Sequence[dict[str, Any]]) -> bool:
    return any(prior_of(c) is not None for c in candidates)


# words that say nothing about which entity is meant (for the context-description overlap)
_STOP = frozenset("""a about above after again against all also am an and any are as at be been before
being below between both but by can could did do does doing down during each few for from further had
has have having he her here hers him his how i if in into is it its just me more most my no nor not now
of off on once only or other our out over own same she should so some such than that the their them
then there these they this those through to too under until up very was we were what when where which
while who whom why will with would you your said says new one two three first last year years""".split())


def context_in_desc(mention: str, context: str, candidates: Sequence[dict[str, Any]]) -> list[float]:
    """How much of the context each candidate's description shares, as a share of the best
    candidate's (0 for all when none shares any): the context's content words (not the
    mention's, not stopwords) found in the name and description, each weighted by how few of the
    mention's candidates have it (a word every candidate has tells them apart no more than none).
    Lexical, so it catches what a sentence embedding blurs: 'Boat Race' in the context and in one
    description."""
    men = set(fold(mention).split())
    words = {w for w in fold(context).split() if len(w) > 2 and w not in _STOP and w not in men}
    if not words or not candidates:
        return [0.0] * len(candidates)
    bags = [set(fold(f"{c.get('name', '')} {c.get('desc') or ''}").split()) for c in candidates]
    n = len(bags)
    df = dict.fromkeys(words, 0)  # how many candidates have each word: once, not per candidate
    for bag in bags:
        for w in words & bag:
            df[w] += 1
    score = []
    for bag in bags:
        score.append(sum(math.log((n + 1) / (1 + df[w])) for w in words & bag))
    top = max(score)
    return [s / top if top > 0 else 0.0 for s in score]


def _phrase_in(phrase: str, text: str) -> bool:
    return bool(phrase) and f" {phrase} " in f" {text} "


def features(mention: str, context: str, clue_text: str, candidates: Sequence[dict[str, Any]],
             sims: Sequence[float], context_sims: Sequence[float] | None = None,
             occupation_sims: Sequence[float | None] | None = None,
             document: Sequence[str] = (),
             document_sims: Sequence[float] | None = None) -> np.ndarray:
    """One row of :data:`FEATURES` per candidate. ``sims``: the embedder's query-entity
    similarities (query = mention + context + this round's clues); ``context_sims``: the context
    alone against each entity text; ``document_sims``: the document's other names together
    against each entity text (:func:`~i2cr.texts.document_query`; None without any);
    ``occupation_sims``: the context against each candidate's occupation (None where a candidate
    has none); ``document``: the other mentions of the mention's document, as written."""
    n = len(candidates)
    if not n:
        return np.zeros((0, len(FEATURES)))
    best = max(sims)
    csims = list(context_sims) if context_sims is not None else [0.0] * n
    cbest = max(csims)
    alone = float(document_sims is None)
    dsims = list(document_sims) if document_sims is not None else [0.0] * n
    dbest = max(dsims)
    men = strip_mention(mention)
    all_forms = mention_forms(mention)
    forms = set(all_forms)
    men_f = all_forms[0] if all_forms else ""  # '' for a mention of punctuation only ('%%%')
    demonyms = set(demonym_forms(mention))
    lower = float(men[:1].islower())
    men_w = men_f.split()
    men_t = set(men_w)
    ctx_f = fold(context)
    ctx_t = set(ctx_f.split())
    clue_t = _toks(clue_text)
    g_clue = _sign(bool(_FEM.search(clue_text)), bool(_MAL.search(clue_text)))
    g_ctx = _sign(bool(_SHE.search(context)), bool(_HE.search(context)))
    g_words = float(np.sign(len(_FEM_WORDS.findall(context)) - len(_MAL_WORDS.findall(context))))
    years = [int(y) for y in _YEAR.findall(context)]
    young = bool(_YOUNG.search(context) or _YOUNG.search(clue_text))
    after = bool(_AFTER.search(context) or _AFTER.search(clue_text))
    painting = bool(_PAINTING.search(clue_text))
    mono = bool(_MONO.search(clue_text))
    occ = list(occupation_sims) if occupation_sims is not None else [None] * n
    occ_known = [o for o in occ if o is not None]
    occ_best = max(occ_known) if occ_known else 0.0
    qgap = qid_gaps(candidates)
    exps = [(e, set(e.split())) for e in expansions(mention, tuple(document))]
    pshare, ptop, pmiss = prior_columns(candidates)
    cdesc = context_in_desc(men, context, candidates)
    records = record_share(candidates)
    rows = []
    for i, c in enumerate(candidates):
        o = occ[i]
        t = title_parts(c["name"])
        desc = c.get("desc") or ""
        base_f, disp_f, full_f = name_fold(t.base), name_fold(t.display), name_fold(t.full)
        name_w = disp_f.split()
        nt = set(name_w)
        exact = float(bool(forms & {base_f, disp_f, full_f}))
        plain = exact * float(not t.disambiguator and not t.qualifier)
        extra_t = (_toks(t.qualifier) | _toks(t.disambiguator)) - men_t
        k = len(men_w)
        exp_exact = float(any(e in (base_f, disp_f, full_f) for e, _ in exps))
        exp_jac = max((len(w & nt) / len(w | nt) for _, w in exps), default=0.0)
        sex = _sex(desc)
        by, dy = _year(_BIRTH, desc), _year(_DEATH, desc)
        year_fit = before = child = alive = dead = 0.0
        if years and by is not None:
            year_fit = 1.0 if any(by - 5 <= y <= (dy or 2035) + 30 for y in years) else -1.0
            y = max(years)
            before = float(y < by)
            child = float(by <= y < by + 12 and not young)
            alive = float(by + 15 <= y <= by + 90 and (dy is None or y <= dy + 1))
            dead = float(dy is not None and y > dy + 1 and not after)
        era_paint = era_mono = 0.0
        if by is not None:
            era_paint = float(painting) * (1.0 if by < 1830 else -1.0)
            era_mono = float(mono) * (1.0 if by < 1950 else -1.0)
        rows.append([
            sims[i], sims[i] - best, csims[i] - cbest, dsims[i] - dbest,
            (csims[i] - cbest) * alone,
            exact, plain, plain * lower,
            float(bool(t.disambiguator)),
            fuzz.token_set_ratio(men_f, disp_f) / 100,
            fuzz.partial_ratio(men_f, disp_f) / 100,
            fuzz.WRatio(men_f, disp_f) / 100,
            float(bool(men_t) and men_t <= nt),
            float(k > 0 and name_w[-k:] == men_w),
            float(k > 0 and name_w[:k] == men_w and name_w != men_w),
            float(is_acronym_of(men, c["name"])),
            float(bool(demonyms & {base_f, disp_f, full_f})),
            float(_phrase_in(men_f, fold(desc))),
            min(len(nt - men_t), 5) / 5,
            len(extra_t & ctx_t) / max(len(extra_t), 1),
            len(nt & ctx_t) / max(len(nt), 1),
            len(nt & clue_t) / max(len(nt), 1), cdesc[i],
            float(bool(exps)), exp_exact, exp_jac,
            pshare[i], ptop[i], pmiss[i], qgap[i],
            float(g_clue * sex), float(g_ctx * sex), g_words * sex, year_fit,
            float("Spouse:" in desc),
            before, child, alive, dead, era_paint, era_mono,
            0.0 if o is None else o - occ_best, float(o is None),
        ])
    F = np.asarray(rows, dtype=np.float64).reshape(n, len(FEATURES) - len(RECORD_SHARED))
    return np.hstack([F, records * F[:, _SHARED_COLS]])
