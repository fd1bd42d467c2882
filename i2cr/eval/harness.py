"""``i2cr eval``: run a dataset through the linker and report accuracy by stage, cost and speed.

Results go to ``OUT/results.jsonl`` (one line per mention, written as it completes), the
metrics to ``OUT/metrics.json``, the report to ``OUT/report.md`` and ``OUT/stages.png``. A run killed
at any point resumes with ``resume=True``: ids already in the results are skipped, a torn last
line is cut, and metrics are computed from the file, one record per id.

Every labelled record counts: one that fails to load or to link is an error record, scored as a
wrong answer, and the metrics say how many there were. Throughput is reported for the last
segment of a run (after a resume, only the mentions linked by this invocation over its own time),
for its linking phase and as a whole.
"""

from __future__ import annotations

import json
import os
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

from .. import store
from ..data import DataError, Mention, load_labels, load_mentions, shuffle_candidates
from ..graph import Context
from ..kb import open_kb
from ..kb.report import kb_lines, kb_metrics
from ..llm import check_backend
from . import metrics as M
from .report import markdown, write_png
from .runner import (
    RunStats,
    Warn,
    check_input,
    done_ids,
    read_results,
    run,
    to_link,
    warn_stderr,
)


def select(items: list, *, limit: int | None = None, sample: int | None = None,
           seed: int = 0) -> list:
    """The first ``limit`` items of a random ``sample`` of them (both optional, both >= 1)."""
    for name, v in (("limit", limit), ("sample", sample)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"{name} must be a whole number >= 1, not {v!r}")
    if sample is not None and sample < len(items):
        keep = set(random.Random(seed).sample(range(len(items)), sample))
        items = [it for i, it in enumerate(items) if i in keep]
    if limit is not None:
        items = items[:limit]
    return items


def _meta_path(out: Path) -> Path:
    return out / "run.json"


def evaluate(data: str | Path, labels: str | Path | None, out_dir: str | Path, *,
             settings: Context | None = None, image_root: str | None = None,
             resume: bool = False, limit: int | None = None, sample: int | None = None,
             seed: int = 0, keep_order: bool = False, shuffle_seed: int = 0,
             concurrency: int = 1, progress: bool = True, command: str = "",
             warn: Warn | None = warn_stderr, engine: Any = None,
             cache_mark: store.Mark | None = None) -> dict[str, Any]:
    """Evaluate; raises :class:`DataError` when the input holds no mention at all (nothing to
    score), :class:`i2cr.llm.BackendError` when the LLM backend does not answer.

    ``engine`` (the Ray engine: :func:`i2cr.engine.commands.eval_engine`) reads and links the
    dataset instead of this process: ``engine(results_path, resume, stats, progress)`` yields
    the records as it writes them; every record of the results file is then scored.

    The caches that failed from ``cache_mark`` on (:func:`i2cr.store.mark`; by default, from
    this call on) are in the metrics and the report (``cache_failures``)."""
    since = cache_mark if cache_mark is not None else store.mark()
    settings = settings or Context()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError("--out-dir names a file, not a folder", source=str(out))
    gold = load_labels(labels) if labels else {}
    if settings.kb:  # the KB generates every candidate; the dataset's lists are not read
        open_kb(settings.kb, settings.embedder)
    results_path = out / "results.jsonl"
    # (read once: the warnings and the run skip them; the Ray engine reads its own)
    done = done_ids(results_path, resume and not engine, warn=warn)
    items: list[Mention | DataError] = [] if engine else load_mentions(
        data, gold, image_root=image_root, strict=False,
        candidates="ignored" if settings.kb else "required", warn=warn, done=done)
    if not items and not engine:
        raise DataError("no mentions to evaluate in the file", source=str(data))
    if not keep_order:
        items = shuffle_candidates(items, shuffle_seed)
    if warn is not None and sample is not None and sample > len(items):
        warn(f"--sample {sample} is more than the {len(items)} mention(s) of {data}: all are used")
    unmatched = None  # (the Ray engine's driver runs the same checks as it reads, into the stats)
    if not engine:
        items, unmatched = check_input(
            items, gold, pick=lambda its: select(its, limit=limit, sample=sample, seed=seed),
            done=done, warn=warn)
    if engine or to_link(items):  # (error records only: no backend to start)
        if progress and settings.chat_model is None and settings.uses_llm:
            print("i2cr: checking the LLM backend ...", file=sys.stderr, flush=True)
        check_backend(settings)
    out.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {"wall_s": 0.0}
    if resume and _meta_path(out).exists():
        meta = json.loads(_meta_path(out).read_text())
    elif not resume and results_path.exists():
        results_path.unlink()
    info = {"dataset": str(data), "labels": str(labels), "command": command,
            "order": "original order (kept)" if keep_order else f"shuffled, seed {shuffle_seed}",
            "strategy": settings.strategy, "llm": settings.llm if settings.chat_model is None
            else type(settings.chat_model).__name__,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                       f"Python {platform.python_version()}",
            "settings": settings.public(), "limit": limit, "sample": sample, "seed": seed}
    t0 = time.perf_counter()
    base_wall = float(meta.get("wall_s") or 0.0)
    stats = RunStats(labels_unmatched=unmatched)
    segment = int(meta.get("segments") or 0) + 1  # this invocation's number (1 + resumes)

    def save_meta() -> None:
        meta.update(info=info, wall_s=base_wall + time.perf_counter() - t0, segments=segment,
                    last_segment=stats.as_dict())
        tmp = _meta_path(out).with_suffix(".tmp")
        tmp.write_text(json.dumps(meta, indent=2, default=str))
        tmp.replace(_meta_path(out))

    try:
        records = engine(results_path, resume, stats, progress) if engine else run(
            items, settings, out=results_path, resume=resume, progress=progress, desc="linking",
            concurrency=concurrency, stats=stats, warn=warn, done=done)
        for i, _ in enumerate(records, 1):
            if i % 20 == 0:
                save_meta()
    finally:
        save_meta()
    wanted = {it.id if isinstance(it, Mention) else (it.record or "?") for it in items}
    recs, seen = [], set()
    for r in read_results(results_path, warn=None):  # damaged lines were reported on resume
        if (engine or r["id"] in wanted) and r["id"] not in seen:
            seen.add(r["id"])
            recs.append(r)
    m = M.compute(recs, wall_s=meta["wall_s"], max_vif=max(settings.vif_cap, 1), segment=stats)
    m["cache_failures"] = M.cache_failures(store.failures(since))
    if stats.labels_unmatched is not None:
        m["labels_unmatched"] = stats.labels_unmatched
    m["info"] = info
    if settings.kb:
        m["kb"] = kb_metrics(recs, settings.kb)
        m["kb"]["top_k"] = settings.kb_top_k
    (out / "metrics.json").write_text(json.dumps(m, indent=2, default=str))
    write_png(m, out / "stages.png", title=f"{Path(str(data)).name}: top-1 by stage "
              f"({m['labelled']} mentions, {info['strategy']})")
    report = markdown(m, info)
    if "kb" in m:
        report += "\n## Knowledge base\n\n" + "\n".join(f"- {x}" for x in kb_lines(m["kb"])) + "\n"
    (out / "report.md").write_text(report)
    return m
