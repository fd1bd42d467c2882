"""Benchmark: the offline pipeline on N dev mentions against the raw model work on the same inputs.

Two runs, models loaded beforehand and not counted:

- **cold**: an empty entity-embedding store, so every entity text is encoded;
- **warm**: in-memory caches dropped, the store from the cold run kept, as when a knowledge base's
  entities were embedded before (the usual set-up of a linker); queries are encoded again.

For each, the raw model time is the bare sentence-transformers model encoding exactly the texts that
run encoded, in batches, the faster of two passes (CLIP is not timed: the offline default has no
CLIP weights and uses the caption bridge); in
bfloat16 the first pass over new batch shapes also pays for compiling their kernels. The ratio shows
the overhead of the graph, the features and the Python around the model (the pipeline's own kernel
compiling included).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..data import DataError, iter_records, load_mentions, shuffle_candidates
from ..engine.ray_engine import Job, RayStats, run_ray, start
from ..graph import Context, resources
from ..graph.resources import Resources
from .harness import select
from .metrics import compute
from .runner import RunStats, check_items, run


def _raw_seconds(emb: Any, texts: list[str]) -> float:
    t0 = time.perf_counter()
    if texts:
        emb.raw_encode(texts)
    return time.perf_counter() - t0


def _timed(items: list, settings: Context) -> dict[str, Any]:
    settings = dataclasses.replace(settings, resources=Resources())  # a new run: models loaded
    emb = resources.embedder(settings)
    emb.raw_encode(["warm-up"])
    emb.record = []
    t0 = time.perf_counter()
    recs = list(run(items, settings, progress=False))
    pipeline_s = time.perf_counter() - t0
    texts, emb.record = list(emb.record), None
    raw_s = min(_raw_seconds(emb, texts) for _ in range(2))
    m = compute(recs, wall_s=pipeline_s)
    return {"pipeline_s": round(pipeline_s, 3), "mentions_per_s": round(len(recs) / pipeline_s, 2),
            "texts_encoded": len(texts), "entity_texts_from_store": emb.from_store,
            "raw_model_s": round(raw_s, 3),
            "pipeline_over_raw": round(pipeline_s / raw_s, 3) if raw_s else None,
            "accuracy_final": m["accuracy"]["final"],
            "llm_calls_per_mention": m["cost"]["llm_calls_per_mention"]}


def bench(data: str, labels: str | None, *, n: int = 200, settings: Context | None = None,
          seed: int = 0) -> dict[str, Any]:
    settings = settings or Context()
    items = select(shuffle_candidates(load_mentions(data, labels, strict=False), 0), sample=n,
                   seed=seed)
    with tempfile.TemporaryDirectory(prefix="i2cr-bench-") as store:
        s = dataclasses.replace(settings, embedding_cache=store)
        t0 = time.perf_counter()
        resources.embedder(s)
        load_s = time.perf_counter() - t0
        cold = _timed(items, s)
        warm = _timed(items, s)
    return {"mentions": len(items), "strategy": settings.strategy, "model_load_s": round(load_s, 2),
            "cold": cold, "warm": warm}


def _rss_mb() -> float:
    """This process's resident memory now, in MB (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _as_record(m: Any) -> dict[str, Any]:
    """A loaded mention back as a JSONL record (its candidates in their shuffled order)."""
    return {"id": m.id, "mention": m.mention, "context": m.context, "image": m.image,
            "candidates": [c.to_dict() for c in m.candidates], "clues": m.clues,
            "label": m.label, "allow_nil": m.allow_nil}


def bench_ray(data: str, labels: str | None, *, n: int = 200, settings: Context | None = None,
              seed: int = 0, workers: int | None = None, address: str | None = None,
              stream_mentions: int = 500_000, batch_size: int = 32) -> dict[str, Any]:
    """``i2cr bench --engine ray``: the same N mentions linked in this process and on Ray (each
    with a cold entity-embedding store, models loaded inside the timed run), then the driver's
    memory while ``stream_mentions`` mentions made from the dataset stream through Ray with the
    workers only reading and checking each record (``dry_run``: linking that many would take
    hours on a laptop's cores)."""
    settings = settings or Context()
    items = [m for m in select(shuffle_candidates(load_mentions(data, labels, strict=False), 0),
                               sample=n, seed=seed) if not isinstance(m, DataError)]
    out: dict[str, Any] = {"mentions": len(items), "strategy": settings.strategy}
    with tempfile.TemporaryDirectory(prefix="i2cr-bench-ray-") as tmp:
        if stream_mentions > 1:  # first, in a fresh process: a driver that never loaded a model
            code = ("import json, sys; from i2cr.eval.bench import stream_rss; "
                    "print(json.dumps(stream_rss(*json.loads(sys.argv[1]))))")
            args = json.dumps([data, tmp, stream_mentions, workers, address])
            p = subprocess.run([sys.executable, "-c", code, args], capture_output=True,
                               text=True)
            if p.returncode:
                raise RuntimeError(f"the streaming run failed: {p.stderr[-2000:]}")
            out["stream"] = json.loads(p.stdout.strip().splitlines()[-1])
        sample = Path(tmp) / "sample.jsonl"
        sample.write_text("".join(json.dumps(_as_record(m)) + "\n" for m in items))
        root = str(Path(data).parent)

        st = RunStats()
        s1 = dataclasses.replace(settings, embedding_cache=str(Path(tmp) / "store-local"),
                                 resources=Resources())  # models loaded inside the timed run
        local = list(run(check_items(load_mentions(sample, image_root=root, strict=False),
                                     warn=None), s1, progress=False, stats=st))
        out["local"] = {"run_mentions_per_s": round(st.linked / st.wall_s, 2),
                        "after_load_mentions_per_s": round(st.linked / (st.wall_s - st.load_s), 2),
                        "linking_mentions_per_s": round(st.linked / st.link_s, 2),
                        "load_s": round(st.load_s, 2), "wall_s": round(st.wall_s, 2)}

        started = start(address, num_cpus=workers, object_store_mb=512)
        try:
            import ray

            s2 = dataclasses.replace(settings, embedding_cache=str(Path(tmp) / "store-ray"))
            rst = RayStats()
            t0 = time.perf_counter()
            times, recs = [], []
            for rec in run_ray(Job(path=str(sample), settings=s2, image_root=root),
                               workers=workers, batch_size=batch_size, progress=False,
                               stats=rst):
                times.append(time.perf_counter())
                recs.append(rec)
            wall = times[-1] - t0
            after = rst.wall_s - rst.first_s  # from the first batch back to the last
            steady = (len(recs) - rst.first_rows) / after if after > 0 else None
            same = sum(a["answer"] == b["answer"] and a["id"] == b["id"]
                       for a, b in zip(local, recs, strict=False))
            out["ray"] = {"workers": rst.workers, "batch_size": batch_size,
                          "cpus": ray.cluster_resources().get("CPU"),
                          "run_mentions_per_s": round(len(recs) / wall, 2),
                          "steady_mentions_per_s": round(steady, 2) if steady else None,
                          "wall_s": round(wall, 2), "same_answers": f"{same}/{len(local)}"}
            out["ray_over_local"] = {
                "run": round(out["ray"]["run_mentions_per_s"]
                             / out["local"]["run_mentions_per_s"], 3),
                "steady_over_local_after_load": round(
                    steady / out["local"]["after_load_mentions_per_s"], 3) if steady else None}

        finally:
            if started:
                import ray

                ray.shutdown()
    return out


def stream_rss(data: str, tmp: str, mentions: int, workers: int | None,
               address: str | None) -> dict[str, Any]:
    """Stream ``mentions`` records made from ``data`` (written to a JSONL in ``tmp``) through
    Ray with the workers only reading and checking each record, sampling this driver's resident
    memory before and every tenth of the way."""
    big = Path(tmp) / "stream.jsonl"
    base = [(rid, rec) for rid, rec in iter_records(data) if isinstance(rec, dict)]
    with big.open("w", encoding="utf-8") as fh:
        for i in range(mentions):
            rid, rec = base[i % len(base)]
            fh.write(json.dumps({**rec, "id": f"{rid}#{i // len(base)}"}) + "\n")
    del base
    rss = [_rss_mb()]
    t0 = time.perf_counter()
    k = 0
    try:
        for k, _ in enumerate(run_ray(Job(path=str(big), settings=Context(), dry_run=True),
                                      address=address, workers=workers, batch_size=512,
                                      progress=False), 1):
            if k % max(1, mentions // 10) == 0:
                rss.append(_rss_mb())
    finally:
        size = big.stat().st_size
        big.unlink()
    rss.append(_rss_mb())
    return {"mentions": k, "file_mb": round(size / 2**20), "dry_run": True,
            "wall_s": round(time.perf_counter() - t0, 1),
            "driver_rss_mb_start_then_every_10pct": [round(x) for x in rss],
            "driver_rss_peak_mb": round(max(rss))}
