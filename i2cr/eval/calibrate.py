"""Fit the retrieval ranker's weights on a labelled split, with grouped cross-validation.

    python -m i2cr.eval.calibrate DATA.json LABELS.json [--out i2cr/ranker_weights.json]

Rows are (mention, candidate) pairs, built once per round the ranker meets in the graph: text
only, each single visual clue ('round' clue mode), and the clues gathered so far in the fixed tool
order ('cumulative'). The model is a conditional logit (a softmax over each mention's candidates,
L2-penalised, on standardised features): it is trained for exactly what TES does, picking one
candidate among a mention's candidates. Folds group by mention, so no mention is in both the
training and the held-out part; every figure reported is on held-out mentions. It also fits:

- ``fit_model``: a logistic model of whether a candidate is the referent from its own fit only
  (embedding similarity, name match), over every candidate of round 1; NIL is answered (where
  allowed) when the ranker's best candidate is below ``nil_threshold`` by it;
- ``icr_threshold``: from the held-out scores, the ICR cut α for retrieval TES: the grid value
  with the best held-out round-1
  accuracy after ICR's re-choices (ties go to the higher α: ICR keeps its role where
  it costs nothing held out).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..data import Mention, load_mentions, shuffle_candidates
from ..graph import Context
from ..graph.resources import embedder
from ..graph.tes import occupation_sims
from ..graph.texts import clue_sequence, entity_text, query_for
from ..ranker import FEATURES, FIT_INPUTS, features, fit_inputs

ALPHA_GRID = [0.0, 0.1, 0.2, 0.25, 0.3, 0.35, 0.4]


def round_clue_sets(m: Mention, ctx: Context) -> list[tuple[str, list[dict[str, Any]]]]:
    """(kind, clues) for every round the ranker can meet for this mention."""
    seq = clue_sequence(m.clues, ctx.tool_names)
    out = [("text", [])]
    out += [(c["tool"], [c]) for c in seq]
    out += [(f"cumulative_{i + 1}", seq[: i + 1]) for i in range(1, len(seq))]
    return out


def build_rows(mentions: list[Mention], ctx: Context):
    """Per round: (mention index, kind, feature matrix, gold vector, query-entity sims)."""
    emb = embedder(ctx)
    emb.warm(entity_text(c.to_dict()) for m in mentions for c in m.candidates)
    rows = []
    for gi, m in enumerate(mentions):
        cands = [c.to_dict() for c in m.candidates]
        ents = [entity_text(c) for c in cands]
        gold = np.asarray([int(c["name"].lower() == (m.label or "").lower()) for c in cands])
        occ = occupation_sims(emb, m.context, cands, ctx)
        for kind, clues in round_clue_sets(m, ctx):
            sims = emb.similarity(query_for(m.mention, m.context, clues, ctx), ents)
            F = features(m.mention, m.context, " ".join(c["text"] for c in clues), cands, sims, occ)
            rows.append((gi, kind, F, gold, np.asarray(sims)))
    return rows


def fit_clogit(F: list[np.ndarray], Y: list[np.ndarray], l2: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Conditional logit on standardised features; returns (weights, mean, scale)."""
    import torch

    X = np.vstack(F)
    mu, sd = X.mean(0), X.std(0) + 1e-9
    keep = [i for i, y in enumerate(Y) if y.sum() > 0]  # mentions whose gold is a candidate
    Xt = torch.tensor((X - mu) / sd, dtype=torch.float64)
    y = torch.tensor(np.concatenate(Y), dtype=torch.float64)
    gid = torch.tensor(np.concatenate([np.full(len(f), i) for i, f in enumerate(F)]))
    G = len(F)
    has = torch.zeros(G, dtype=torch.bool)
    has[keep] = True
    w = torch.zeros(X.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        s = Xt @ w
        mx = torch.full((G,), -1e30, dtype=torch.float64).scatter_reduce(0, gid, s, "amax")
        z = torch.zeros(G, dtype=torch.float64).index_add_(0, gid, torch.exp(s - mx[gid]))
        pos = torch.zeros(G, dtype=torch.float64).index_add_(0, gid, s * y)
        loss = -(pos - mx - torch.log(z))[has].mean() + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy(), mu, sd


def icr_accuracy(scores: np.ndarray, sims: np.ndarray, gold: np.ndarray, alpha: float,
                 reflections: int) -> int:
    """Round 1 as the graph runs it: TES takes the best-scoring candidate left; ICR rejects it
    below α, up to ``reflections`` times; if every try fails the best-ICR try is kept."""
    order = list(np.argsort(-scores))
    tried = []
    for c in order[: reflections + 1]:
        tried.append(c)
        if sims[c] >= alpha:
            return int(gold[c])
    return int(gold[max(tried, key=lambda t: sims[t])])


def main(argv=None) -> int:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("labels")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "ranker_weights.json"))
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0, help="candidate shuffle seed")
    ap.add_argument("--l2", type=float, default=0.01, help="L2 penalty on standardised weights")
    args = ap.parse_args(argv)
    ctx = Context(tes_strategy="retrieval")
    # shuffled as in evaluation, so that no tie can be broken by the raw file's order
    mentions = shuffle_candidates(list(load_mentions(args.data, args.labels)), args.seed)
    rows = build_rows(mentions, ctx)
    groups = np.asarray([r[0] for r in rows])
    held = [np.zeros(0)] * len(rows)
    for tr, te in GroupKFold(args.folds).split(groups, groups, groups):
        w, mu, sd = fit_clogit([rows[i][2] for i in tr], [rows[i][3] for i in tr], args.l2)
        for i in te:
            held[i] = ((rows[i][2] - mu) / sd) @ w

    def acc(kind_pred) -> dict[str, Any]:
        sel = [i for i, r in enumerate(rows) if kind_pred(r[1])]
        ok = sum(int(rows[i][3][int(np.argmax(held[i]))]) for i in sel)
        return {"accuracy": round(ok / max(len(sel), 1), 4), "rounds": len(sel)}

    cv = {"text_only": acc(lambda k: k == "text")}
    for tool in ctx.tool_names:
        cv[tool] = acc(lambda k, t=tool: k == t)
    cv["cumulative"] = acc(lambda k: k.startswith("cumulative_"))
    last = {}
    for i, r in enumerate(rows):  # each mention's round with the most clues
        last[r[0]] = i
    cv["all_clues_last_round"] = {
        "accuracy": round(float(np.mean([rows[i][3][int(np.argmax(held[i]))] for i in last.values()])), 4),
        "rounds": len(last)}
    text_rows = [i for i, r in enumerate(rows) if r[1] == "text"]
    base = {
        "embedding_only": round(float(np.mean([rows[i][3][int(np.argmax(rows[i][4]))] for i in text_rows])), 4),
        "wratio_only": round(float(np.mean([rows[i][3][int(np.argmax(rows[i][2][:, FEATURES.index("wratio")]))]
                                            for i in text_rows])), 4)}
    # calibration of the top candidate's probability, on held-out scores of round 1
    # the fit model for NIL: every candidate of round 1, on its own fit only
    fit = LogisticRegression(max_iter=2000).fit(np.vstack([fit_inputs(rows[i][2]) for i in text_rows]),
                                                np.concatenate([rows[i][3] for i in text_rows]))
    # ICR's α for retrieval TES, on held-out scores of round 1
    sweep = {str(a): round(sum(icr_accuracy(held[i], rows[i][4], rows[i][3], a, ctx.max_reflections)
                               for i in text_rows) / len(text_rows), 4) for a in ALPHA_GRID}
    best_alpha = min(ALPHA_GRID, key=lambda a: (-sweep[str(a)], -a))
    w, mu, sd = fit_clogit([r[2] for r in rows], [r[3] for r in rows], args.l2)
    coef = w / sd  # standardisation folded in: a constant shift does not change a softmax
    spec = {"features": FEATURES, "coef": [round(float(c), 6) for c in coef],
            "model": "conditional logit (softmax over a mention's candidates)",
            "fit_model": {"inputs": FIT_INPUTS, "coef": [round(float(c), 6) for c in fit.coef_[0]],
                          "intercept": round(float(fit.intercept_[0]), 6)},
            "icr_threshold": {"value": best_alpha, "embedder": ctx.embedder,
                              "held_out_round1_accuracy_by_alpha": sweep},
            "embedder": ctx.embedder, "fitted_on": Path(args.data).name, "mentions": len(mentions),
            "folds": args.folds, "l2": args.l2, "shuffle_seed": args.seed, "cv_accuracy": cv, "baselines_text_only": base,
            "date": dt.date.today().isoformat()}
    Path(args.out).write_text(json.dumps(spec, indent=2) + "\n")
    json.dump({k: spec[k] for k in ("cv_accuracy", "baselines_text_only", "icr_threshold",
                                    "fit_model")}, sys.stdout, indent=2)
    print(f"\nweights written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
