"""Fit the retrieval ranker's weights on a labelled split, with grouped cross-validation.

    python -m i2cr.eval.calibrate DATA.json LABELS.json [--out i2cr/ranker_weights.json]

Rows are (mention, candidate) pairs, built once per round type the ranker meets in the graph:
text only, and with each single visual clue. Folds group by mention, so no mention is in both the
training and the held-out part; the reported accuracy is on held-out mentions only. The model is a
plain L2 logistic regression over a dozen features: little capacity to fit one split.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

import numpy as np

from ..data import load_mentions
from ..graph import Context
from ..graph.resources import embedder
from ..graph.texts import entity_text, icr_query
from ..ranker import FEATURES, features

CLUE_TYPES = [None, ("ocr", "OCR text"), ("caption", "Caption"), ("dense_captions", "Dense Captions"),
              ("tags", "Tags")]


def build_rows(mentions, ctx: Context):
    emb = embedder(ctx)
    emb.warm(entity_text(c.to_dict()) for m in mentions for c in m.candidates)
    X, y, group, kind = [], [], [], []
    for gi, m in enumerate(mentions):
        cands = [c.to_dict() for c in m.candidates]
        ents = [entity_text(c) for c in cands]
        for ci, ct in enumerate(CLUE_TYPES):
            clue = "" if ct is None else str((m.clues or {}).get(ct[1]) or "").strip()
            if ct is not None and not clue:
                continue
            clues = [{"tool": ct[0], "text": clue, "ok": True}] if clue else []
            q = icr_query(m.mention, m.context, clues, ctx.embed_query_prefix)
            sims = emb.similarity(q, ents)
            F = features(m.mention, m.context, clue, cands, sims)
            for j, c in enumerate(cands):
                X.append(F[j])
                y.append(int(c["name"].lower() == (m.label or "").lower()))
                group.append(gi)
                kind.append(ci)
    return np.asarray(X), np.asarray(y), np.asarray(group), np.asarray(kind)


def grouped_accuracy(scores, y, group, kind, k):
    ok = tot = 0
    for g in np.unique(group[kind == k]):
        sel = (group == g) & (kind == k)
        tot += 1
        ok += int(y[sel][np.argmax(scores[sel])] == 1)
    return ok / max(tot, 1), tot


def main(argv=None) -> int:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("labels")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "ranker_weights.json"))
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--C", type=float, default=1.0)
    args = ap.parse_args(argv)
    ctx = Context()
    mentions = [m for m in load_mentions(args.data, args.labels)]
    X, y, group, kind = build_rows(mentions, ctx)
    pred = np.zeros(len(y))
    for tr, te in GroupKFold(args.folds).split(X, y, group):
        model = LogisticRegression(C=args.C, max_iter=5000).fit(X[tr], y[tr])
        pred[te] = model.decision_function(X[te])
    cv = {}
    for ci, ct in enumerate(CLUE_TYPES):
        acc, n = grouped_accuracy(pred, y, group, kind, ci)
        cv["text_only" if ct is None else ct[0]] = {"accuracy": round(acc, 4), "mentions": n}
    base = {}
    for name, col in (("embedding_only", 0), ("wratio_only", FEATURES.index("wratio"))):
        base[name] = round(grouped_accuracy(X[:, col], y, group, kind, 0)[0], 4)
    model = LogisticRegression(C=args.C, max_iter=5000).fit(X, y)
    spec = {"features": FEATURES, "coef": [round(float(c), 6) for c in model.coef_[0]],
            "intercept": round(float(model.intercept_[0]), 6), "embedder": ctx.embedder,
            "fitted_on": Path(args.data).name, "mentions": len(mentions), "folds": args.folds,
            "C": args.C, "cv_accuracy": cv, "baselines_text_only": base,
            "date": dt.date.today().isoformat()}
    Path(args.out).write_text(json.dumps(spec, indent=2) + "\n")
    json.dump({"cv_accuracy": cv, "baselines_text_only": base,
               "coef": dict(zip(FEATURES, spec["coef"]))}, sys.stdout, indent=2)
    print(f"\nweights written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
