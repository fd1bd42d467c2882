"""Mentions, candidates and the loaders for the I2CR/MELBench JSON and a simple JSONL form.

The official I2CR format is a dict ``id -> sample`` where a sample holds ``mention``,
``mention_context``, ``mention_imgpath``, ``Candentity`` (a list of ``{qid?, name, desc}``) and,
optionally, ``mention_imgdesc_Azure`` (precomputed Azure AI Vision clues). Gold labels live in a
separate file, ``id -> gold candidate name`` or ``"nil"``.

The JSONL form has one sample per line with the same field names (``id`` required) or the
short names ``context``, ``image``, ``candidates``, ``clues`` and ``label``.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import sys
import unicodedata
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar

from .names import MAX_DOCUMENT_NAMES, clean  # names owns the cap on a document's names

NIL = "nil"
T = TypeVar("T")


# what a title may hold but never spells: the direction marks MediaWiki strips from a title
# (a label pasted from a right-to-left page ends in one) and control characters
_UNSPELLED = re.compile("[\u200e\u200f\u202a-\u202e\x00-\x1f\x7f]")


def title_key(name: str) -> str:
    """The form under which two spellings of one title are equal: case, outer and repeated white
    space ignored, underscores read as spaces and percent-escapes decoded, direction marks and
    control characters dropped, as Wikipedia reads a title (``Justin_Bieber`` is ``Justin
    Bieber``, ``Fran%C3%A7ois_Hollande`` is ``François Hollande``); '' for a title that spells
    nothing (``_``, ``%E2%80%8E``)."""
    return " ".join(_UNSPELLED.sub("", unicodedata.normalize("NFC", clean(name))).split()).lower()


def same_entity(answer: object, gold: object) -> bool:
    """Whether an answer names the gold entity: the one rule every figure uses (the two names'
    :func:`title_key` are equal; no answer is never right)."""
    return isinstance(answer, str) and isinstance(gold, str) and \
        title_key(answer) == title_key(gold)

# Canonical names of the precomputed visual clues, as the dataset spells them.
CLUE_KEYS = ("OCR text", "Caption", "Dense Captions", "Tags")

# Caps on every text field of a mention, in characters, applied when a Mention is made (so the
# loaders, link() and the API all get them). Far above anything in the WikiMEL and TextEL dev
# splits (longest: mention 58, name 86, desc 487, clue 590 characters), they only stop hostile
# records (a 50 MB OCR clue took 6.9 GB and 3.5 minutes). A longer field is cut, never rejected,
# and the cut is recorded in ``Mention.truncations`` and the result record's ``truncated``. The
# context has a ceiling here too; the ``max_context_chars`` setting cuts it further before use.
MAX_MENTION_CHARS = 500
MAX_CONTEXT_CHARS = 100_000
MAX_NAME_CHARS = 300
MAX_DESC_CHARS = 4_000
MAX_CLUE_CHARS = 4_000  # per clue; a list or object clue counts the characters of all its parts


MAX_SHOWN_ID = 100  # characters of a record id that a message quotes


def shown_id(rid: str) -> str:
    """A record id as a message quotes it: in full up to :data:`MAX_SHOWN_ID` characters, else
    its start and its length (a 100,000-character id made each line naming it that long)."""
    rid = str(rid)
    if len(rid) <= MAX_SHOWN_ID:
        return repr(rid)
    return f"{rid[:MAX_SHOWN_ID]!r}… ({len(rid)} characters)"


class DataError(ValueError):
    """A malformed input file or record. The message names the file, the record and the field."""

    def __init__(self, message: str, *, source: str | None = None, record: str | None = None,
                 field: str | None = None):
        self.source, self.record, self.field = source, record, field
        self.label: str | None = None  # the record's gold answer, when a run knows it
        # the id an unreadable record's text still gives while the record is named by its place
        # (``line N``: :func:`readable_id`): a label for it is this record's (:func:`to_item`)
        self.claimed_id: str | None = None
        where = []
        if source:
            where.append(f"{source}")
        if record is not None:
            where.append(f"record {shown_id(record)}")
        if field:
            where.append(f"field {field!r}")
        self.where, self.reason = ": ".join(where), message  # the message is "where: reason"
        super().__init__(f"{self.where}: {message}" if where else message)


@dataclass(frozen=True)
class Candidate:
    name: str
    desc: str = ""
    qid: str | None = None
    prior: float | None = None  # popularity or p(entity | mention): higher is likelier

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "desc": self.desc}
        if self.qid:
            d["qid"] = self.qid
        if self.prior is not None:
            d["prior"] = self.prior
        return d


@dataclass
class Mention:
    """One mention to link. ``image`` is a local path (relative to ``image_root``) or a URL."""

    id: str
    mention: str
    context: str
    candidates: list[Candidate]
    image: str | None = None
    image_root: str | None = None
    clues: dict[str, Any] | None = None
    label: str | None = None
    allow_nil: bool = False
    meta: dict[str, Any] = field(default_factory=dict)
    truncations: list[dict[str, Any]] = field(default_factory=list)  # fields cut to their caps
    # the other mentions of its document, as written (the ranker reads fuller names from them)
    document: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        cuts = self.truncations = list(self.truncations)
        self.mention = _cut(self.mention, MAX_MENTION_CHARS, "mention", cuts)
        self.context = _cut(self.context, MAX_CONTEXT_CHARS, "context", cuts)
        cands = []
        for i, c in enumerate(self.candidates):
            if not isinstance(c, Candidate):
                cands.append(c)
                continue
            name = _cut(c.name, MAX_NAME_CHARS, f"candidates[{i}].name", cuts)
            desc = _cut(c.desc, MAX_DESC_CHARS, f"candidates[{i}].desc", cuts)
            if desc is not c.desc:  # positions change when candidates are shuffled: name it
                cuts[-1]["candidate"] = name
            same = name is c.name and desc is c.desc
            cands.append(c if same else replace(c, name=name, desc=desc))
        self.candidates = cands
        if isinstance(self.clues, dict):
            self.clues = {k: _cap_clue(v, f"clues[{k!r}]", cuts) for k, v in self.clues.items()}
        # checked and capped as parse_record and link() check them, for a Mention made in code
        doc = document_names(self.document, source="Mention", record=str(self.id), field="document")
        self.document = [x[:MAX_NAME_CHARS] for x in doc[:MAX_DOCUMENT_NAMES]]

    def image_ref(self) -> str | None:
        """The image as a URL or a resolved local path (None when the sample has no image)."""
        if not self.image:
            return None
        if self.image.startswith(("http://", "https://", "data:")):
            return self.image
        p = Path(self.image)
        if not p.is_absolute() and self.image_root:
            p = Path(self.image_root) / p
        return str(p)

    def to_input(self) -> dict[str, Any]:
        """The graph's input state for this mention."""
        return {
            "sample_id": self.id,
            "mention": self.mention,
            "context": self.context,
            "image": self.image_ref(),
            "candidates": [c.to_dict() for c in self.candidates],
            "precomputed_clues": dict(self.clues) if self.clues else None,
            "allow_nil": self.allow_nil,
            "document_mentions": list(self.document),
        }


def document_names(document: Any, *, source: str | None = None, record: str | None = None,
                   field: str = "document_mentions") -> list[str]:
    """A mention's document (the other mentions of it, as written) as a list: None is none; a
    sequence of strings is it; anything else, a lone string included (which would be read as its
    characters), is refused with a :class:`DataError` naming ``field``. The one check of a
    document, for records (``document_mentions``), :func:`i2cr.linker.link` and :class:`Mention`."""
    if document is None:
        return []
    if isinstance(document, (str, bytes)) or not isinstance(document, Sequence) \
            or not all(isinstance(x, str) for x in document):
        raise DataError("must be a list of strings", source=source, record=record, field=field)
    return list(document)


def _cut(text: Any, cap: int, name: str, cuts: list[dict[str, Any]]) -> Any:
    if isinstance(text, str) and len(text) > cap:
        cuts.append({"field": name, "from_chars": len(text), "to_chars": cap})
        return text[:cap]
    return text


def _size(value: Any) -> tuple[int, int]:
    """(characters, depth) of a clue value: its strings count their characters, and every
    number, item or key at least one."""
    n, deepest, stack = 0, 0, [(value, 0)]
    while stack:
        x, d = stack.pop()
        if isinstance(x, str):
            n += len(x)
        elif isinstance(x, dict):
            n, deepest = n + len(x), max(deepest, d)
            stack.extend((k, d + 1) for k in x.keys())
            stack.extend((v, d + 1) for v in x.values())
        elif isinstance(x, (list, tuple)):
            n, deepest = n + len(x), max(deepest, d)
            stack.extend((v, d + 1) for v in x)
        else:
            n += 1
    return n, deepest


MAX_CLUE_DEPTH = 16  # a clue nested deeper than this has its deeper parts dropped


def _shrink(value: Any, budget: int, depth: int = 0) -> tuple[Any, int]:
    """``value`` with its leading parts kept within ``budget`` characters (as :func:`_size`
    counts them), and the characters kept."""
    if isinstance(value, str):
        return value[:budget], min(len(value), budget)
    if depth > MAX_CLUE_DEPTH or not isinstance(value, (list, tuple, dict)):
        return (value, 1) if depth <= MAX_CLUE_DEPTH else (None, 1)
    used, items = 0, value.items() if isinstance(value, dict) else enumerate(value)
    out: Any = {} if isinstance(value, dict) else []
    for k, v in items:
        if used >= budget:
            break
        if isinstance(k, str):
            k = k[: max(budget - used, 0)]
            used += len(k)
        used += 1
        v, n = _shrink(v, max(budget - used, 0), depth + 1)
        used += n
        if isinstance(out, dict):
            out[k] = v
        else:
            out.append(v)
    return out, used


def _cap_clue(value: Any, name: str, cuts: list[dict[str, Any]]) -> Any:
    if isinstance(value, str) or value is None:
        return _cut(value, MAX_CLUE_CHARS, name, cuts)
    size, depth = _size(value)
    if size <= MAX_CLUE_CHARS and depth <= MAX_CLUE_DEPTH:
        return value
    value, kept = _shrink(value, MAX_CLUE_CHARS)
    cuts.append({"field": name, "from_chars": size, "to_chars": kept})
    return value


# the JSONL form's short name of each I2CR field (an error names a field as the record wrote it)
SHORT_NAMES = {"mention_context": "context", "mention_imgpath": "image",
               "Candentity": "candidates", "mention_imgdesc_Azure": "clues"}


def _field(rec: dict, name: str) -> str:
    """The name the record gives the I2CR field ``name``: the one it holds (the I2CR name first,
    as the loaders read it); for a field it lacks, the short name when the record writes the
    short names and none of the I2CR ones."""
    short = SHORT_NAMES[name]
    if name in rec or short in rec:
        return name if name in rec else short
    writes_short = any(s in rec for s in SHORT_NAMES.values()) and \
        not any(n in rec for n in SHORT_NAMES)
    return short if writes_short else name


def _req_str(rec: dict, key: str, *, source: str, rid: str, aliases: tuple[str, ...] = (),
             allow_empty: bool = False) -> str:
    for k in (key, *aliases):
        if k in rec:
            v = rec[k]
            if not isinstance(v, str):
                raise DataError(f"expected a string, got {type(v).__name__}", source=source,
                                record=rid, field=k)
            if not allow_empty and not v.strip():
                raise DataError("is empty", source=source, record=rid, field=k)
            return v
    raise DataError("is missing", source=source, record=rid, field=key)


def _flag(v: Any, *, source: str, rid: str, field: str) -> bool:
    """A yes/no field: a JSON boolean (or null), or the strings 'true' / 'false'; nothing else."""
    if v is None or isinstance(v, bool):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in ("true", "false"):
        return v.strip().lower() == "true"
    raise DataError(f"must be true or false, got {v!r}"[:200], source=source, record=rid,
                    field=field)


def prior_number(v: Any, what: str) -> float:
    """A prior as the float the ranker reads: a non-negative finite number (an integer too large
    for a float is refused, not read as infinity); ValueError naming ``what`` otherwise. The one
    rule for candidates' and KB entries' priors."""
    if isinstance(v, int) and not isinstance(v, bool) and v > sys.float_info.max:
        raise ValueError(f"{what} is an integer too large for a float")
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise ValueError(f"{what} must be a non-negative number, not {repr(v)[:60]}")
    return float(v)


def parse_candidates(raw: Any, *, source: str, rid: str, fieldname: str = "Candentity",
                     allow_empty: bool = False) -> list[Candidate]:
    if not isinstance(raw, list):
        raise DataError(f"expected a list of candidates, got {type(raw).__name__}", source=source,
                        record=rid, field=fieldname)
    if not raw and not allow_empty:
        raise DataError("has no candidates (an empty list can only be linked to NIL; "
                        "set allow_nil to accept it)", source=source, record=rid, field=fieldname)
    out: list[Candidate] = []
    seen: set[str] = set()
    for i, c in enumerate(raw):
        f = f"{fieldname}[{i}]"
        if isinstance(c, str):
            c = {"name": c}
        if not isinstance(c, dict):
            raise DataError(f"expected an object with 'name', got {type(c).__name__}",
                            source=source, record=rid, field=f)
        name = c.get("name")
        if not isinstance(name, str):
            name = ""
        key = title_key(name)
        if not key:  # blank, or a title of underscores or escaped blanks ('_', '%20')
            raise DataError("has no usable 'name'", source=source, record=rid, field=f)
        desc = c.get("desc", c.get("description", "")) or ""
        if not isinstance(desc, str):
            raise DataError("'desc' must be a string", source=source, record=rid, field=f)
        name = name.strip()
        if key in seen:  # duplicates (one title spelled twice too) add nothing and split the
            continue     # first's probability; they confuse the fuzzy mapping
        seen.add(key)
        qid = c.get("qid")
        prior = c.get("prior")
        if prior is not None:
            try:
                prior = prior_number(prior, "'prior'")
            except ValueError as e:
                raise DataError(str(e), source=source, record=rid, field=f) from None
        out.append(Candidate(name=name, desc=desc.strip(), qid=str(qid) if qid else None,
                             prior=prior))
    return out


def parse_record(rec: Any, rid: str, *, source: str, image_root: str | None = None,
                 label: str | None = None, allow_nil: bool | None = None,
                 candidates: str = "required") -> Mention:
    """Validate one raw record and turn it into a :class:`Mention`. ``candidates``: 'required',
    'optional' (a KB generates them when absent) or 'ignored' (a KB generates them all)."""
    if not isinstance(rec, dict):
        raise DataError(f"expected an object, got {type(rec).__name__}", source=source, record=rid)
    mention = _req_str(rec, "mention", source=source, rid=rid)
    context = _req_str(rec, _field(rec, "mention_context"), source=source, rid=rid,
                       aliases=("mention_context", "context"), allow_empty=True)
    image = rec.get("mention_imgpath", rec.get("image"))
    if image is not None and not isinstance(image, str):
        raise DataError("must be a string path or URL", source=source, record=rid,
                        field=_field(rec, "mention_imgpath"))
    if label is None and rec.get("label") is not None:  # a record's own label (null: none)
        why = label_problem(rec["label"])
        if why is not None:
            raise LabelError(why, source=source, record=rid, field="label")
        label = rec["label"]
    nil_ok = _flag(rec.get("allow_nil", False), source=source, rid=rid, field="allow_nil") \
        if allow_nil is None else allow_nil
    if label is not None and label.strip().lower() == NIL:
        label, nil_ok = NIL, True
    key = _field(rec, "Candentity")
    if candidates == "ignored" or (candidates == "optional" and not rec.get(key)):
        cands = []
    elif key not in rec:
        raise DataError("is missing", source=source, record=rid, field=key)
    else:
        cands = parse_candidates(rec[key], source=source, rid=rid, fieldname=key,
                                 allow_empty=nil_ok)
    clues = rec.get("mention_imgdesc_Azure", rec.get("clues"))
    if clues is not None and not isinstance(clues, dict):
        raise DataError("must be an object of clue type -> text", source=source, record=rid,
                        field=_field(rec, "mention_imgdesc_Azure"))
    for name in ("id", "doc_id"):  # an id of another kind would be read as its Python text
        value = rec.get(name)  # (a null id is read as 'None' and reported: check_items)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int))):
            raise DataError(f"must be a string or an integer, not {type(value).__name__}",
                            source=source, record=rid, field=name)
    doc = document_names(rec.get("document_mentions"), source=source, record=rid)
    return Mention(id=rid, mention=mention, context=context, candidates=cands,
                   image=image or None, image_root=image_root, clues=clues, label=label,
                   allow_nil=nil_ok, document=doc)  # Mention caps it


def document_key(rid: str, rec: Any) -> str | None:
    """The document a record belongs to: its ``doc_id``, else the id's part before its last
    ``::`` when the id reads ``corpus::document::n`` (as textel's do); None when unknown."""
    if isinstance(rec, dict) and isinstance(rec.get("doc_id"), (str, int)):
        return str(rec["doc_id"])
    parts = rid.split("::")
    return "::".join(parts[:-1]) if len(parts) >= 3 else None


def others_in_document(names: list[Any], i: int) -> list[str]:
    """What mention ``i`` of a document sees: the other mentions (not its own name again), in
    order, each and their number capped."""
    own = names[i]
    return list(islice((n[:MAX_NAME_CHARS] for j, n in enumerate(names)
                        if j != i and isinstance(n, str) and n != own), MAX_DOCUMENT_NAMES))


# the keys of the documents whose run ended, remembered (as hashes) to tell a file not grouped by
# document; past this many documents no more are remembered (memory stays bounded)
MAX_DOCUMENTS_REMEMBERED = 1_000_000


def document_runs(entries: Iterable[tuple[str | None, Any, T]]
                  ) -> Iterator[tuple[T, list[str] | None, bool]]:
    """The one rule of documents, for every reader (:func:`load_mentions`, the Ray engine, the
    served batch): ``(key, name, item)`` entries in input order (``key`` by
    :func:`document_key`, ``name`` the record's mention as written) come back in that order as
    ``(item, names it sees, scattered)``.

    - A document is a run of consecutive records with one key (what a stream can tell in bounded
      memory; a record without a key ends a run and is in no document: it sees None).
    - A record sees the mentions of its run's first :data:`MAX_DOCUMENT_NAMES` records, in order,
      other than its own name (so a run longer than that is still one document: its later
      records see its first ones). At most that many records are held.
    - ``scattered``: the record's key had a run before, ended by other records (the input is not
      grouped by document): its run is a document of its own. See :func:`scattered_message`."""
    ended: set[int] = set()
    key: str | None = None
    window: list[str | None] = []  # the names of the run's first MAX_DOCUMENT_NAMES records
    held: list[tuple[str | None, T]] = []  # records waiting for the window to fill
    views: dict[str | None, list[str]] = {}
    scattered = False

    def view(name: str | None) -> list[str]:
        if name not in views:
            if len(views) >= MAX_DOCUMENT_NAMES:
                views.clear()
            views[name] = others_in_document([name, *window], 0)
        return list(views[name])  # each record its own list

    def release() -> Iterator[tuple[T, list[str] | None, bool]]:
        for name, item in held:
            yield item, view(name), scattered
        held.clear()

    for k, name, item in entries:
        name = name[:MAX_NAME_CHARS] if isinstance(name, str) else None  # (views share them)
        if k is None or k != key:
            yield from release()
            if key is not None and len(ended) < MAX_DOCUMENTS_REMEMBERED:
                ended.add(hash(key))
            key, window, scattered = k, [], k is not None and hash(k) in ended
            views.clear()
        if k is None:
            yield item, None, False
        elif len(window) < MAX_DOCUMENT_NAMES:
            window.append(name)
            held.append((name, item))
            if len(window) == MAX_DOCUMENT_NAMES:
                yield from release()
        else:
            yield item, view(name), scattered
    yield from release()


def done_line(n: int) -> str:
    """What an input warning adds of the ``n`` records it also concerns that a resumed run skips
    (already in its output): said once, in the warning's line; nothing when there are none."""
    return f" ({n} more already in the output, skipped)" if n else ""


def scattered_message(n: int, done: int = 0) -> str:
    """The warning for ``n`` records (of this run; ``done`` more skipped) whose document's run
    came before other records."""
    return (f"{n} record(s) continue a document (a doc_id, or an id corpus::document::n) after "
            "other records came between: the input is not grouped by document, and each such "
            "run of records is linked as a document of its own (it does not see the document's "
            f"earlier mentions); keep a document's records together{done_line(done)}")


def _takes_document(document: Any) -> bool:
    """Whether a record is given its document's mentions: unless it gives its own."""
    return document is None or (isinstance(document, list) and not document)


def documents_of(pairs: Iterable[tuple[str, Any]]) -> Iterator[tuple[str, Any, bool]]:
    """Every reader's documents (:func:`load_mentions`, the Ray engine's, the served batch's):
    the ``(id, raw record)`` pairs of :func:`iter_records` in order,
    each record of a document given what it sees (:func:`document_runs`) as ``document_mentions``
    unless it gives its own, with whether it is scattered; memory is bounded by one window."""
    entries = ((None if isinstance(rec, DataError) else document_key(rid, rec),
                rec.get("mention") if isinstance(rec, dict) else None, (rid, rec))
               for rid, rec in pairs)
    for (rid, rec), seen, scattered in document_runs(entries):
        if isinstance(rec, dict) and seen is not None and \
                _takes_document(rec.get("document_mentions")):
            rec = {**rec, "document_mentions": seen}
        yield rid, rec, scattered


def open_error(path: Path, e: OSError) -> DataError:
    if isinstance(e, FileNotFoundError):
        return DataError("file not found", source=str(path))
    if isinstance(e, IsADirectoryError) or path.is_dir():
        return DataError("is a folder, not a file", source=str(path))
    return DataError(f"cannot read ({e.strerror or type(e).__name__})", source=str(path))


class TooDeep(ValueError):
    """JSON nested deeper than Python's recursion limit lets ``json`` read."""


def _loads(text: str | bytes) -> Any:
    """``json.loads`` whose every failure is a ValueError with a one-line reason: malformed JSON,
    nesting deeper than Python's recursion limit, or an integer too long to convert."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise TooDeep("JSON nested too deeply to read") from None
    except ValueError as e:  # e.g. an integer over the 4300-digit conversion limit
        raise ValueError(f"unreadable JSON value ({str(e).split(':')[0]})") from None


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise open_error(path, e) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"is not UTF-8 text ({e.reason} at byte {e.start})",
                        source=str(path)) from None


def _read_json(path: Path) -> Any:
    text = _read_text(path)  # its DataError names the file already
    try:
        return _loads(text)
    except ValueError as e:
        raise DataError(str(e), source=str(path)) from None


_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}:,]')
_SPACE = re.compile(r"\s*")
_DECODER = json.JSONDecoder()


def readable_id(text: str) -> str | None:
    """The id a JSONL line that cannot be read still gives: its object's top-level ``"id"``, a
    string or an integer, when every member up to it and the comma or brace after it read as
    JSON; None when it gives none. The record keeps its made-up name (``line N``, what
    ``--resume`` finds); a label for this id is the record's (:func:`to_item`), not a label
    naming no record."""

    def skip(pos: int) -> int:
        m = _SPACE.match(text, pos)
        return m.end() if m else pos

    pos = skip(0)
    if not text.startswith("{", pos):
        return None
    pos += 1
    try:
        while True:
            key, pos = _DECODER.raw_decode(text, skip(pos))
            pos = skip(pos)
            if not isinstance(key, str) or not text.startswith(":", pos):
                return None
            value, pos = _DECODER.raw_decode(text, skip(pos + 1))
            pos = skip(pos)
            if pos >= len(text) or text[pos] not in ",}":
                return None  # (a number cut off, or the damage right after it)
            if key == "id":
                whole = isinstance(value, str) or type(value) is int
                return str(value) if whole else None
            if text[pos] == "}":
                return None
            pos += 1
    except (ValueError, RecursionError):  # the damage comes before any id
        return None


def _members(text: str) -> Iterator[tuple[str, str]]:
    """``(key or index, JSON text)`` of each member of the top-level object or array, found by
    counting brackets outside strings, so that a file whose one record is nested too deeply for
    ``json`` still yields the others. Raises ValueError when the text is not one such container
    (an object member without a key included)."""
    depth, kind, start, index = 0, "", 0, 0
    key: str | None = None

    def name() -> str:
        if kind != "{":
            return str(index)
        if key is None:
            raise ValueError("an object member has no key")
        return key

    for m in _TOKEN.finditer(text):
        tok = m.group()
        if tok in "[{":
            depth += 1
            if depth == 1:
                kind, start = tok, m.end()
        elif tok in "]}":
            depth -= 1
            if depth == 0:
                if text[m.end():].strip():
                    break
                if text[start: m.start()].strip():
                    yield name(), text[start: m.start()]
                return
        elif depth == 1 and tok == ":" and kind == "{":
            start = m.end()
        elif depth == 1 and tok == ",":
            yield name(), text[start: m.start()]
            key, index, start = None, index + 1, m.end()
        elif depth == 1 and tok.startswith('"') and kind == "{" and key is None:
            key = json.loads(tok)
    raise ValueError("not a JSON object or array")


def _salvage(path: Path, text: str) -> Iterator[tuple[str, Any]]:
    """The records of a JSON file too deep to read whole: each read on its own, a too-deep one
    yielded as a DataError."""
    try:
        members = list(_members(text))
    except ValueError:
        members = None
    if not members or text.lstrip().startswith("{") and any(k == "mention" for k, _ in members):
        raise DataError("JSON nested too deeply to read", source=str(path))
    listed = text.lstrip().startswith("[")  # a list's record is named by its id, else made up
    for key, value in members:
        if listed:
            key = MadeUpId(key)
        try:
            rec = _loads(value)
        except ValueError as e:
            yield key, DataError(str(e).split(" at line")[0], source=str(path), record=key)
            continue
        if listed and isinstance(rec, dict) and "id" in rec:
            key = str(rec["id"])
        yield key, rec


class LabelError(DataError):
    """A record whose gold label is unusable (not a string, or blank). The record is labelled but
    has no gold to compare with: it becomes an error record, scored as a wrong answer."""


class Labels(dict[str, str]):
    """The gold labels of a labels file, ``id -> gold name`` or :data:`NIL`, and in ``errors``
    each record whose label is unusable, as the :class:`LabelError` that record becomes."""

    def __init__(self, *args: Any, errors: dict[str, LabelError] | None = None, **kw: Any):
        super().__init__(*args, **kw)
        self.errors: dict[str, LabelError] = dict(errors or {})


def _kind(v: Any) -> str:
    """A JSON value's kind, as the file wrote it."""
    if v is None or isinstance(v, bool):
        return json.dumps(v)
    if isinstance(v, (int, float)):
        return f"a number ({repr(v)[:40]})"
    return "a list" if isinstance(v, list) else "an object" if isinstance(v, dict) else \
        type(v).__name__


def read_labels(raw: dict[Any, Any], source: str) -> Labels:
    """``raw`` (id -> gold) as :class:`Labels`: each string label kept (``nil`` in any case read
    as :data:`NIL`); each other value (null, a number, a list, an object, a blank string) an error
    of its record alone. Null is not read as NIL: the file must say ``"nil"``."""
    out = Labels()
    for k, v in raw.items():
        k = str(k)
        why = label_problem(v)
        if why is None:
            out[k] = NIL if v.strip().lower() == NIL else v
        else:
            out.errors[k] = LabelError(why, source=source, record=k)
    return out


def label_problem(v: Any) -> str | None:
    """Why a gold label cannot be used (None when it can): the one rule for a labels file's
    values and a record's own ``label``."""
    if not isinstance(v, str):
        return f'gold label must be a string (a candidate name, or "nil" for NIL), not {_kind(v)}'
    if not v.strip():
        return 'gold label is blank (write a candidate name, or "nil" for NIL)'
    if not title_key(v):  # the candidates' rule (parse_candidates): no answer could equal it
        return (f"gold label {v[:40]!r} spells no title (only underscores, escaped blanks or "
                'marks; write a candidate name, or "nil" for NIL)')
    return None


def load_labels(path: str | Path) -> Labels:
    """The labels file at ``path``, a JSON object ``id -> gold name or "nil"``. A file that cannot
    be read or is not such an object raises :class:`DataError`; a record whose label is unusable
    is in the result's ``errors`` (see :func:`read_labels`) and the others are read."""
    path = Path(path)
    raw = _read_json(path)
    if not isinstance(raw, dict):
        raise DataError("expected an object of id -> gold name", source=str(path))
    return read_labels(raw, str(path))


class MadeUpId(str):
    """The id a reader makes up for a record that gives none (or could not be read): ``line N``
    of a JSONL file (1-based), the position of a JSON list's record (0-based). Only a reader
    makes one; :func:`own_ids_first` makes it distinct from every record's own id."""


# every id a made-up id could be: a base ('line 7', '3'), then '<base> (no id)', '(no id 2)', ...
_MADE_UP = re.compile(r"(?:line )?\d+(?: \(no id(?: \d+)?\))?")


def own_ids_first(pairs: Iterable[tuple[str, Any]],
                  reread: Callable[[], Iterable[tuple[str, Any]]]) -> Iterator[tuple[str, Any]]:
    """``pairs`` of a reader (:func:`iter_records`, the Ray engine's streaming reader) with each
    :class:`MadeUpId` made distinct from every id a record of the file gives itself, wherever
    that record is: a record's own id is never taken (it is linked under it), and the made-up id
    becomes ``<base> (no id)`` (then ``(no id 2)``, ...), a bad record's error naming it. The one
    rule for made-up ids. ``reread`` reads the file again from its start (the file's own ids
    that look made up are kept, a few at most); it is called only when a record has no id, so a
    file whose every record has one is read once."""
    taken: set[str] | None = None
    for rid, rec in pairs:
        if isinstance(rid, MadeUpId):
            if taken is None:
                taken = {r for r, _ in reread()
                         if not isinstance(r, MadeUpId) and _MADE_UP.fullmatch(r)}
            new, k = str(rid), 1
            while new in taken:
                new, k = f"{rid} (no id{f' {k}' if k > 1 else ''})", k + 1
            if isinstance(rec, DataError):  # its message names the id (as a plain string)
                claimed = rec.claimed_id
                rec = type(rec)(rec.reason, source=rec.source, record=new, field=rec.field)
                rec.claimed_id = claimed
            rid = new
        yield rid, rec


def iter_records(path: str | Path) -> Iterator[tuple[str, Any]]:
    """Yield ``(id, raw record)`` pairs from an I2CR JSON file, a single-sample JSON or JSONL.

    A malformed JSONL line (bad JSON, bad UTF-8, nested too deeply) is yielded as
    ``(id, DataError)`` so that one bad line does not lose the others; so is a record of a JSON
    document nested too deeply to read. A malformed JSON document fails as a whole, since
    nothing in it can be trusted. A record without an id (a JSONL line that is not a record
    with an ``id``, a JSON list's record without one) is given one by :func:`own_ids_first`.
    """
    yield from own_ids_first(_records(path), lambda: _records(path))


def _records(path: str | Path) -> Iterator[tuple[str, Any]]:
    """The pairs of :func:`iter_records`, with each made-up id a :class:`MadeUpId`."""
    path = Path(path)
    if path.suffix == ".jsonl":
        try:
            fh = path.open("rb")
        except OSError as e:
            raise open_error(path, e) from None
        with fh:
            for lineno, raw_line in enumerate(fh, 1):
                if not raw_line.strip():
                    continue
                made_up = MadeUpId(f"line {lineno}")
                try:
                    line = raw_line.decode("utf-8")
                except UnicodeDecodeError as e:
                    err = DataError(f"is not UTF-8 text ({e.reason} at byte {e.start} of the "
                                    "line)", source=str(path), record=made_up)
                    claimed = readable_id(raw_line.decode("utf-8", "replace"))
                    err.claimed_id = claimed if claimed and "\ufffd" not in claimed else None
                    yield made_up, err
                    continue
                try:
                    rec = _loads(line.rstrip("\r\n"))  # one line: its JSON errors are at line 1
                except ValueError as e:
                    err = DataError(str(e).replace(" at line 1,", " at"), source=str(path),
                                    record=made_up)
                    err.claimed_id = readable_id(line)
                    yield made_up, err
                    continue
                has_id = isinstance(rec, dict) and "id" in rec
                yield (str(rec["id"]) if has_id else made_up), rec
        return
    text = _read_text(path)
    try:
        raw = _loads(text)
    except TooDeep:
        yield from _salvage(path, text)
        return
    except ValueError as e:
        raise DataError(str(e), source=str(path)) from None
    if isinstance(raw, dict) and "mention" in raw and not isinstance(raw["mention"], dict):
        yield str(raw.get("id", path.stem)), raw  # one sample on its own
    elif isinstance(raw, dict):
        for k, v in raw.items():
            yield str(k), v
    elif isinstance(raw, list):
        for i, v in enumerate(raw):
            yield (str(v["id"]) if isinstance(v, dict) and "id" in v else MadeUpId(i)), v
    else:
        raise DataError("expected an object of id -> sample, a list of samples or one sample",
                        source=str(path))


def load_mentions(path: str | Path, labels: str | Path | dict[str, str] | None = None, *,
                  image_root: str | None = None, allow_nil: bool | None = None,
                  strict: bool = True, candidates: str = "required",
                  warn: Callable[[str], None] | None = None,
                  done: Container[str] = frozenset()) -> list[Mention | DataError]:
    """Load every mention of a file. With ``strict`` the first bad record raises; otherwise bad
    records come back as :class:`DataError` items in place, so a run can record and skip them.
    ``candidates`` as for :func:`parse_record`. A document's records see each other by
    :func:`documents_of` (the Ray engine's reader too); ``warn`` is told when the file is not
    grouped by document (:func:`scattered_message`), of the records not in ``done`` (a resumed
    run's, which it skips)."""
    # (not ``labels or {}``: Labels whose every label is unusable is empty, its errors in .errors)
    gold = load_labels(labels) if isinstance(labels, (str, Path)) else \
        labels if labels is not None else {}
    if not isinstance(gold, Labels):  # a dict given in code: its values checked as a file's
        gold = read_labels(gold, "labels")
    if image_root is None:
        image_root = str(Path(path).parent)
    out: list[Mention | DataError] = []
    scattered = [0, 0]  # (of this run, done before)
    for rid, rec, apart in documents_of(iter_records(path)):
        scattered[rid in done] += apart
        item = to_item(rid, rec, source=str(path), gold=gold, image_root=image_root,
                       allow_nil=allow_nil, candidates=candidates)
        if strict and isinstance(item, DataError):
            raise item
        out.append(item)
    if warn is not None and scattered[0]:
        warn(scattered_message(*scattered))
    return out


def to_item(rid: str, rec: Any, *, source: str, gold: dict[str, str], image_root: str | None,
            allow_nil: bool | None = None, candidates: str = "required") -> Mention | DataError:
    """One ``(id, raw record)`` of :func:`iter_records` as a :class:`Mention`, or the
    :class:`DataError` saying why it is not one (the rule :func:`load_mentions` applies to each
    record, for readers that stream records one by one). A record whose label in ``gold`` is
    unusable is that :class:`LabelError`; a line that cannot be read takes the label of the id
    its text gives (``claimed_id``), as a bad record scored as a wrong answer."""
    bad = gold.errors.get(rid) if isinstance(gold, Labels) else None
    if bad is not None:  # a fresh error per record (a run sets its fields)
        return LabelError(bad.reason, source=bad.source, record=rid)
    try:
        if isinstance(rec, DataError):
            if rec.claimed_id is not None and rec.label is None:  # (its own id: a malformed line)
                rec.label = gold.get(rid) or gold.get(rec.claimed_id)
            raise rec
        return parse_record(rec, rid, source=source, image_root=image_root, label=gold.get(rid),
                            allow_nil=allow_nil, candidates=candidates)
    except DataError as e:
        return e


def shuffle_candidates(items: list, seed: int) -> list:
    """Shuffle each mention's candidates with a fixed seed (per mention id, so the order does not
    depend on which other mentions are in the run). The raw WikiMEL files put the gold candidate
    first 79% of the time; without this, position leaks the answer."""
    out = []
    for m in items:
        if isinstance(m, Mention):
            h = int(hashlib.sha256(f"{seed}:{m.id}".encode()).hexdigest()[:16], 16)
            cands = list(m.candidates)
            random.Random(h).shuffle(cands)
            m = Mention(**{**m.__dict__, "candidates": cands})
        out.append(m)
    return out
