"""Corpus-scale linking on Ray: the input streamed through Ray Data, mentions linked in batches by
a pool of actors that each hold one set of models, results written by the driver as they come.

- **Reading.** One Ray Data read task streams the file record by record (JSONL line by line, the
  I2CR JSON dict in chunks: :mod:`i2cr.engine.stream`) into small blocks of raw JSON text; the
  driver never holds the input. Records keep their input order and position (``idx``).
- **Linking.** ``map_batches`` over an actor pool (``workers`` actors): each actor loads the
  models once (its settings hold one :class:`i2cr.graph.resources.Resources`), turns each raw
  record into a mention or an error exactly as :func:`i2cr.data.load_mentions` does, prefetches
  the batch's embeddings in one go, and links the batch (``concurrency`` mentions in flight for
  API backends).
  A KB is opened by each worker from its path (``settings.kb``); no KB data passes the driver.
- **Writing.** The driver writes each record once (results JSONL, or Parquet parts with an
  ``.parquet`` output), in input order, as batches complete; an id already written is never
  written again. A repeated input id becomes the same ``<id>#dup<k>`` error record as in
  :func:`i2cr.eval.runner.check_items`. The ids seen and written are kept on disk
  (:mod:`i2cr.engine.ids`), so the driver's memory does not grow with the input. With ``resume``
  the ids already in the output are skipped by the actors (they get the set through the object
  store).
- **Caches.** A cache that fails in a worker (:mod:`i2cr.store`: unusable, damaged entries) is
  warned of on the worker's stderr, which reaches the driver's; each batch also brings back the
  worker's cache failures since its batch before (``caches``), and what failed as the worker
  started (opening its caches) goes to the driver's :class:`CacheReports` before its first batch,
  so a worker given no batch is heard too. The driver keeps them as its own
  (:func:`i2cr.store.adopt`), so the closing lines and the exit code say them as in one process.
- **Faults.** Ray Data restarts a dead actor and retries its batch; the driver's ids keep the
  output exactly-once. A killed driver loses at most the records not yet written; ``--resume``
  goes on.
- **LLM.** With the embedded llama.cpp backend, the driver starts one server per node (an actor
  pinned to the node, owned by the driver: it stops with the run or when the driver dies) and the
  node's actors share it.

Ray is imported only here, so the single-process path never loads it. Every Ray address is
127.0.0.1 on one machine: ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` is set before Ray starts, and a
Ray that i2cr starts itself has no dashboard.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pickle
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .. import llm, store
from ..data import (
    DataError,
    Mention,
    documents_of,
    load_labels,
    scattered_message,
    shown_id,
    shuffle_candidates,
    to_item,
)
from ..eval.report import labels_line
from ..eval.runner import (
    SHOWN_REPEATS,
    ResultWriter,
    RunStats,
    Warn,
    bad_record,
    bad_records,
    check_labels,
    label_ids,
    load_models,
    nulls_line,
    prefetch,
    repeats_line,
    run_one,
    warn_stderr,
)
from ..graph import Context
from ..graph.resources import Resources
from ..linker import error_record, link_mention
from .ids import RunIds
from .stream import iter_stream

RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # every Ray address is 127.0.0.1
           "RAY_USAGE_STATS_ENABLED": "0"}


def ray_env() -> None:
    """Set the environment every Ray process of i2cr needs, before Ray is imported (Ray reads
    it once, on import)."""
    os.environ.update(RAY_ENV)


ray_env()  # this module is imported before Ray is


@dataclass
class Job:
    """What the workers need to turn raw records into result records (picklable, small: paths,
    not data)."""

    path: str
    settings: Context
    labels: str | None = None
    image_root: str | None = None
    allow_nil: bool | None = None
    candidates: str = "required"  # as for parse_record
    shuffle_seed: int | None = None
    limit: int | None = None
    concurrency: int = 1  # mentions in flight in each actor (API backends)
    linker: Callable[[Mention, Context], dict[str, Any]] = link_mention
    dry_run: bool = False  # read and check every record, link none (to measure the reading)


@dataclass
class RayStats(RunStats):
    """A Ray run: :class:`RunStats` plus the batches each node linked (by Ray node id)."""

    workers: int = 0
    batches: int = 0
    nodes: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    null_ids: int = 0
    first_s: float = 0.0  # until the first batch came back (actors started, models loaded)
    first_rows: int = 0  # the records of that batch


# ---------------------------------------------------------------------------------------------
# reading


def _read_blocks(path: str, limit: int | None, rows: int) -> Iterator[Any]:
    """One block per batch of ``rows`` records, as one row of lists: ``idx`` (positions in the
    input), ``rid`` (ids), ``raw`` (each record's JSON text, or None), ``err`` (its load error
    pickled, or None) and ``apart`` (whether it is scattered from its document, by
    :func:`i2cr.data.documents_of`). A batch is one row so that Ray Data, which merges small
    blocks and gives an actor a whole block, hands out one batch per actor call."""
    import pyarrow as pa

    cols: dict[str, list] = {"idx": [], "rid": [], "raw": [], "err": [], "apart": []}
    types = {"idx": pa.list_(pa.int64()), "rid": pa.list_(pa.string()),
             "raw": pa.list_(pa.large_string()), "err": pa.list_(pa.binary()),
             "apart": pa.list_(pa.bool_())}

    def block() -> Any:
        t = pa.table({k: pa.array([v], types[k]) for k, v in cols.items()})
        for k in cols:
            cols[k] = []
        return t

    for i, (rid, rec, apart) in enumerate(documents_of(iter_stream(path))):
        if limit is not None and i >= limit:
            break
        cols["idx"].append(i)
        cols["rid"].append(rid)
        cols["apart"].append(apart)
        if isinstance(rec, DataError):
            cols["raw"].append(None)
            cols["err"].append(pickle.dumps(rec))
        else:
            cols["raw"].append(json.dumps(rec, ensure_ascii=False))
            cols["err"].append(None)
        if len(cols["idx"]) >= rows:
            yield block()
    if cols["idx"]:
        yield block()


def _datasource(path: str, limit: int | None, rows: int) -> Any:
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class MentionSource(Datasource):
        """One read task that streams the file (a single pass keeps line numbers and order)."""

        def estimate_inmemory_data_size(self) -> int | None:
            return None

        def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                           data_context: Any = None) -> list[ReadTask]:
            meta = BlockMetadata(num_rows=None, size_bytes=None, input_files=(path,),
                                 exec_stats=None)
            return [ReadTask(lambda: _read_blocks(path, limit, rows), meta)]

        def get_name(self) -> str:
            return "i2cr_mentions"

    return MentionSource()


# ---------------------------------------------------------------------------------------------
# the actors


def _rid(it: Mention | DataError) -> str:
    return it.id if isinstance(it, Mention) else (it.record or "?")


def _failures_json(found: list[store.Failure]) -> str:
    return json.dumps([dataclasses.asdict(f) for f in found])


def _adopt(found_json: str) -> None:
    store.adopt(store.Failure(**f) for f in json.loads(found_json))


class CacheReports:
    """The driver's mailbox (a Ray actor it owns) for the cache failures its workers met as they
    started: a worker that is given no batch has no other way to say them."""

    def __init__(self) -> None:
        self.found: list[str] = []

    def add(self, found_json: str) -> None:
        self.found.append(found_json)

    def take(self) -> list[str]:
        out, self.found = self.found, []
        return out


class LinkActor:
    """One worker: one set of models, linking a batch of raw records at a time."""

    def __init__(self, job: Job, done: list[Any], reports: Any = None):
        ray_env()
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        import ray

        self.job = job
        self.cache_mark = store.mark()  # the worker's cache failures from here on go to the driver
        self.done: frozenset[str] = ray.get(done[0]) if done else frozenset()
        self.gold = load_labels(job.labels) if job.labels else {}
        node = ray.get_runtime_context().get_node_id()
        self.node = f"{node}@{ray.util.get_node_ip_address()}"  # reported per batch
        # the actor's one set of models, for its life (the job's settings arrive without any)
        self.settings = dataclasses.replace(_node_llm(job.settings, node), resources=Resources())
        if not job.dry_run:
            try:
                load_models([], self.settings)  # (and the clue cache, as the local engine does)
            except Exception:  # noqa: BLE001 - each mention then records the failure
                pass
        found, self.cache_mark = store.report(self.cache_mark)
        if found and reports is not None:  # said before any batch: this worker may get none
            ray.get(reports.add.remote(_failures_json(found)))

    def items(self, rows: list[dict[str, Any]]) -> list[Mention | DataError]:
        job, out = self.job, []
        for r in rows:
            rec = pickle.loads(r["err"]) if r["err"] is not None else json.loads(r["raw"])
            it = to_item(r["rid"], rec, source=job.path, gold=self.gold,
                         image_root=job.image_root, allow_nil=job.allow_nil,
                         candidates=job.candidates)
            if isinstance(it, DataError) and it.label is None:
                it.label = self.gold.get(_rid(it))
            out.append(it)
        if job.shuffle_seed is not None:
            out = shuffle_candidates(out, job.shuffle_seed)
        return out

    def __call__(self, batch: Any) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {"idx": [], "id": [], "label": [], "bad": [], "scored": [],
                                     "rec": [], "node": [], "apart": [], "caches": [],
                                     "claimed": []}
        for b in batch.to_pylist():  # one batch of records per row
            rows = [{"rid": rid, "raw": raw, "err": err}
                    for rid, raw, err in zip(b["rid"], b["raw"], b["err"], strict=True)]
            items, recs = self.link_batch(rows)
            out["idx"].append(b["idx"])
            out["id"].append([_rid(it) for it in items])
            out["label"].append([it.label for it in items])
            # the id a line that cannot be read still gives (its label is the bad record's)
            out["claimed"].append([it.claimed_id if isinstance(it, DataError) else None
                                   for it in items])
            # a bad record (its data or its gold label): what the driver names of it
            bad = [bad_record(it) if isinstance(it, DataError) else (None, False) for it in items]
            out["bad"].append([text for text, _ in bad])
            out["scored"].append([scored for _, scored in bad])
            out["rec"].append(recs)
            out["node"].append(self.node)
            out["apart"].append(b["apart"])  # each: scattered from its document
            # the caches that failed since the batch before (or the actor's start), as JSON
            found, self.cache_mark = store.report(self.cache_mark)
            out["caches"].append(_failures_json(found))
        return out

    def link_batch(self, rows: list[dict[str, Any]]) -> tuple[list[Mention | DataError],
                                                              list[str | None]]:
        items = self.items(rows)
        todo = [i for i, it in enumerate(items) if _rid(it) not in self.done]
        recs: list[str | None] = [None] * len(items)
        if self.job.dry_run:
            for i in todo:
                it = items[i]
                recs[i] = json.dumps({"id": _rid(it), "answer": None, "dry_run": True,
                                      "error": None if isinstance(it, Mention)
                                      else error_record("?", it)["error"]})
            return items, recs
        mentions = [items[i] for i in todo if isinstance(items[i], Mention)]
        if mentions:
            try:  # the batch's embeddings in one go; an optimisation only
                prefetch(mentions, self.settings)
            except Exception:  # noqa: BLE001 - the run itself reports errors
                pass
        for i, rec in zip(todo, self._link([items[i] for i in todo]), strict=True):
            recs[i] = json.dumps(rec, ensure_ascii=False, default=str)
        return items, recs

    def _link(self, items: list[Mention | DataError]) -> list[dict[str, Any]]:
        n = self.job.concurrency
        if n <= 1 or len(items) < 2:
            return [run_one(it, self.settings, self.job.linker) for it in items]
        with ThreadPoolExecutor(max_workers=n) as pool:
            return list(pool.map(lambda it: run_one(it, self.settings, self.job.linker), items))


# ---------------------------------------------------------------------------------------------
# the embedded LLM: one server per node


def _server_name(node: str) -> str:
    return f"i2cr-llama-{node}"


def _embedded(settings: Context) -> bool:
    return settings.chat_model is None and settings.uses_llm and (
        settings.llm in ("none", "embedded") or settings.llm.startswith("embedded:"))


def _node_llm(settings: Context, node: str) -> Context:
    """The settings of an actor on ``node``: with the embedded backend, its node's server."""
    if not _embedded(settings):
        return settings
    import ray

    try:
        server = ray.get_actor(_server_name(node))
    except ValueError:  # no server on this node (it joined after the start): the actor's own
        return settings
    url = ray.get(server.url.remote())
    return dataclasses.replace(settings, llm=f"openai-compat:embedded@{url}")


class LlamaServer:
    """The node's llama.cpp server (a child process of this actor, stopped with it)."""

    def __init__(self, spec: str):
        _, model, _ = llm.parse_spec("embedded" if spec == "none" else spec)
        self.server = llm.EmbeddedServer(Path(model) if model else llm.smollm2_gguf()).start()

    def url(self) -> str:
        return self.server.base_url

    def stop(self) -> None:
        self.server.stop()


def _start_servers(settings: Context) -> list[Any]:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if not _embedded(settings):
        return []
    servers = []
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        nid = node["NodeID"]
        actor = ray.remote(num_cpus=0)(LlamaServer).options(
            name=_server_name(nid), scheduling_strategy=NodeAffinitySchedulingStrategy(nid, soft=False),
        ).remote(settings.llm)
        servers.append(actor)
    ray.get([s.url.remote() for s in servers])  # type: ignore[union-attr]  # started (or failed) before the first batch
    return servers


# ---------------------------------------------------------------------------------------------
# the output


class ParquetWriter:
    """Results as a Parquet dataset: ``OUT`` is a folder of ``part-NNNNN.parquet`` files (read
    as one table by pyarrow, pandas, Spark, DuckDB). A part is written whole (to a temporary name,
    then renamed) every ``part_rows`` records and at the end, so a killed driver loses at most
    the records of the part it was filling; ``resume`` reads the ids of the parts there."""

    COLUMNS = ("id", "answer", "gold", "correct", "is_nil", "final_reason", "llm_calls", "error")

    def __init__(self, path: str | Path, *, resume: bool = False, part_rows: int = 1000):
        self.path, self.part_rows = Path(path), part_rows
        if self.path.exists() and not self.path.is_dir():
            raise DataError("a .parquet output is a folder of parts; a file is there",
                            source=str(self.path))
        self.path.mkdir(parents=True, exist_ok=True)
        for tmp in self.path.glob("*.tmp"):
            tmp.unlink()
        parts = sorted(self.path.glob("part-*.parquet"))
        if not resume:
            for p in parts:
                p.unlink()
            parts = []
        self.done: set[str] = set()
        self.errors_before: set[str] = set()  # ids of the error records already there
        if parts:
            import pyarrow.parquet as pq

            t = pq.read_table(self.path, columns=["id", "error"]).to_pydict()
            self.done = set(t["id"])
            self.errors_before = {i for i, e in zip(t["id"], t["error"], strict=True) if e is not None}
        self.part = len(parts)
        self.buf: list[dict[str, Any]] = []

    def _schema(self) -> Any:
        import pyarrow as pa

        return pa.schema([("id", pa.string()), ("answer", pa.string()), ("gold", pa.string()),
                          ("correct", pa.bool_()), ("is_nil", pa.bool_()),
                          ("final_reason", pa.string()), ("llm_calls", pa.int64()),
                          ("error", pa.string()), ("record", pa.large_string())])

    def write(self, rec: dict[str, Any]) -> None:
        self.buf.append(rec)
        if len(self.buf) >= self.part_rows:
            self.flush()

    def flush(self) -> None:
        if not self.buf:
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = [{**{k: rec.get(k) for k in self.COLUMNS},
                 "record": json.dumps(rec, ensure_ascii=False, default=str)} for rec in self.buf]
        for r in rows:
            r["answer"] = None if r["answer"] is None else str(r["answer"])
        name = self.path / f"part-{self.part:05d}.parquet"
        pq.write_table(pa.Table.from_pylist(rows, schema=self._schema()), str(name) + ".tmp")
        os.replace(str(name) + ".tmp", name)
        self.part += 1
        self.buf = []

    def close(self) -> None:
        self.flush()


def read_parquet_results(path: str | Path) -> list[dict[str, Any]]:
    """The records of a Parquet output, in the order written."""
    import pyarrow.parquet as pq

    return [json.loads(s) for s in pq.read_table(Path(path), columns=["record"])
            .column("record").to_pylist()]


class JsonlWriter(ResultWriter):
    """The results JSONL. ``done`` holds the ids there at the start only: the run's own ids are
    kept by :class:`i2cr.engine.ids.RunIds`, on disk."""

    def write(self, rec: dict[str, Any]) -> None:
        super().write(rec)
        self.done.discard(rec["id"])


def open_output(out: str | Path, *, resume: bool, warn: Warn | None) -> Any:
    """The writer of ``out``; its ``done``: the ids already there (with ``resume``)."""
    if str(out).endswith(".parquet"):
        return ParquetWriter(out, resume=resume)
    return JsonlWriter(out, resume=resume, warn=warn)


# ---------------------------------------------------------------------------------------------
# the driver


def start(address: str | None = None, *, num_cpus: int | None = None,
          object_store_mb: int | None = None) -> bool:
    """Connect to the Ray cluster at ``address``, or start a local loopback-only one. Returns
    whether this call connected (and so should shut Ray down); an already connected Ray is
    reused."""
    ray_env()
    import ray

    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=True, logging_level=logging.WARNING)
    else:
        kw: dict[str, Any] = {}
        if object_store_mb:
            kw["object_store_memory"] = object_store_mb * 1024 * 1024
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False,
                 logging_level=logging.WARNING, **kw)
    return True


def run_ray(job: Job, *, out: str | Path | None = None, resume: bool = False,
            address: str | None = None, workers: int | None = None, batch_size: int = 32,
            progress: bool = True, stats: RayStats | None = None,
            warn: Warn | None = warn_stderr, object_store_mb: int | None = 512,
            desc: str = "linking") -> Iterator[dict[str, Any]]:
    """Link every record of ``job.path`` on Ray, yielding result records in input order (those
    already in ``out`` skipped on resume), each id once. See the module doc."""
    warnings.filterwarnings("ignore", message="The minimum number of concurrent actors")
    st = stats if stats is not None else RayStats()
    t_start = time.perf_counter()
    writer = open_output(out, resume=resume, warn=warn) if out else None
    resumed: set[str] = writer.done if writer else set()
    st.errors_before = len(writer.errors_before) if writer else 0  # (of the whole output)
    repeated: list[str] = []  # the first repeated ids, named in the warning
    ids = RunIds()  # the driver's memory stays flat: the ids seen and written are on disk
    ids.add_written(resumed)
    started = start(address, num_cpus=workers, object_store_mb=object_store_mb)
    servers: list[Any] = []
    reports: Any = None  # the workers' cache failures as they started (CacheReports)
    bar = None
    named = bad_records(warn)  # each bad record named as the local engine names it (check_items)
    # the labels are checked against every id of the file, as check_input checks them: the ids
    # read, or with a limit those of the whole file (streamed once more)
    gold = load_labels(job.labels) if job.labels else None
    # records not with their document (data.documents_of; load_mentions warns too): of this run,
    # done before (resume); with a null or empty id, done before (this run's: st.null_ids)
    scattered, nulls_done = [0, 0], 0
    try:
        import ray
        import ray.data

        n = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        st.workers = n
        if resumed:
            _say(progress, f"resuming: {len(resumed)} record(s) already in {out}; the workers "
                 "skip them")
        ctx = ray.data.DataContext.get_current()
        saved = ctx.target_max_block_size, ctx.wait_for_min_actors_s
        # start linking once every actor is up (models loaded), so the first actor ready does
        # not take all the batches; a cluster short of CPUs fails with Ray's timeout message
        ctx.wait_for_min_actors_s = 600
        ctx.execution_options.preserve_order = True  # input order: the first of a repeated id wins
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        done_ref = [ray.put(frozenset(resumed))] if resumed else []
        resumed.clear()
        servers = _start_servers(job.settings) if not job.dry_run else []
        # one block per batch (a batch is one row): Ray Data merges blocks up to this size and
        # gives an actor a whole block, so a larger target would hand one actor all the work
        ctx.target_max_block_size = 1
        ds = ray.data.read_datasource(_datasource(job.path, job.limit, batch_size),
                                      override_num_blocks=1, num_cpus=0)
        reports = ray.remote(num_cpus=0)(CacheReports).remote()
        ds = ds.map_batches(LinkActor, fn_constructor_kwargs={"job": job, "done": done_ref,
                                                              "reports": reports},
                            batch_size=1, batch_format="pyarrow",
                            compute=ray.data.ActorPoolStrategy(size=n), num_cpus=1)
        bar = tqdm(desc=desc, unit="mention", disable=not progress, dynamic_ncols=True)
        for b in _rows(ds):  # one batch of records per row
            st.batches += 1
            if st.batches == 1:
                st.first_s, st.first_rows = time.perf_counter() - t_start, len(b["idx"])
            st.nodes[b["node"]] = st.nodes.get(b["node"], 0) + 1
            _adopt(b["caches"])  # (closing lines)
            for claimed in b["claimed"]:
                if claimed is not None:
                    ids.name(claimed)  # (check_labels: a label for it names a record)
            for idx, rid, label, bad, scored, text, apart in zip(
                    b["idx"], b["id"], b["label"], b["bad"], b["scored"], b["rec"], b["apart"],
                    strict=True):
                null = rid in ("None", "", "null")
                rec: dict[str, Any] | None
                k = ids.see(rid)
                # (a repeat is named as one; one already in the output, not again: check_items)
                if bad is not None and k == 1 and text is not None:
                    with tqdm.external_write_mode(file=sys.stderr):  # (above the bar)
                        named.name((bad, scored))
                if k > 1:  # the rule of check_items: the first is linked
                    new = f"{rid}#dup{k}"
                    err = DataError(f"duplicate id {shown_id(rid)} (record {idx + 1} of the input); "
                                    "not linked, scored as an error", record=new)
                    rec = error_record(new, err, label)
                else:
                    rec = None if text is None else json.loads(text)  # (None: done before)
                if rec is None or not ids.claim(rec["id"]):
                    # exactly once, whatever was retried (or in the output: resume)
                    scattered[1] += apart
                    nulls_done += null
                    continue
                scattered[0] += apart
                st.null_ids += null
                if k > 1:
                    st.duplicates += 1
                    if rid not in repeated and len(repeated) <= SHOWN_REPEATS:
                        repeated.append(rid)
                if writer:
                    writer.write(rec)
                st.count(rec)
                st.mentions += 1
                st.wall_s = st.link_s = time.perf_counter() - t_start
                bar.update(1)
                yield rec
            ids.commit()
        for found in ray.get(reports.take.remote()):  # every worker started before the first batch
            _adopt(found)
        ctx.target_max_block_size, ctx.wait_for_min_actors_s = saved
        if gold is not None:  # (said with the other warnings, below)
            known = ids.seen if job.limit is None else file_ids(job.path, label_ids(gold))
            st.labels_unmatched = check_labels(gold, known, warn=None)
    finally:
        st.wall_s = st.link_s = time.perf_counter() - t_start
        if bar is not None:
            bar.close()
        if writer:
            writer.close()
        ids.close()
        _stop_servers(servers)
        if reports is not None:
            import ray

            ray.kill(reports)
        if started:
            import ray

            ray.shutdown()
    said = labels_line(st.labels_unmatched)
    if warn is not None and said:
        warn(said)
    if warn is not None and st.duplicates:
        warn(repeats_line(st.duplicates, repeated))
    named.end()
    if warn is not None and scattered[0]:
        warn(scattered_message(*scattered))
    if warn is not None and st.null_ids:
        warn(nulls_line(st.null_ids, nulls_done))


def file_ids(path: str, wanted: list[str]) -> Callable[[str], bool]:
    """Whether an id of ``wanted`` (a labels file's) is a record's of the file, every record
    streamed (the driver keeps no more than ``wanted``): for the labels of a run that read only
    the first ``limit`` records. A document broken further on ends the reading there (the run
    read none of it either)."""
    want, found = set(wanted), set()
    try:
        for rid, _ in iter_stream(path):
            if rid in want:
                found.add(rid)
    except DataError:
        pass
    return found.__contains__


def _rows(ds: Any) -> Iterator[dict[str, Any]]:
    """The dataset's rows; a bad input file (a DataError raised in the read task) comes out as
    that DataError, not as Ray's wrapper with the worker's traceback."""
    try:
        yield from ds.iter_rows()
    except Exception as e:  # noqa: BLE001 - re-raised below unless it wraps a DataError
        cause: BaseException = e
        for _ in range(20):  # Ray's wrappers (themselves DataError subclasses) down to the cause
            inner = getattr(cause, "cause", None) or cause.__cause__
            if not isinstance(inner, BaseException) or inner is cause:
                break
            cause = inner
        if type(cause) is not DataError:
            raise
        raise DataError(str(cause).splitlines()[0]) from None  # Ray appends its retry advice


def _stop_servers(servers: list[Any]) -> None:
    import ray

    for s in servers:
        try:
            ray.get(s.stop.remote(), timeout=30)
        except Exception:  # noqa: BLE001 - killed below either way
            pass
        ray.kill(s)


def summary(st: RayStats) -> str:
    """One line: the workers, the batches and the nodes that linked them."""
    nodes = ", ".join(f"{k[:8]}…@{k.rpartition('@')[2]}: {v}" for k, v in sorted(st.nodes.items()))
    return (f"ray: {st.workers} worker(s), {st.batches} batch(es) on {len(st.nodes)} node(s)"
            + (f" ({nodes})" if nodes else ""))


def _say(progress: bool, msg: str) -> None:
    if progress:
        print(f"i2cr: {msg}", file=sys.stderr, flush=True)
