"""Where a knowledge base's entities come from: a JSONL of entities, or a dataset's candidate lists.

An entity line is ``{"id", "name", "aliases"?, "desc"?, "prior"?, "image"?, "qid"?}``. An alias is
a string, or ``{"name": "U.N.", "prior": 0.4}``: a surface form with its own prior p(entity |
alias), an alias table's entry (REL, BLINK and ReFinED carry one from anchor statistics). A
dataset (I2CR/MELBench JSON or JSONL of mentions) gives the union of its candidate lists,
deduplicated by QID, else by name as a title; a candidate's prior is p(entity | that mention), so it
becomes the prior of the alias the mention's surface is (the largest one over the dataset's
mentions of the same surface), never the entity's own prior. Only the dataset's mentions and
candidate lists are read (no label); the keys already given and the alias table are kept on disk
while it is read (:func:`read_dataset`). Both sources are read as a stream of :class:`Entity`; a bad
line or candidate is yielded as a :class:`BadEntity` naming where it is and why, so the builder
can report and count it; an entities line whose id an earlier line gave is yielded as a
:class:`Repeated` naming both lines (the first is kept).
"""

from __future__ import annotations

import json
import re
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data import DataError, iter_records, prior_number, title_key
from ..names import lookup_forms, strip_mention
from .ids import FirstSeen, KeySet

_QID = re.compile(r"^Q[1-9][0-9]*$")
MAX_ALIASES = 50
MAX_FIELD_CHARS = 4_000


@dataclass(frozen=True)
class Entity:
    id: str
    name: str
    desc: str = ""
    aliases: tuple[str, ...] = ()
    prior: float | None = None
    image: str | None = None
    qid: str | None = None
    alias_priors: tuple[tuple[str, float], ...] = ()  # (alias_key, its prior), one per key

    def candidate(self) -> dict[str, Any]:
        """The entity as a graph candidate (name, desc, qid, prior)."""
        d: dict[str, Any] = {"name": self.name, "desc": self.desc, "id": self.id}
        if self.qid:
            d["qid"] = self.qid
        if self.prior is not None:
            d["prior"] = self.prior
        return d


@dataclass(frozen=True)
class BadEntity:
    where: str  # "FILE line N", "FILE record R candidate I" or a DataError's "FILE: record 'R'"
    reason: str
    extra: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}; skipped"


@dataclass(frozen=True)
class Repeated:
    """An entity whose id an earlier line of the same source gave: skipped, the first is kept."""
    where: str  # "FILE line N"
    id: str
    first: int  # the line that gave the id first

    def __str__(self) -> str:
        return f"{self.where}: repeats line {self.first}'s id {self.id[:80]!r} (that line is " \
            "kept); skipped"


def alias_key(surface: str) -> str:
    """The normalised surface form an alias is stored and looked up under: folded, without a
    possessive or a leading article (the first of :func:`i2cr.names.lookup_forms`); '' if none."""
    forms = lookup_forms(surface)
    return forms[0] if forms else ""


def _alias_prior(v: Any, name: str) -> float:
    """An alias's prior: p(entity | that surface form), so a probability (0..1)."""
    p = prior_number(v, f"'aliases': the prior of alias {name[:40]!r}")
    if p > 1:
        raise ValueError(f"'aliases': the prior of alias {name[:40]!r} is p(entity | alias), a "
                         f"probability within 0..1, not {v!r}"[:160])
    return p


def _aliases(raw: Any, *, probabilities: bool = True) -> tuple[list[str], dict[str, float]]:
    """(alias strings, alias_key -> its largest prior) of an ``aliases`` field. An alias's prior
    is checked to be a probability (0..1) unless ``probabilities`` is off (a dataset's alias
    table, whose priors are its candidates', as the data gave them)."""
    if isinstance(raw, (str, dict)):
        raw = [raw]
    if not isinstance(raw, list):
        raise ValueError("'aliases' must be a list of strings or {name, prior} objects")
    names: list[str] = []
    priors: dict[str, float] = {}
    for a in raw:
        if isinstance(a, dict):
            n = a.get("name")
            if not isinstance(n, str):
                raise ValueError("an alias object needs a string 'name'")
            if a.get("prior") is not None:
                key = alias_key(n)
                p = _alias_prior(a["prior"], n) if probabilities else \
                    prior_number(a["prior"], f"the prior of alias {n[:40]!r}")
                if key:
                    priors[key] = max(p, priors.get(key, p))
            a = n
        elif not isinstance(a, str):
            raise ValueError("'aliases' must be a list of strings or {name, prior} objects")
        names.append(a)
    return names, priors


def _text(v: Any, what: str, *, required: bool = False) -> str:
    if v is None and not required:
        return ""
    if not isinstance(v, str):
        raise ValueError(f"{what!r} must be a string, not {type(v).__name__}")
    v = v.strip()
    if required and not v:
        raise ValueError(f"{what!r} is empty")
    return v[:MAX_FIELD_CHARS]


def parse_entity(rec: Any, *, alias_probabilities: bool = True) -> Entity:
    """One entity record, validated; ValueError with a one-line reason when it is not usable.
    (``alias_probabilities``: see :func:`_aliases`.)"""
    if not isinstance(rec, dict):
        raise ValueError(f"expected an object, got {type(rec).__name__}")
    if "id" not in rec:
        raise ValueError("'id' is missing")
    rid = rec["id"]
    if isinstance(rid, bool) or not isinstance(rid, (str, int)) or not str(rid).strip():
        raise ValueError(f"'id' must be a non-empty string or integer, not {rid!r}"[:120])
    if "name" not in rec:
        raise ValueError("'name' is missing")
    name = _text(rec["name"], "name", required=True)
    if not title_key(name):  # the candidate lists' rule (data.parse_candidates): '_', '%20'
        raise ValueError("has no usable 'name'")
    desc = _text(rec.get("desc", rec.get("description")), "desc")
    alias_names, alias_priors = _aliases(rec.get("aliases") or [],
                                         probabilities=alias_probabilities)
    prior = rec.get("prior")
    if prior is not None:
        prior = prior_number(prior, "'prior'")
    image = rec.get("image")
    if image is not None and not isinstance(image, str):
        raise ValueError("'image' must be a string path or URL")
    qid = rec.get("qid")
    if qid is not None and not isinstance(qid, (str, int)):
        raise ValueError("'qid' must be a string")
    if not qid and _QID.match(str(rid).strip()):  # a Wikidata id is the entity's QID
        qid = str(rid).strip()
    aliases = tuple(dict.fromkeys(a.strip()[:MAX_FIELD_CHARS] for a in alias_names
                                  if a.strip() and a.strip() != name))[:MAX_ALIASES]
    return Entity(id=str(rid).strip(), name=name, desc=desc, aliases=aliases, prior=prior,
                  image=image or None, qid=str(qid) if qid else None,
                  alias_priors=tuple(sorted(alias_priors.items(), key=lambda kv: -kv[1]))
                  [:MAX_ALIASES])


def _jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON or ValueError) for every non-blank line."""
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                yield lineno, json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                yield lineno, ValueError(f"is not UTF-8 text ({e.reason} at byte {e.start})")
            except json.JSONDecodeError as e:
                yield lineno, ValueError(f"malformed JSON at column {e.colno}: {e.msg}")
            except (RecursionError, ValueError) as e:
                yield lineno, ValueError(f"unreadable JSON ({type(e).__name__})")


def source_kind(path: str | Path) -> str:
    """'entities' for a JSONL of entities, 'dataset' for an I2CR/MELBench dataset."""
    path = Path(path)
    if path.suffix != ".jsonl":
        return "dataset"
    for _, rec in _jsonl(path):
        if isinstance(rec, dict):
            return "dataset" if ("mention" in rec and "name" not in rec) else "entities"
    return "entities"


def read_entities(path: str | Path) -> Iterator[Entity | BadEntity | Repeated]:
    """Stream the entities of a JSONL file, one line at a time (bounded memory: the ids given so
    far, with their lines, are kept in a scratch SQLite file, removed when the stream ends or is
    closed)."""
    path = Path(path)
    scratch = tempfile.TemporaryDirectory(prefix="i2cr-kb-source-")
    seen = FirstSeen(Path(scratch.name) / "ids.sqlite")
    try:
        for lineno, rec in _jsonl(path):
            where = f"{path} line {lineno}"
            if isinstance(rec, ValueError):
                yield BadEntity(where, str(rec))
                continue
            try:
                ent = parse_entity(rec)
            except ValueError as e:
                yield BadEntity(where, str(e))
                continue
            first = seen.first(ent.id, lineno)
            yield ent if first is None else Repeated(where, ent.id, first)
    finally:
        seen.close()
        scratch.cleanup()


def dataset_key(cand: dict[str, Any]) -> str:
    """A candidate's identity in a KB made from candidate lists: its QID, else its name as a
    title (:func:`i2cr.data.title_key`, the rule that merges a candidate list's repeats:
    ``Justin_Bieber`` is ``Justin Bieber``, while ``Oklahoma!`` is not ``Oklahoma``, which its
    folded name would make it); ``name:`` alone for a name that spells no title (``_``)."""
    qid = cand.get("qid")
    if qid:
        return str(qid)
    return "name:" + title_key(str(cand.get("name") or ""))


def _candidates(rec: Any) -> list[Any] | None:
    cands = rec.get("Candentity", rec.get("candidates")) if isinstance(rec, dict) else None
    return cands if isinstance(cands, list) else None


class AliasTable:
    """A dataset's alias table on disk (SQLite at ``path``): entity key -> alias_key -> (the first
    mention's surface, the largest prior), read back in the order the aliases were first seen.
    On disk because it holds an entry per (mention surface, candidate) of the whole dataset."""

    def __init__(self, path: str | Path):
        self.db = sqlite3.connect(Path(path))
        self.db.execute("PRAGMA cache_size=-8192")
        self.db.execute("PRAGMA journal_mode=OFF")
        self.db.execute("PRAGMA synchronous=OFF")
        self.db.execute("CREATE TABLE IF NOT EXISTS alias (key TEXT, akey TEXT, surface TEXT, "
                        "prior REAL, UNIQUE (key, akey))")

    def put(self, key: str, akey: str, surface: str, prior: float) -> None:
        self.db.execute("INSERT INTO alias VALUES (?, ?, ?, ?) ON CONFLICT (key, akey) "
                        "DO UPDATE SET prior = max(prior, excluded.prior)",
                        (key, akey, surface, prior))

    def get(self, key: str) -> dict[str, tuple[str, float]]:
        rows = self.db.execute("SELECT akey, surface, prior FROM alias WHERE key = ? "
                               "ORDER BY rowid", (key,))
        return {akey: (surface, prior) for akey, surface, prior in rows}

    def close(self) -> None:
        self.db.close()


def alias_table(path: str | Path, table: AliasTable) -> AliasTable:
    """Fill ``table`` with the dataset's alias table: entity key -> alias_key -> (the first
    mention's surface, the largest prior its candidate generator gave the entity for a mention of
    that surface). Read from the mentions and their candidate lists only; a candidate without a
    usable prior adds nothing (read_dataset reports a bad one)."""

    for _, rec in iter_records(path):
        cands = _candidates(rec)
        mention = rec.get("mention") if cands is not None else None
        if not isinstance(mention, str) or not (akey := alias_key(mention)):
            continue
        surface = strip_mention(mention)[:MAX_FIELD_CHARS]
        for c in cands or ():
            if not isinstance(c, dict) or c.get("prior") is None:
                continue
            try:
                p = prior_number(c["prior"], "'prior'")
                key = dataset_key(c)
            except (ValueError, TypeError):
                continue
            if key != "name:":
                table.put(key, akey, surface, p)
    table.db.commit()
    return table


def read_dataset(path: str | Path) -> Iterator[Entity | BadEntity]:
    """The deduplicated union of a dataset's candidate lists (by QID, else by name as a title), each
    entity with the dataset's mentions of it as aliases, their priors from :func:`alias_table`.

    The keys already given and the alias table are kept in SQLite files in a temporary folder
    (removed when the stream ends or is closed), not in memory: with a JSONL dataset, read line
    by line, nothing per entity stays in memory. (An I2CR JSON document is parsed whole by
    :func:`i2cr.data.iter_records`, so its size bounds the memory anyway.)"""
    scratch = tempfile.TemporaryDirectory(prefix="i2cr-kb-source-")
    aliases = AliasTable(Path(scratch.name) / "aliases.sqlite")
    seen = KeySet(Path(scratch.name) / "seen.sqlite")
    n = 0
    try:
        alias_table(path, aliases)  # a first pass: an entity's aliases come from every mention
        for rid, rec in iter_records(path):
            if isinstance(rec, DataError):  # it names its file and record itself
                yield BadEntity(rec.where or f"{path} record {rid}", rec.reason)
                continue
            if not isinstance(rec, dict):
                yield BadEntity(f"{path} record {rid}", "expected an object")
                continue
            cands = _candidates(rec)
            if cands is None:
                yield BadEntity(f"{path} record {rid}", "has no candidate list")
                continue
            for i, c in enumerate(cands):
                if isinstance(c, str):
                    c = {"name": c}
                try:
                    if not isinstance(c, dict):
                        raise ValueError(f"expected an object, got {type(c).__name__}")
                    if c.get("prior") is not None:
                        prior_number(c["prior"], "'prior'")
                    key = dataset_key(c)
                    if key == "name:":
                        raise ValueError("has no usable 'name'")
                    if key in seen:
                        continue
                    # a candidate's prior is p(entity | this mention): its alias's, not the
                    # entity's
                    own = c.get("aliases") or []
                    own = [own] if isinstance(own, (str, dict)) else own
                    _aliases(own)  # the candidate's own alias priors are probabilities
                    table = [{"name": n, "prior": p} for n, p in aliases.get(key).values()]
                    ent = parse_entity({**{f: v for f, v in c.items() if f != "prior"},
                                        "id": key, "aliases": [*own, *table]
                                        if isinstance(own, list) else own},
                                       alias_probabilities=False)
                except ValueError as e:
                    yield BadEntity(f"{path} record {rid} candidate {i}", str(e))
                    continue
                seen.add([key], commit=not (n := n + 1) % 4096)
                yield ent
    finally:
        aliases.close()
        seen.close()
        scratch.cleanup()


def read_source(path: str | Path, kind: str = "auto"
                ) -> Iterator[Entity | BadEntity | Repeated]:
    path = Path(path)
    if not path.is_file():
        raise DataError("is not a file" if path.exists() else "file not found", source=str(path))
    kind = source_kind(path) if kind == "auto" else kind
    if kind == "entities":
        return read_entities(path)
    if kind == "dataset":
        return read_dataset(path)
    raise ValueError(f"unknown KB source kind {kind!r} (entities, dataset or auto)")
