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
import tempfile
import time
from typing import Any

from ..data import load_mentions, shuffle_candidates
from ..graph import Context, resources
from .harness import select
from .metrics import compute
from .runner import run


def _raw_seconds(emb: Any, texts: list[str]) -> float:
    t0 = time.perf_counter()
    if texts:
        emb.raw_encode(texts)
    return time.perf_counter() - t0


def _timed(items: list, settings: Context) -> dict[str, Any]:
    resources.reset()
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
    resources.reset()
    return {"mentions": len(items), "strategy": settings.strategy, "model_load_s": round(load_s, 2),
            "cold": cold, "warm": warm}
