"""Held-out accuracy of the whole offline pipeline, not only of the ranker.

    python -m i2cr.eval.crossval DATA LABELS [DATA LABELS ...] --out-dir runs/lodo [--by dataset]

The shipped ranker weights were fitted on the dev splits, so ``i2cr eval`` there is an in-sample
figure. Here each part's mentions run through the full graph (TES, ICR, IAV, VIF, final) with
weights (both models, NIL model and threshold, ICR's α) fitted on the other parts only:

- ``--by dataset`` (the default with two or more datasets): leave one dataset out, what a user's
  new dataset gets;
- ``--by fold``: grouped folds over mentions (``--folds``), what a new split of the same
  datasets gets.

Each part's results and report go to ``--out-dir/<part>/``, and a summary table to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..data import Mention
from ..graph import Context
from ..graph.resources import embedder
from ..ranker import Ranker
from ..ranker.fit import build_examples, fit
from . import metrics as M
from .calibrate import load_sets
from .report import markdown
from .runner import run


def parts(mentions: list[Mention], datasets: list[str], by: str, folds: int) -> dict[str, list[int]]:
    if by == "dataset":
        out: dict[str, list[int]] = {}
        for i, d in enumerate(datasets):
            out.setdefault(d, []).append(i)
        return out
    return {f"fold{k}": [i for i in range(len(mentions)) if i % folds == k] for k in range(folds)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pairs", nargs="+", metavar="DATA LABELS")
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--by", choices=["dataset", "fold"], default=None,
                    help="hold out one dataset at a time (default with 2+ datasets) or one fold")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0, help="candidate shuffle seed")
    ap.add_argument("--l2", type=float, default=0.001, help="L2 penalty (as calibrate)")
    ap.add_argument("--strip-prior", action="store_true",
                    help="remove every candidate's prior before linking (measures the no-prior model)")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="any setting of the context schema, for the graph runs")
    args = ap.parse_args(argv)
    overrides = dict(kv.split("=", 1) for kv in args.set)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mentions, datasets = load_sets(args.pairs, args.seed, "crossval")
    if args.strip_prior:
        from dataclasses import replace

        mentions = [replace(m, candidates=[replace(c, prior=None) for c in m.candidates])
                    for m in mentions]
    by = args.by or ("dataset" if len(set(datasets)) > 1 else "fold")
    base = Context.from_overrides({**overrides, "tes_strategy": "retrieval"})
    examples = build_examples(mentions, Ranker(embedder(base), None, base), base.tool_names,
                              datasets)
    summary = {}
    for name, idx in parts(mentions, datasets, by, args.folds).items():
        held = set(idx)
        spec = fit([e for e in examples if e.mention not in held], l2=args.l2, folds=args.folds,
                   reflections=base.max_reflections, embedder=base.embedder,
                   note=f"fitted without {name}")
        pdir = out / name
        pdir.mkdir(parents=True, exist_ok=True)
        wpath = pdir / "weights.json"
        wpath.write_text(json.dumps(spec, indent=2))
        settings = Context.from_overrides({**overrides, "tes_strategy": "retrieval",
                                           "ranker_weights": str(wpath)})
        t0 = time.perf_counter()
        recs = list(run([mentions[i] for i in idx], settings, out=pdir / "results.jsonl",
                        desc=f"{name} held out"))
        m = M.compute(recs, wall_s=time.perf_counter() - t0, max_vif=len(base.tool_names))
        info = {"held_out": name, "by": by, "strip_prior": args.strip_prior,
                "command": "python -m i2cr.eval.crossval " + " ".join(argv or sys.argv[1:])}
        m["info"] = info
        (pdir / "metrics.json").write_text(json.dumps(m, indent=2, default=str))
        (pdir / "report.md").write_text(markdown(m, info))
        summary[name] = {"mentions": len(recs), "accuracy": m["accuracy"],
                         "accuracy_non_nil_gold": m.get("accuracy_non_nil_gold"),
                         "nil": m.get("nil")}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
