"""Synthetic KB benchmark: build a KB of N generated entities and time queries.

    python -m i2cr.kb.bench --n 1000000 --dir /tmp/kb1m [--real-embedder]

By default the vectors are random unit vectors (a stand-in for the embedder, whose speed ``i2cr
bench`` measures on its own), so the numbers are those of the index: streamed build time, peak
RSS of the process, size on disk, and the fused query's p50/p95 (full-text + ANN). The generated
KB is written under ``--dir`` (never inside the repository); delete it afterwards.

On Linux the peak RSS is also given per build phase (``phase_peak_rss_mb``: ingest, compact,
fts, labels, ann; the kernel's high-water mark is reset as each phase starts), and ``ingest_rss_mb``
gives the RSS after the second batch and before the last one: a streamed ingestion keeps them
close whatever ``--n``.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..graph import Context, resources
from .index import KB, build

SYLLABLES = ["ka", "lo", "mi", "ra", "tu", "ven", "dor", "sel", "an", "bri", "cos", "del", "fa",
             "gor", "hal", "is", "jun", "ker", "lam", "mor", "nel", "ost", "pra", "quin"]


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()


def entities(n: int, seed: int = 0) -> Iterator[str]:
    """JSONL lines of ``n`` synthetic entities (names of two or three made-up words)."""
    rng = random.Random(seed)
    for i in range(n):
        name = " ".join(_word(rng) for _ in range(rng.randint(2, 3)))
        yield json.dumps({"id": f"E{i}", "name": name, "aliases": [name.split()[-1]],
                          "desc": f"{name} is a {rng.choice(['town', 'person', 'band', 'ship'])} "
                                  f"of {_word(rng)}.", "prior": rng.random()})


def _status_mb(key: str) -> float | None:
    """``VmRSS`` / ``VmHWM`` of this process in MB (None where /proc is not Linux's)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


class PhasePeaks:
    """The peak RSS of each build phase: called with a phase's name as it starts, it records the
    high-water mark of the phase before and resets it (``/proc/self/clear_refs``)."""

    def __init__(self) -> None:
        self.peaks: dict[str, float] = {}
        self.current: str | None = None
        self.ok = True

    def __call__(self, name: str) -> None:
        hwm = _status_mb("VmHWM")
        if self.current is not None and hwm is not None and self.ok:
            self.peaks[self.current] = hwm
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
        except OSError:
            self.ok = False
        self.current = None if name == "done" else name


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--dir", default=None, help="where the KB is built (default: a temp folder)")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--real-embedder", action="store_true",
                   help="embed with the ICR embedder (slow on CPU) instead of random vectors")
    args = p.parse_args(argv)
    root = Path(args.dir or tempfile.mkdtemp(prefix="i2cr-kb-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    src = root / "entities.jsonl"
    with src.open("w") as fh:
        for line in entities(args.n):
            fh.write(line + "\n")
    ctx = Context()
    if args.real_embedder:
        encode, name = resources.embedder(ctx).raw_encode, ctx.embedder
    else:
        rng = np.random.default_rng(0)

        def encode(texts):
            v = rng.standard_normal((len(texts), args.dim)).astype(np.float32)
            return v / np.linalg.norm(v, axis=1, keepdims=True)
        name = f"random-{args.dim}"
    rss: list[float | None] = []

    def encode_and_sample(texts):
        rss.append(_status_mb("VmRSS"))  # before this batch: after the previous one
        return encode(texts)

    peaks = PhasePeaks()
    t0 = time.perf_counter()
    meta = build(src, root / "kb", embedder=name, encode=encode_and_sample,
                 batch_size=args.batch_size, phase=peaks)
    build_s = time.perf_counter() - t0
    kb = KB(root / "kb")
    qrng = random.Random(1)
    names = [json.loads(line)["name"] for line in entities(min(args.n, 10_000))]
    lat = []
    for _ in range(args.queries):
        mention = qrng.choice(names).split()[qrng.randint(0, 1)]
        v = encode([mention])[0]
        t = time.perf_counter()
        kb.generate(mention, v, 10)
        lat.append(1000 * (time.perf_counter() - t))
    lat.sort()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # since the last reset
    out = {"entities": meta["entities"], "vectors": name, "build_s": round(build_s, 1),
           "peak_rss_mb": round(max([peak, *peaks.peaks.values()]), 1),
           "phase_peak_rss_mb": peaks.peaks if peaks.ok else None,
           "ingest_rss_mb": {"after_batch_2": rss[2] if len(rss) > 2 else None,
                             "before_last_batch": rss[-1] if rss else None},
           "size_mb": round(meta["size_bytes"] / 2 ** 20, 1), "ann": meta["ann"],
           "query_ms_p50": round(lat[len(lat) // 2], 2),
           "query_ms_p95": round(lat[int(len(lat) * 0.95)], 2), "kb_dir": str(root)}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
