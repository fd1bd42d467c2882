"""Cross-validated accuracy of the whole offline pipeline, not only of the ranker.

    python -m i2cr.eval.crossval DATA.json LABELS.json --out-dir runs/cv [--folds 5]

The shipped ranker weights are fitted on the dev split, so ``i2cr eval`` on that split is an
in-sample figure. Here each fold's mentions run through the full graph (TES, ICR, IAV, VIF, final)
with ranker weights fitted on the other folds only, the way a held-out split would meet them. The
fold weights keep the shipped file's ICR α and NIL fit model (one grid value and five numbers,
chosen from held-out scores over the whole split). Results and the usual report go to ``--out-dir``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from ..data import load_mentions, shuffle_candidates
from ..graph import Context
from ..ranker import load_weights
from . import metrics as M
from .calibrate import build_rows, fit_clogit
from .report import markdown, write_png
from .runner import run


def main(argv=None) -> int:
    from sklearn.model_selection import GroupKFold

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("labels")
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0, help="candidate shuffle seed")
    ap.add_argument("--l2", type=float, default=0.01)
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="any setting of the context schema, for the graph runs")
    args = ap.parse_args(argv)
    overrides = dict(kv.split("=", 1) for kv in args.set)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mentions = shuffle_candidates(list(load_mentions(args.data, args.labels)), args.seed)
    rows = build_rows(mentions, Context(tes_strategy="retrieval"))
    groups = np.asarray([r[0] for r in rows])
    _, shipped = load_weights(None)
    results = out / "results.jsonl"
    results.unlink(missing_ok=True)
    t0 = time.perf_counter()
    recs = []
    for k, (tr, te) in enumerate(GroupKFold(args.folds).split(groups, groups, groups)):
        w, _, sd = fit_clogit([rows[i][2] for i in tr], [rows[i][3] for i in tr], args.l2)
        spec = dict(shipped, coef=[float(c) for c in w / sd], fitted_on=f"fold {k}: other folds")
        wpath = out / f"weights_fold{k}.json"
        wpath.write_text(json.dumps(spec, indent=2))
        held = sorted({int(groups[i]) for i in te})
        settings = Context.from_overrides({**overrides, "tes_strategy": "retrieval",
                                           "ranker_weights": str(wpath)})
        for rec in run([mentions[i] for i in held], settings, out=results, resume=True,
                       desc=f"fold {k + 1}/{args.folds}"):
            recs.append(rec)
    m = M.compute(recs, wall_s=time.perf_counter() - t0, max_vif=4)
    info = {"dataset": args.data, "labels": args.labels,
            "command": "python -m i2cr.eval.crossval " + " ".join(argv or sys.argv[1:]),
            "order": f"shuffled, seed {args.seed}", "strategy": "retrieval, "
            f"{args.folds}-fold cross-validated ranker weights", "llm": "none"}
    m["info"] = info
    (out / "metrics.json").write_text(json.dumps(m, indent=2, default=str))
    write_png(m, out / "stages.png", title=f"{Path(args.data).name}: cross-validated top-1 by stage")
    (out / "report.md").write_text(markdown(m, info))
    print(json.dumps({k: m[k] for k in ("accuracy", "stages") if k in m}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
