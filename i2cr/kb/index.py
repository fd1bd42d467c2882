"""A knowledge base on disk: a LanceDB table of entities with a dense vector each (the ICR
embedder over the entity text) and a full-text index over their names and aliases.

Each entity row also holds its alias table entries (``alias_keys``, the normalised surface forms,
and ``alias_priors``, p(entity | that surface)), with a label-list index: a mention whose surface
is an alias generates the entities of that alias, and each gets the alias's prior.

A KB folder holds ``kb.json`` (the embedder, the vector size, the build's counts and time, whether
the build finished) and the LanceDB database ``lance/`` (and, while a build runs, ``ids.sqlite``:
the ids the table holds, see :mod:`.ids`), and ``build.lock``, which a build holds (an exclusive
``flock``) so that a second build into the same folder is refused while one runs. The build
streams its source in batches (bounded memory), skips ids already in the table (so an
interrupted build resumes), reports progress on stderr and refuses a KB made with another
embedder. A build that fails removes the folder it made (never one that was there before).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from ..data import DataError, title_key
from ..names import demonym_forms, fold, lookup_forms, title_parts
from ..texts import entity_text
from .ids import IdRegistry
from .source import BadEntity, Entity, Repeated, alias_key, dataset_key, read_source, source_kind

META = "kb.json"
LOCK = "build.lock"
REPEATED_NAMED = 3  # repeated ids named one by one in a build's warnings; the rest are counted
DB = "lance"
TABLE = "entities"
FORMAT = 1
ANN_MIN_ROWS = 50_000  # below this an exact (flat) vector search is fast enough and exact
RRF_K = 60
POOL = 50  # lexical and dense hits fused per query (and the recall@50 horizon)
ALIAS_POOL = 1000  # entities of one alias read before keeping the POOL with the largest priors
ALIAS_COLS = ("alias_keys", "alias_priors")
FTS_MEMORY_MB = 256  # the full-text index build's memory limit (LanceDB's FTS memory_limit, MiB)
ANN_TRAIN_MB = 96  # the ANN's k-means training sample, at most (float32 vectors)
ANN_MIN_SAMPLE_RATE = 32  # ... but at least this many vectors per partition


class KBError(DataError):
    """A KB that cannot be built or used: missing, unfinished, or made with another embedder."""


def lex_text(ent: Entity, *, cached: bool = True) -> str:
    """The full-text field: the folded forms of the name (whole, without its disambiguator, the
    base) and of every alias, so 'St._Louis,_Missouri' is found by 'st louis'.

    The build passes ``cached=False``: it sees every name once, and filling the name caches
    (hundreds of thousands of entries) only grew its memory."""
    fold_, parts_ = (fold, title_parts) if cached else (fold.__wrapped__, title_parts.__wrapped__)
    forms: list[str] = []
    for n in (ent.name, *ent.aliases):
        t = parts_(n)
        forms += [fold_(t.full), fold_(t.display), fold_(t.base)]
    return " | ".join(dict.fromkeys(f for f in forms if f))


def _lancedb():
    try:
        import lancedb
    except ImportError:
        raise KBError("needs LanceDB: pip install 'i2cr[kb]' (or pip install lancedb)") from None
    return lancedb


def _schema(dim: int):
    import pyarrow as pa

    return pa.schema([
        ("id", pa.string()), ("name", pa.string()), ("desc", pa.string()),
        ("aliases", pa.list_(pa.string())), ("prior", pa.float64()), ("qid", pa.string()),
        ("image", pa.string()), ("lex", pa.string()), ("vector", pa.list_(pa.float32(), dim)),
        ("alias_keys", pa.list_(pa.string())), ("alias_priors", pa.list_(pa.float64())),
    ])


def _has_alias_table(table) -> bool:
    return all(c in table.schema.names for c in ALIAS_COLS)


def read_meta(kb_dir: str | Path) -> dict[str, Any]:
    p = Path(kb_dir) / META
    if not p.is_file():
        raise KBError(f"is not a knowledge base (no {META}; build one with `i2cr kb build`)",
                      source=str(kb_dir))
    try:
        meta = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise KBError(f"unreadable {META} ({type(e).__name__})", source=str(kb_dir)) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not meta.get("embedder"):
        raise KBError(f"{META} is not a KB description of format {FORMAT}", source=str(kb_dir))
    return meta


def _write_meta(kb_dir: Path, meta: dict[str, Any]) -> None:
    tmp = kb_dir / (META + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2), encoding="utf-8")
    tmp.replace(kb_dir / META)


def _sql_list(ids: Sequence[str]) -> str:
    return ", ".join("'" + i.replace("'", "''") + "'" for i in ids)


def dir_size(path: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def _say(msg: str) -> None:
    print(f"i2cr kb: {msg}", file=sys.stderr, flush=True)


def build(source: str | Path, out: str | Path, *, embedder: str,
          encode: Callable[[list[str]], np.ndarray], dtype: str | None = None,
          kind: str = "auto", batch_size: int = 1024,
          progress: bool = True, warn: Callable[[str], None] | None = _say,
          ann_min_rows: int = ANN_MIN_ROWS, stop_after: int | None = None,
          phase: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Build (or resume building) the KB at ``out`` from ``source``; returns its metadata.

    ``encode`` turns entity texts into L2-normalised vectors (the embedder named ``embedder``).
    Bad source lines are reported through ``warn`` one line each and counted in ``bad``; lines
    that repeat an earlier line's id are skipped and counted in ``repeated``, the first
    ``REPEATED_NAMED`` of them named through ``warn`` (with both lines). A second build into the
    same folder while one runs is refused (:func:`build_lock`); a build that fails with an error
    (not one interrupted: that one resumes) removes the folder it made.
    ``stop_after`` stops after that many batches, leaving the build unfinished (tests use it to
    interrupt a build). A dataset build that resumes one an earlier i2cr began first makes again
    the rows that build keyed by another rule (:func:`drop_stale_dataset_rows`), so that it ends
    as a fresh build would. ``phase`` is told each phase as it starts: ``ingest``, ``compact``,
    ``fts``, ``labels``, ``ann`` (only with an ANN index), then ``done`` (the benchmark
    measures each).

    Memory: the ingestion holds one batch (its entities, vectors and Arrow table) and nothing per
    entity: the ids already written are looked up in an on-disk registry (:mod:`.ids`), not in a
    set nor by scanning the table (a dataset source deduplicates on disk too). Indexing is
    LanceDB's, bounded where it can be: compaction streams; the full-text index is built by one
    worker under ``FTS_MEMORY_MB``; the ANN's k-means trains on at most ``ANN_TRAIN_MB`` of
    vectors into sqrt(N) partitions of product-quantised codes (IVF-PQ). The table's older
    versions are deleted after compaction, and the indexes of a KB this build adds to are
    dropped before it, so neither the data nor an index is kept twice on disk (the build must
    be the KB's only user)."""
    lancedb = _lancedb()
    if not str(out).strip():  # Path('') is the current folder: an unset variable, not a choice
        raise KBError("the KB folder's path is empty; name the folder to build into")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise KBError("names a file, not a folder", source=str(out))
    if (out / META).is_file():  # refused before the source is read
        _check_embedder(out, read_meta(out), embedder)
    entities = read_source(source, kind)  # raises on a missing source before anything is made
    dataset = (source_kind(source) if kind == "auto" else kind) == "dataset"
    made = _make_folder(out)
    with build_lock(out):
        try:
            return _build(lancedb, source, out, entities, dataset=dataset, embedder=embedder,
                          encode=encode, dtype=dtype, batch_size=batch_size, progress=progress,
                          warn=warn, ann_min_rows=ann_min_rows, stop_after=stop_after, phase=phase)
        except Exception:
            # a failed build leaves nothing behind in a folder it made (the last made first: its
            # path may pass through the others, 'new/../kb')
            for d in reversed(made):
                shutil.rmtree(d, ignore_errors=True)
            raise
        finally:
            close = getattr(entities, "close", None)
            if close is not None:  # (a failure before the source was read)
                close()


def _make_folder(out: Path) -> list[Path]:
    """Make the folder ``out`` and its missing parents; return the topmost folders this call made
    (what a failed build removes): none when ``out`` was there, two for ``new/../kb`` (``new``,
    made on the way, is beside ``kb``, not above it). "Made" is decided by the ``mkdir`` itself
    (it succeeded: this call made the folder; FileExistsError: another did), never by an earlier
    look, so a folder another build made in the meantime is never claimed, nor one holding it."""
    missing = []
    p = out
    while not p.exists() and p.parent != p:
        missing.append(p)
        p = p.parent
    made: list[Path] = []
    top: Path | None = None  # the topmost folder made of the run of folders being made
    for d in reversed(missing):  # top down
        try:
            d.mkdir()
        except FileExistsError:
            if d.name == ".." and top is not None:  # out of the folders made: they stay made
                made.append(top)
            top = None  # (else another made it: what this call made above holds it)
            continue
        if top is None:
            top = d
    if top is not None:
        made.append(top)
    if not out.is_dir():
        raise KBError("names a file, not a folder", source=str(out))
    return made


def _check_embedder(out: Path, meta: dict[str, Any], embedder: str) -> None:
    if meta["embedder"] != embedder:
        raise KBError(f"was built with embedder {meta['embedder']!r}, not {embedder!r}: build into "
                      "a new folder, or use the same embedder", source=str(out))


@contextmanager
def build_lock(out: Path) -> Iterator[None]:
    """Hold the KB folder's build lock (``build.lock``, an exclusive ``flock``, released when
    the build ends or its process dies), or :class:`KBError` at once when another process holds
    it: two builds into one folder would each write the table and remove the other's registry."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): builds are not guarded against each other
        yield
        return
    with open(out / LOCK, "a+b") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # BlockingIOError: another process holds it
            raise KBError(f"KB {out} is being built by another process") from None
        yield


def _build(lancedb: Any, source: str | Path, out: Path, entities: Iterable[Any], *, dataset: bool,
           embedder: str, encode: Callable[[list[str]], np.ndarray], dtype: str | None,
           batch_size: int, progress: bool, warn: Callable[[str], None] | None, ann_min_rows: int,
           stop_after: int | None, phase: Callable[[str], None] | None) -> dict[str, Any]:
    """:func:`build`'s work, in the folder ``out`` it has made and locked."""
    meta = read_meta(out) if (out / META).is_file() else None
    if meta:  # (read again under the lock)
        _check_embedder(out, meta, embedder)
    db = lancedb.connect(str(out / DB))
    table = db.open_table(TABLE) if TABLE in db.list_tables().tables else None
    if table is not None and not _has_alias_table(table):
        raise KBError("was built by an earlier i2cr (no alias table): build into a new folder",
                      source=str(out))
    if meta is None:
        meta = {"format": FORMAT, "embedder": embedder, "dim": None, "source": str(source),
                "complete": False, "entities": 0, "bad": 0, "build_s": 0.0}
    meta.update(complete=False, source=str(source))
    if dtype is not None:  # the precision the vectors were computed in (float32 / bfloat16)
        meta.setdefault("dtype", dtype)
    _write_meta(out, meta)
    if table is not None and dataset:  # (the KB marked unfinished first; before the registry,
        # which copies the ids left)
        stale = drop_stale_dataset_rows(table)
        if stale and warn is not None:
            warn(f"{out}: {stale:,} entities without a QID were keyed by an earlier i2cr's rule "
                 "(their folded name): removed, and made again from the source under their "
                 "title")
    if phase is not None:
        phase("ingest")
    t0, base_s = time.perf_counter(), float(meta.get("build_s") or 0.0)
    added = skipped = bad = seen = batches = repeated = 0
    last_report = 0.0
    registry = IdRegistry(out, table)

    def flush(batch: list[Entity]) -> None:
        nonlocal table, added, skipped
        have = registry.present(list(dict.fromkeys(e.id for e in batch)))
        fresh: list[Entity] = []
        for e in batch:
            if e.id in have:
                skipped += 1
                continue
            have.add(e.id)
            fresh.append(e)
        if not fresh:
            return
        vecs = np.asarray(encode([entity_text({"name": e.name, "desc": e.desc}) for e in fresh]),
                          dtype=np.float32)
        if vecs.ndim != 2 or len(vecs) != len(fresh) or not np.isfinite(vecs).all():
            raise KBError(f"the embedder returned {vecs.shape} vectors for {len(fresh)} texts",
                          source=str(out))
        if meta["dim"] is None:
            meta["dim"] = int(vecs.shape[1])
        elif meta["dim"] != vecs.shape[1]:
            raise KBError(f"holds {meta['dim']}-d vectors; the embedder gives {vecs.shape[1]}-d",
                          source=str(out))
        schema = _schema(meta["dim"])
        if table is None:
            table = db.create_table(TABLE, schema=schema)
        table.add(arrow_batch(fresh, vecs, schema))  # first the table, then the registry
        registry.record((e.id for e in fresh), table.version)
        added += len(fresh)

    try:
        batch: list[Entity] = []
        for item in entities:
            if isinstance(item, BadEntity):
                bad += 1
                if warn is not None:
                    warn(str(item))
                continue
            if isinstance(item, Repeated):  # the first few named, the others counted
                repeated += 1
                if warn is not None and repeated <= REPEATED_NAMED:
                    warn(str(item))
                continue
            seen += 1
            batch.append(item)
            if len(batch) >= batch_size:
                flush(batch)
                batch, batches = [], batches + 1
                meta.update(build_s=base_s + time.perf_counter() - t0)
                _write_meta(out, meta)
                now = time.perf_counter()
                if progress and now - last_report > 2.0:
                    last_report = now
                    _say(f"{seen:,} entities read, {added:,} added, {skipped:,} already there, "
                         f"{bad:,} bad ({seen / max(now - t0, 1e-9):,.0f}/s)")
                if stop_after is not None and batches >= stop_after:
                    return meta
        if batch:
            flush(batch)
    finally:
        close = getattr(entities, "close", None)
        if close is not None:  # a source's scratch files go now, not at collection
            close()
        registry.close()
    if repeated > REPEATED_NAMED and warn is not None:
        warn(f"{source}: {repeated:,} line(s) repeat an earlier line's id ({REPEATED_NAMED} named "
             "above); skipped (the first of each is kept)")
    if table is None:
        registry.remove()
        raise KBError(f"no usable entity in the source ({bad} bad line(s))", source=str(source))
    if progress:
        _say(f"{seen:,} entities read, {added:,} added, {skipped:,} already there, {bad:,} bad, "
             f"{repeated:,} repeated ids; indexing ...")
    registry.remove()  # indexing moves the table's version on: a later build rebuilds it
    rows, ann = _index(table, ann_min_rows, phase)
    meta.update(complete=True, entities=rows, bad=bad, repeated=repeated, added_now=added,
                skipped_now=skipped,
                ann=ann, alias_entities=table.count_rows("array_length(alias_keys) > 0"),
                build_s=round(base_s + time.perf_counter() - t0, 3))
    _write_meta(out, meta)
    meta["size_bytes"] = dir_size(out)
    _write_meta(out, meta)
    if phase is not None:
        phase("done")
    if progress:
        _say(f"done: {rows:,} entities in {out} ({meta['size_bytes'] / 2 ** 20:.1f} MB, "
             f"{meta['build_s']:.1f}s, {bad} bad line(s) skipped)")
    return meta


def drop_stale_dataset_rows(table: Any) -> int:
    """Delete the rows an earlier i2cr's dataset build keyed by another rule, and return how
    many: no QID, and an id ``name:...`` that is not the :func:`~.source.dataset_key` of the row's
    name (it keyed a candidate without a QID by its folded name, so 'Oklahoma!' was
    'name:oklahoma'). Kept, a resumed dataset build would add each again under its key (a second
    copy) and skip the entity whose key the old row took ('Oklahoma'), so a resumed build would
    not be the fresh one; deleted, the build makes them again from the source."""
    where = "qid IS NULL AND id LIKE 'name:%'"
    stale: list[str] = []
    for batch in table.search().where(where).select(["id", "name"]).limit(None).to_batches(65_536):
        ids, names = (batch.column(batch.schema.get_field_index(c)).to_pylist()
                      for c in ("id", "name"))
        stale += [i for i, n in zip(ids, names, strict=True) if i != dataset_key({"name": n})]
    for k in range(0, len(stale), 500):
        table.delete(f"id IN ({_sql_list(stale[k:k + 500])})")
    return len(stale)


def arrow_batch(ents: Sequence[Entity], vecs: np.ndarray, schema):
    """One batch of rows as an Arrow table of the KB's schema (columns, no per-row dicts), the
    alias table's entries included."""
    import pyarrow as pa

    cols = {
        "id": [e.id for e in ents], "name": [e.name for e in ents],
        "desc": [e.desc for e in ents], "aliases": [list(e.aliases) for e in ents],
        "prior": [e.prior for e in ents], "qid": [e.qid for e in ents],
        "image": [e.image for e in ents], "lex": [lex_text(e, cached=False) for e in ents],
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1)), vecs.shape[1]),
        "alias_keys": [[a for a, _ in e.alias_priors] for e in ents],
        "alias_priors": [[p for _, p in e.alias_priors] for e in ents],
    }
    return pa.table(cols, schema=schema)


def ann_config(rows: int, dim: int):
    """The ANN index of a table of ``rows`` vectors of ``dim`` floats: IVF-PQ with sqrt(rows)
    partitions and ``dim / 8`` sub-vectors (a byte per 8 dimensions), its k-means trained on a
    sample of at most ``ANN_TRAIN_MB`` of vectors (LanceDB samples ``sample_rate`` vectors per
    partition, 256 by default: a sample, and its memory, that grew with the KB). IVF-PQ rather
    than IVF-HNSW-SQ: on the 1M-entity benchmark the same recall of a perturbed stored vector
    (99.5% against 100% at the top 10), the same query time, and its build's peak memory 768 MB
    against 1,282 MB (an HNSW graph is built per partition in memory)."""
    from lancedb.index import IvfPq

    parts = max(1, int(rows ** 0.5))
    train = max(parts, ANN_TRAIN_MB * 2 ** 20 // (4 * dim))
    return IvfPq(distance_type="cosine", num_partitions=parts,
                 num_sub_vectors=dim // 8 if dim % 8 == 0 else None,
                 sample_rate=max(ANN_MIN_SAMPLE_RATE, min(256, train // parts)))


def _index(table, ann_min_rows: int, phase: Callable[[str], None] | None) -> tuple[int, bool]:
    """Compact the table and build its full-text, label-list and (from ``ann_min_rows`` rows)
    ANN indexes, each in bounded memory."""
    from lancedb.index import FTS, LabelList

    if phase is not None:
        phase("compact")
    # the indexes of a KB this build adds to (or of an interrupted indexing) are dropped first:
    # compaction would otherwise update each of them (LanceDB rebuilds an index whole), and
    # their files would stay on disk beside their replacements
    for ix in table.list_indices():
        table.drop_index(ix.name)
    # compaction rewrites the batches' small fragments into large ones; the old ones (and the
    # versions that held them) are deleted at once, or the data would take twice its size on disk
    with warnings.catch_warnings():  # LanceDB warns that a reader of an older version would
        # fail: the build is the only user of an unfinished KB
        warnings.filterwarnings("ignore", message=r"optimize\(cleanup_older_than=0\)")
        table.optimize(cleanup_older_than=timedelta(0))
    if phase is not None:
        phase("fts")
    table.create_index("lex", config=FTS(stem=False, remove_stop_words=False, ascii_folding=True,
                                         memory_limit=FTS_MEMORY_MB, num_workers=1),
                       replace=True)
    if phase is not None:
        phase("labels")
    table.create_index("alias_keys", config=LabelList(), replace=True)
    rows = table.count_rows()
    ann = rows >= ann_min_rows
    if ann:
        if phase is not None:
            phase("ann")
        dim = table.schema.field("vector").type.list_size
        table.create_index("vector", config=ann_config(rows, dim), replace=True)
    return rows, ann


class KB:
    """An opened, finished KB: lexical, dense and fused search."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.meta = read_meta(self.path)
        if not self.meta.get("complete"):
            raise KBError("its build did not finish; rerun `i2cr kb build` with the same source "
                          "and --out to resume it", source=str(self.path))
        self.table = _lancedb().connect(str(self.path / DB)).open_table(TABLE)
        # a KB of an earlier i2cr has no alias table; one without alias priors is not asked
        self.has_aliases = _has_alias_table(self.table) and self.meta.get("alias_entities") != 0

    @property
    def embedder(self) -> str:
        return self.meta["embedder"]

    def check_embedder(self, name: str) -> None:
        if name != self.embedder:
            raise KBError(f"was built with embedder {self.embedder!r}; this run uses {name!r}. "
                          f"Query it with --set embedder={self.embedder}, or rebuild the KB",
                          source=str(self.path))

    _COLS = ["id", "name", "desc", "qid", "prior"]

    def lexical(self, mention: str, n: int = POOL) -> list[dict[str, Any]]:
        words = " ".join(dict.fromkeys(" ".join((*lookup_forms(mention),
                                                 *demonym_forms(mention))).split()))
        if not words:
            return []
        return (self.table.search(words, query_type="fts", fts_columns="lex")
                .select([*self._COLS, "_score"]).limit(n).to_list())

    def aliases(self, mention: str, n: int = POOL) -> list[dict[str, Any]]:
        """The entities the mention's normalised surface is an alias of, largest prior first,
        each with that alias's prior as ``alias_prior``."""
        key = alias_key(mention)
        if not key or not self.has_aliases:
            return []
        rows = (self.table.search().where(f"array_has_any(alias_keys, [{_sql_list([key])}])")
                .select([*self._COLS, *ALIAS_COLS]).limit(ALIAS_POOL).to_list())
        for r in rows:
            keys = list(r["alias_keys"] or [])
            r["alias_prior"] = float(r["alias_priors"][keys.index(key)]) if key in keys else 0.0
        rows.sort(key=lambda r: (-r["alias_prior"], r["id"]))
        return rows[:n]

    def dense(self, vector: np.ndarray, n: int = POOL) -> list[dict[str, Any]]:
        return (self.table.search(np.asarray(vector, dtype=np.float32), vector_column_name="vector")
                .metric("cosine").select([*self._COLS, "vector", "_distance"]).limit(n).to_list())

    def vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """The stored vectors of these entity ids."""
        if not ids:
            return {}
        rows = (self.table.search().where(f"id IN ({_sql_list(list(ids))})")
                .select(["id", "vector"]).limit(len(ids)).to_list())
        return {r["id"]: np.asarray(r["vector"], dtype=np.float32) for r in rows}

    def generate(self, mention: str, vector: np.ndarray, k: int, n: int = POOL
                 ) -> list[dict[str, Any]]:
        """The generated ranking, best first, at most ``max(k, n)`` entries, each with its
        scores: reciprocal rank fusion of the alias table's, the lexical and the dense hits,
        after the alias table's ``ceil(k / 2)`` most likely entities for the mention's surface
        (as REL takes its first candidates by p(entity | mention) and the rest by context: RRF
        rewards agreement, so an alias's top entity found by neither search would sink). When
        the mention's surface is an alias of some entities, their ``prior`` is the alias's prior
        (p(entity | mention)) and the other entries' is 0 (the alias table knows them not to be
        meant by that surface); otherwise each keeps the entity's own prior, if it has one."""
        ali, lex, den = self.aliases(mention, n), self.lexical(mention, n), self.dense(vector, n)
        fused: dict[str, dict[str, Any]] = {}
        for rank, r in enumerate(ali, 1):
            e = fused.setdefault(r["id"], _entry(r))
            e.update(alias_rank=rank, alias_prior=round(r["alias_prior"], 4))
            e["rrf"] += 1.0 / (RRF_K + rank)
        for rank, r in enumerate(lex, 1):
            e = fused.setdefault(r["id"], _entry(r))
            e.update(lex_rank=rank, lex_score=round(float(r["_score"]), 4))
            e["rrf"] += 1.0 / (RRF_K + rank)
        for rank, r in enumerate(den, 1):
            e = fused.setdefault(r["id"], _entry(r))
            e.update(dense_rank=rank, cos=round(1.0 - float(r["_distance"]), 4))
            e["_vector"] = r["vector"]
            e["rrf"] += 1.0 / (RRF_K + rank)
        out = sorted(fused.values(), key=lambda e: (-e["rrf"], -(e.get("cos") or -1.0)))
        head = sorted((fused[r["id"]] for r in ali), key=lambda e: (-e["alias_prior"], -e["rrf"]))
        head = head[: -(-k // 2)]  # equal priors: the searches' agreement decides
        taken = {id(e) for e in head}
        out = head + [e for e in out if id(e) not in taken]
        for e in out:
            e["rrf"] = round(e["rrf"], 5)
            if ali:  # p(entity | mention) from the alias table replaces the entity's own prior
                own = e.pop("prior", None)
                if own is not None:
                    e["entity_prior"] = own
                # the surface is not an alias of an entry the searches alone found: by the alias
                # table its p(entity | mention) is 0 (known, not missing: the ranker's
                # prior_missing is for a prior nobody knows)
                e["prior"] = e.get("alias_prior", 0.0)
        return out[: max(k, n)]


def _entry(r: dict[str, Any]) -> dict[str, Any]:
    e = {"id": r["id"], "name": r["name"], "desc": r.get("desc") or "", "rrf": 0.0}
    if r.get("qid"):
        e["qid"] = r["qid"]
    if r.get("prior") is not None and r["prior"] == r["prior"]:
        e["prior"] = float(r["prior"])
    return e


def kb_stamp(path: str | Path) -> tuple[str, int]:
    """Which build of the KB at ``path`` is there now: its resolved folder and its metadata's
    modification time (a rebuilt KB is a new one)."""
    p = Path(path).expanduser().resolve()
    try:
        stamp = (p / META).stat().st_mtime_ns
    except OSError:
        stamp = -1
    return str(p), stamp


def open_kb(path: str | Path, embedder: str | None = None) -> KB:
    """The KB at ``path``, opened, checked against ``embedder``. (A run keeps the KB it opened in
    its ``Resources``, ``Resources.kb``.)"""
    kb = KB(Path(path).expanduser().resolve())
    if embedder is not None:
        kb.check_embedder(embedder)
    return kb


def candidates_of(ranked: Iterable[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    """The graph candidates (name, desc, qid, prior) of the first ``k`` generated entries."""
    keep = ("name", "desc", "qid", "prior")
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for e in ranked:
        if len(out) >= k:
            break
        # names must be unique among a mention's candidates, as titles (data.parse_candidates'
        # rule: 'Michael_Jordan' repeats 'Michael Jordan', and would split its probability)
        key = title_key(e["name"])
        if key in seen:
            continue
        seen.add(key)
        out.append({f: e[f] for f in keep if f in e})
    return out
