"""Benchmark: the offline pipeline on N dev mentions against the raw model work on the same inputs.

The pipeline runs with a cold embedding cache (models loaded beforehand and not counted). The raw
model time is the bare sentence-transformers model encoding exactly the distinct texts the pipeline
encoded (plus CLIP forward passes when CLIP ran), in batches. Their ratio shows the overhead of the
graph, the features and the Python around the models.
"""

from __future__ import annotations

import time
from typing import Any

from ..data import load_mentions, shuffle_candidates
from ..graph import Context, resources
from .harness import select
from .metrics import compute
from .runner import run


def bench(data: str, labels: str | None, *, n: int = 200, settings: Context | None = None,
          seed: int = 0) -> dict[str, Any]:
    settings = settings or Context()
    items = select(shuffle_candidates(load_mentions(data, labels, strict=False), 0), sample=n,
                   seed=seed)
    resources.reset()
    t0 = time.perf_counter()
    emb = resources.embedder(settings)
    emb.model.encode(["warm-up"], show_progress_bar=False)
    load_s = time.perf_counter() - t0
    emb.record = []
    t0 = time.perf_counter()
    recs = list(run(items, settings, progress=False))
    pipeline_s = time.perf_counter() - t0
    texts = list(emb.record)
    emb.record = None
    t0 = time.perf_counter()
    emb.model.encode(texts, batch_size=settings.embed_batch_size, normalize_embeddings=True,
                     show_progress_bar=False)
    raw_s = time.perf_counter() - t0
    m = compute(recs, wall_s=pipeline_s)
    return {"mentions": len(recs), "strategy": settings.strategy,
            "model_load_s": round(load_s, 2), "pipeline_s": round(pipeline_s, 3),
            "mentions_per_s": round(len(recs) / pipeline_s, 2),
            "texts_encoded": len(texts), "raw_model_s": round(raw_s, 3),
            "pipeline_over_raw": round(pipeline_s / raw_s, 3) if raw_s else None,
            "model_s_inside_pipeline": round(emb.model_seconds, 3),
            "accuracy_final": m["accuracy"]["final"],
            "llm_calls_per_mention": m["cost"]["llm_calls_per_mention"]}
