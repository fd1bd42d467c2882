"""Fit the retrieval ranker on labelled data, and measure it leave-one-dataset-out.

    python -m i2cr.eval.calibrate DATA LABELS [DATA LABELS ...] --out weights.json [--lodo report.json]

Each DATA LABELS pair is a dataset in any format ``i2cr link`` reads; a mention's dataset is its
id's prefix before ``::`` (``aquaint::doc::3``), else the file's name. The weights (both models,
NIL model and threshold, ICR's α; see :mod:`i2cr.ranker.model`) are fitted on every mention given
and written to ``--out``; point ``--set ranker_weights=...`` at the file. ``--lodo`` also fits on
every dataset but one and scores the one left out, for each dataset, with and without priors:
what a new dataset of your own would get. Candidates are shuffled (``--seed``) as evaluation does,
so no tie is broken by a file's order.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..data import DataError, Mention, load_labels, load_mentions, shuffle_candidates
from ..graph import Context
from ..graph.resources import embedder
from ..ranker import Ranker
from ..ranker.fit import build_examples, dataset_of, fit, leave_one_dataset_out, pooled
from .runner import Named, check_input


def load_sets(pairs: list[str], seed: int, prog: str = "calibrate") -> tuple[list[Mention], list[str]]:
    if len(pairs) % 2:
        raise SystemExit(f"{prog}: give DATA LABELS in pairs")
    mentions: list[Mention] = []
    datasets: list[str] = []
    bad = Named(lambda s: print(s, file=sys.stderr),
                lambda it: f"{prog}: warning: {it}; left out of the fit",
                lambda n: f"{prog}: {n} bad record(s) (data or gold label) left out of the fit")
    for data, labels in zip(pairs[::2], pairs[1::2], strict=True):
        gold = load_labels(labels)  # (the checks of every driver: labels naming no record, ids)
        items, _ = check_input(load_mentions(data, gold, strict=False), gold, named=False,
                               warn=lambda s: print(f"{prog}: warning: {s}", file=sys.stderr),
                               use="fitted")
        for it in items:  # a bad record (its data, its gold label, a repeated id) is left out
            if isinstance(it, DataError):
                bad.name(it)
        got = [m for m in shuffle_candidates(items, seed) if isinstance(m, Mention)]
        mentions += got
        datasets += [dataset_of(m, Path(data).stem) for m in got]
    bad.end()
    return mentions, datasets


def table(lodo: dict[str, Any]) -> str:
    """The leave-one-dataset-out figures as a Markdown table."""
    lines = ["| left out | mentions | top-1, gold a candidate, prior | same, no prior | "
             "NIL counted, prior | NIL P / R / F1 (prior) | last round (clues), no prior | "
             "top-1, 30% of priors withheld |",
             "|---|---|---|---|---|---|---|---|"]

    def pct(x: Any) -> str:
        return "—" if x is None else f"{100 * x:.1f}"

    for d, r in lodo.items():
        p, n = r.get("prior"), r["no_prior"]
        src = p or n
        lines.append(f"| {d} | {n['mentions']} | {pct(p and p['top1_gold_in_candidates'])} | "
                     f"{pct(n['top1_gold_in_candidates'])} | {pct(src['accuracy_nil_counted'])} | "
                     f"{pct(src['nil_precision'])} / {pct(src['nil_recall'])} / "
                     f"{src['nil_f1']:.2f} | {pct(n['last_round_top1_gold_in_candidates'])} | "
                     f"{pct(p and p.get('top1_priors_withheld'))} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pairs", nargs="+", metavar="DATA LABELS")
    ap.add_argument("--out", required=True, help="where to write the fitted weights (JSON)")
    ap.add_argument("--lodo", metavar="REPORT.json",
                    help="also measure leave-one-dataset-out and write the figures here")
    ap.add_argument("--folds", type=int, default=5, help="folds for held-out NIL and α fitting")
    ap.add_argument("--seed", type=int, default=0, help="candidate shuffle seed")
    ap.add_argument("--l2", type=float, default=0.001,
                    help="L2 penalty on standardised weights (0.001: best pooled LODO on dev)")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="a setting of the context schema (e.g. embedder=...)")
    args = ap.parse_args(argv)
    settings = Context.from_overrides({**dict(kv.split("=", 1) for kv in args.set),
                                       "tes_strategy": "retrieval", "nil_threshold": "none"})
    mentions, datasets = load_sets(args.pairs, args.seed)
    print(f"calibrate: {len(mentions)} mentions from {len(set(datasets))} datasets; embedding ...",
          file=sys.stderr)
    ranker = Ranker(embedder(settings), None, settings)
    examples = build_examples(mentions, ranker, settings.tool_names, datasets)
    kw = {"l2": args.l2, "folds": args.folds, "reflections": settings.max_reflections,
          "embedder": settings.embedder}
    note = "fitted on " + ", ".join(sorted(set(datasets)))
    spec = fit(examples, note=note, **kw)
    spec["shuffle_seed"] = args.seed
    if args.lodo:
        print("calibrate: leave-one-dataset-out ...", file=sys.stderr)
        lodo = leave_one_dataset_out(examples, **kw)
        groups = sorted(lodo)
        with_prior = [d for d in groups if "prior" in lodo[d]]
        report = {"by_dataset": lodo,
                  "pooled_with_prior": pooled(lodo, with_prior, "prior") if with_prior else None,
                  "pooled_no_prior_same_sets": pooled(lodo, with_prior, "no_prior") if with_prior else None}
        spec["leave_one_dataset_out"] = report
        Path(args.lodo).write_text(json.dumps(report, indent=2) + "\n")
        print(table(lodo))
        print(json.dumps({k: report[k] for k in ("pooled_with_prior", "pooled_no_prior_same_sets")},
                         indent=2))
    Path(args.out).write_text(json.dumps(spec, indent=2) + "\n")
    print(f"weights written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
