"""Mentions, candidates and the loaders for the I2CR/MELBench JSON and a simple JSONL form.

The official I2CR format is a dict ``id -> sample`` where a sample holds ``mention``,
``mention_context``, ``mention_imgpath``, ``Candentity`` (a list of ``{qid?, name, desc}``) and,
optionally, ``mention_imgdesc_Azure`` (precomputed Azure AI Vision clues). Gold labels live in a
separate file, ``id -> gold candidate name`` or ``"nil"``.

The JSONL form has one sample per line with the same field names (``id`` required) or the
short names ``context``, ``image``, ``candidates``, ``clues`` and ``label``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

NIL = "nil"

# Canonical names of the precomputed visual clues, as the dataset spells them.
CLUE_KEYS = ("OCR text", "Caption", "Dense Captions", "Tags")


class DataError(ValueError):
    """A malformed input file or record. The message names the file, the record and the field."""

    def __init__(self, message: str, *, source: str | None = None, record: str | None = None,
                 field: str | None = None):
        self.source, self.record, self.field = source, record, field
        where = []
        if source:
            where.append(f"{source}")
        if record is not None:
            where.append(f"record {record!r}")
        if field:
            where.append(f"field {field!r}")
        super().__init__(f"{': '.join(where)}: {message}" if where else message)


@dataclass(frozen=True)
class Candidate:
    name: str
    desc: str = ""
    qid: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "desc": self.desc}
        if self.qid:
            d["qid"] = self.qid
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
        }


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
        if not isinstance(name, str) or not name.strip():
            raise DataError("has no usable 'name'", source=source, record=rid, field=f)
        desc = c.get("desc", c.get("description", "")) or ""
        if not isinstance(desc, str):
            raise DataError("'desc' must be a string", source=source, record=rid, field=f)
        name = name.strip()
        if name.lower() in seen:  # duplicates add nothing and confuse the fuzzy mapping
            continue
        seen.add(name.lower())
        qid = c.get("qid")
        out.append(Candidate(name=name, desc=desc.strip(), qid=str(qid) if qid else None))
    return out


def parse_record(rec: Any, rid: str, *, source: str, image_root: str | None = None,
                 label: str | None = None, allow_nil: bool | None = None) -> Mention:
    """Validate one raw record and turn it into a :class:`Mention`."""
    if not isinstance(rec, dict):
        raise DataError(f"expected an object, got {type(rec).__name__}", source=source, record=rid)
    mention = _req_str(rec, "mention", source=source, rid=rid)
    context = _req_str(rec, "mention_context", source=source, rid=rid, aliases=("context",),
                       allow_empty=True)
    image = rec.get("mention_imgpath", rec.get("image"))
    if image is not None and not isinstance(image, str):
        raise DataError("must be a string path or URL", source=source, record=rid,
                        field="mention_imgpath")
    if label is None and isinstance(rec.get("label"), str):
        label = rec["label"]
    nil_ok = _flag(rec.get("allow_nil", False), source=source, rid=rid, field="allow_nil") \
        if allow_nil is None else allow_nil
    if label is not None and label.strip().lower() == NIL:
        label, nil_ok = NIL, True
    key = "Candentity" if "Candentity" in rec else "candidates"
    if key not in rec:
        raise DataError("is missing", source=source, record=rid, field="Candentity")
    cands = parse_candidates(rec[key], source=source, rid=rid, fieldname=key, allow_empty=nil_ok)
    clues = rec.get("mention_imgdesc_Azure", rec.get("clues"))
    if clues is not None and not isinstance(clues, dict):
        raise DataError("must be an object of clue type -> text", source=source, record=rid,
                        field="mention_imgdesc_Azure")
    return Mention(id=rid, mention=mention, context=context, candidates=cands,
                   image=image or None, image_root=image_root, clues=clues, label=label,
                   allow_nil=nil_ok)


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError("file not found", source=str(path)) from None
    except UnicodeDecodeError as e:
        raise DataError(f"is not UTF-8 text ({e.reason} at byte {e.start})",
                        source=str(path)) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}",
                        source=str(path)) from None


def load_labels(path: str | Path) -> dict[str, str]:
    path = Path(path)
    raw = _read_json(path)
    if not isinstance(raw, dict):
        raise DataError("expected an object of id -> gold name", source=str(path))
    out = {}
    for k, v in raw.items():
        if not isinstance(v, str):
            raise DataError("gold label must be a string (a candidate name or 'nil')",
                            source=str(path), record=k)
        out[str(k)] = NIL if v.strip().lower() == NIL else v
    return out


def iter_records(path: str | Path) -> Iterator[tuple[str, Any]]:
    """Yield ``(id, raw record)`` pairs from an I2CR JSON file, a single-sample JSON or JSONL.

    A malformed JSONL line is yielded as ``(id, DataError)`` so that one bad line does not lose
    the others; a malformed JSON document fails as a whole, since nothing in it can be trusted.
    """
    path = Path(path)
    if path.suffix == ".jsonl":
        try:
            fh = path.open("r", encoding="utf-8", errors="strict")
        except FileNotFoundError:
            raise DataError("file not found", source=str(path)) from None
        with fh:
            lineno = 0
            while True:
                lineno += 1
                try:
                    line = fh.readline()
                except UnicodeDecodeError as e:
                    raise DataError(f"is not UTF-8 text near line {lineno} ({e.reason})",
                                    source=str(path)) from None
                if not line:
                    break
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    yield f"line{lineno}", DataError(f"malformed JSON: {e.msg}", source=str(path),
                                                     record=f"line {lineno}")
                    continue
                rid = str(rec.get("id", f"line{lineno}")) if isinstance(rec, dict) else f"line{lineno}"
                yield rid, rec
        return
    raw = _read_json(path)
    if isinstance(raw, dict) and "mention" in raw and not isinstance(raw["mention"], dict):
        yield str(raw.get("id", path.stem)), raw  # one sample on its own
    elif isinstance(raw, dict):
        for k, v in raw.items():
            yield str(k), v
    elif isinstance(raw, list):
        for i, v in enumerate(raw):
            rid = str(v.get("id", i)) if isinstance(v, dict) else str(i)
            yield rid, v
    else:
        raise DataError("expected an object of id -> sample, a list of samples or one sample",
                        source=str(path))


def load_mentions(path: str | Path, labels: str | Path | dict[str, str] | None = None, *,
                  image_root: str | None = None, allow_nil: bool | None = None,
                  strict: bool = True) -> list[Mention | DataError]:
    """Load every mention of a file. With ``strict`` the first bad record raises; otherwise bad
    records come back as :class:`DataError` items in place, so a run can record and skip them."""
    gold = load_labels(labels) if isinstance(labels, (str, Path)) else (labels or {})
    if image_root is None:
        image_root = str(Path(path).parent)
    out: list[Mention | DataError] = []
    for rid, rec in iter_records(path):
        try:
            if isinstance(rec, DataError):
                raise rec
            out.append(parse_record(rec, rid, source=str(path), image_root=image_root,
                                    label=gold.get(rid), allow_nil=allow_nil))
        except DataError as e:
            if strict:
                raise
            out.append(e)
    return out


def shuffle_candidates(items: list, seed: int) -> list:
    """Shuffle each mention's candidates with a fixed seed (per mention id, so the order does not
    depend on which other mentions are in the run). The raw WikiMEL files put the gold candidate
    first 79% of the time; without this, position leaks the answer."""
    import hashlib
    import random

    out = []
    for m in items:
        if isinstance(m, Mention):
            h = int(hashlib.sha256(f"{seed}:{m.id}".encode()).hexdigest()[:16], 16)
            cands = list(m.candidates)
            random.Random(h).shuffle(cands)
            m = Mention(**{**m.__dict__, "candidates": cands})
        out.append(m)
    return out
