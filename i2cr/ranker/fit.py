"""Fitting the ranker: its examples, the conditional logit, the NIL model and its threshold,
ICR's α, and leave-one-dataset-out figures.

An :class:`Example` is one mention's candidates in one round the ranker meets in the graph (text
only; each single visual clue; the clues gathered so far in the fixed tool order), built through
:meth:`Ranker.features`, so fitting sees exactly what TES sees. Every figure this module reports is
held out: folds group by mention (no mention on both sides), and :func:`leave_one_dataset_out`
fits on every other dataset, NIL model and threshold included, before scoring the one left out.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..data import Mention, same_entity
from .features import FEATURES, prior_share_columns
from .model import (
    FIT_INPUTS,
    MODELS,
    NIL_FEATURES,
    Ranker,
    link_probability,
    names_borne,
    nil_features,
    nil_rule,
    softmax,
)

SIM = FEATURES.index("sim")
PRIOR_COLUMNS = [FEATURES.index(k) for k in ("prior", "prior_top", "prior_missing")]
WITHHELD_SHARE = 0.3  # each candidate's chance of losing its prior in a withheld copy
WITHHELD_WEIGHT = 0.5  # a withheld copy's vote, against its mention's own
ALPHA_GRID = [0.0, 0.1, 0.2, 0.25, 0.3, 0.35, 0.4]
# NIL thresholds whose held-out accuracy is this close to the best count as ties, and ties go to the
# lowest (NIL answered least): the accuracy curve is flat near its top, and what counts as NIL
# differs by dataset, so a NIL answer the fit does not clearly need costs on data it has not seen.
# The accuracy compared is the curve smoothed over each grid value and its two neighbours: on the
# flat top, a few mentions' wiggle at one grid value moved the raw curve's choice by 0.15
NIL_TOLERANCE = 0.0025
NIL_GRID = [round(x, 2) for x in np.arange(0.0, 0.96, 0.05)]


def dataset_of(m: Mention, default: str) -> str:
    """The dataset a mention comes from: its id's prefix before '::', else ``default``."""
    return m.id.split("::", 1)[0] if "::" in m.id else default


@dataclass
class Example:
    mention: int  # index into the mention list
    dataset: str
    kind: str  # 'text', a tool name, or 'cumulative_<k>'
    F: np.ndarray
    gold: np.ndarray  # 1 for the gold candidate
    sims: np.ndarray  # query-entity cosines (for ICR's replay)
    allow_nil: bool
    is_nil: bool  # the gold is not among the candidates
    has_prior: bool = False
    text: str = ""  # the mention as written
    nil_rule: str | None = None  # why p_link is 0 whatever the weights (model.nil_rule), or None

    def X(self, model: str) -> np.ndarray:
        if model == "prior":
            return self.F
        F = self.F.copy()
        F[:, PRIOR_COLUMNS] = 0.0
        return F


def clue_sets(m: Mention, tool_names: Sequence[str]
              ) -> list[tuple[str, Sequence[Mapping[str, Any]]]]:
    """(kind, clues) for every round the ranker can meet for this mention."""
    from ..graph.texts import clue_sequence

    seq = clue_sequence(m.clues, tool_names)
    out: list[tuple[str, Sequence[Mapping[str, Any]]]] = [("text", [])]
    out += [(c["tool"], [c]) for c in seq]
    out += [(f"cumulative_{i + 1}", seq[: i + 1]) for i in range(1, len(seq))]
    return out


def build_examples(mentions: Sequence[Mention], ranker: Ranker, tool_names: Sequence[str],
                   datasets: Sequence[str], chunk: int = 256) -> list[Example]:
    """Examples for every mention with a label. Texts are embedded in batches a chunk of mentions
    at a time (the embedder keeps only a bounded number of queries)."""
    labelled = [(i, m) for i, m in enumerate(mentions) if m.label is not None and m.candidates]
    out = []
    for start in range(0, len(labelled), chunk):
        part = labelled[start:start + chunk]
        ents: list[str] = []
        queries: list[str] = []
        for _, m in part:
            ents += ranker.entity_texts([c.to_dict() for c in m.candidates])
            queries += ranker.queries(m.mention, m.context, [c for _, c in clue_sets(m, tool_names)],
                                      m.document)
        ranker.embedder.warm(ents)
        ranker.embedder.warm(queries, query=True)
        for i, m in part:
            cands = [c.to_dict() for c in m.candidates]
            gold = np.asarray([int(same_entity(c["name"], m.label)) for c in cands])
            prior = any(c.get("prior") is not None for c in cands)
            rule = nil_rule(m.mention, names_borne(cands), m.document)
            for kind, clues in clue_sets(m, tool_names):
                F = ranker.features(m.mention, m.context, clues, cands, document=m.document)
                out.append(Example(i, datasets[i], kind, F, gold, F[:, SIM].copy(), m.allow_nil,
                                   is_nil=not gold.any(), has_prior=prior, text=m.mention,
                                   nil_rule=rule))
    return out


def fit_clogit(F: Sequence[np.ndarray], Y: Sequence[np.ndarray], l2: float,
               weights: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Conditional logit on standardised features; returns (weights, mean, scale). Mentions
    whose gold is not a candidate carry no ranking signal and are left out of the loss; each
    group's loss counts ``weights[g]`` (default 1)."""
    import torch

    X = np.vstack(F)
    mu, sd = X.mean(0), X.std(0) + 1e-9
    keep = [i for i, y in enumerate(Y) if y.sum() > 0]
    Xt = torch.tensor((X - mu) / sd, dtype=torch.float64)
    y = torch.tensor(np.concatenate(Y), dtype=torch.float64)
    gid = torch.tensor(np.concatenate([np.full(len(f), i) for i, f in enumerate(F)]))
    G = len(F)
    has = torch.zeros(G, dtype=torch.bool)
    has[keep] = True
    gw = torch.tensor(np.ones(G) if weights is None else np.asarray(weights, dtype=np.float64))
    gw = gw * has
    gw = gw / gw.sum().clamp(min=1e-12)
    w = torch.zeros(X.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        s = Xt @ w
        mx = torch.full((G,), -1e30, dtype=torch.float64).scatter_reduce(0, gid, s, "amax")
        z = torch.zeros(G, dtype=torch.float64).index_add_(0, gid, torch.exp(s - mx[gid]))
        pos = torch.zeros(G, dtype=torch.float64).index_add_(0, gid, s * y)
        loss = -((pos - mx - torch.log(z)) * gw).sum() + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy(), mu, sd


def withhold_priors(F: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """A copy of one round's features with the priors of a random part of the candidates withheld
    (as a KB or generator that knows the prior of some candidates only gives them), the others'
    share and top recomputed among themselves; None when there is nothing to withhold."""
    n = len(F)
    if n < 2:
        return None
    drop = rng.random(n) < WITHHELD_SHARE
    if not drop.any() or drop.all():
        return None
    G = F.copy()  # a share is its prior on the mention's scale, so the rule reads it back as one
    shares = [None if d else float(v) for v, d in zip(F[:, PRIOR_COLUMNS[0]], drop, strict=True)]
    G[:, PRIOR_COLUMNS] = np.asarray(prior_share_columns(shares)).T
    return G


def fit_coef(examples: Sequence[Example], model: str, l2: float) -> np.ndarray:
    """Raw-feature weights (standardisation folded in: a constant shift does not move a softmax).
    The ``prior`` model also learns from withheld copies (:func:`withhold_priors`) of each
    mention's text round, so that ``prior_missing`` has a weight."""
    rounds: dict[int, int] = {}
    for e in examples:
        rounds[e.mention] = rounds.get(e.mention, 0) + 1
    Fs = [e.X(model) for e in examples]
    Ys = [e.gold for e in examples]
    ws = [1.0 / rounds[e.mention] for e in examples]  # one vote per mention
    if model == "prior":
        rng = np.random.default_rng(0)
        for e in examples:
            G = withhold_priors(e.F, rng) if e.kind == "text" and e.has_prior else None
            if G is not None:
                Fs.append(G)
                Ys.append(e.gold)
                ws.append(WITHHELD_WEIGHT)
    w, _, sd = fit_clogit(Fs, Ys, l2, ws)
    return w / sd


def held_out_probs(examples: Sequence[Example], model: str, l2: float, folds: int
                   ) -> list[np.ndarray]:
    """Each example's softmax from weights fitted on the other folds (grouped by mention)."""
    from sklearn.model_selection import GroupKFold

    groups = np.asarray([e.mention for e in examples])
    out: list[np.ndarray] = [np.zeros(0)] * len(examples)
    k = min(folds, len(set(groups.tolist())))
    for tr, te in GroupKFold(k).split(groups, groups, groups):
        coef = fit_coef([examples[i] for i in tr], model, l2)
        for i in te:
            out[i] = softmax(examples[i].X(model) @ coef)
    return out


def fit_own(examples: Sequence[Example], model: str) -> dict[str, Any] | None:
    """The candidate-level fit model (:func:`~.model.own_fit`): a logistic model over every
    candidate of round 1, gold against the rest, on :data:`~.model.FIT_INPUTS`."""
    from sklearn.linear_model import LogisticRegression

    cols = [FEATURES.index(k) for k in FIT_INPUTS]
    text = [e for e in examples if e.kind == "text"]
    if not text:
        return None
    X = np.vstack([e.X(model)[:, cols] for e in text])
    y = np.concatenate([e.gold for e in text])
    if len(set(y.tolist())) < 2:
        return None
    mu, sd = X.mean(0), X.std(0)
    sd = np.where(sd < 1e-6, 1.0, sd)
    lr = LogisticRegression(max_iter=5000).fit((X - mu) / sd, y)
    coef = lr.coef_[0] / sd
    return {"inputs": FIT_INPUTS, "coef": [round(float(c), 6) for c in coef],
            "intercept": round(float(lr.intercept_[0] - np.dot(coef, mu)), 6)}


def nil_rows(examples: Sequence[Example], probs: Sequence[np.ndarray], model: str,
             fit: dict[str, Any] | None = None):
    """(X, y) for the NIL model from round-1 examples: y=1 where the best candidate is the gold,
    0 where the gold is not a candidate (a mention whose best is another candidate says nothing
    about NIL and is left out)."""
    X, y = [], []
    for e, p in zip(examples, probs, strict=True):
        if e.kind != "text" or not len(p):
            continue
        top_ok = bool(e.gold[int(np.argmax(p))])
        if not top_ok and not e.is_nil:
            continue
        X.append(nil_features(e.text, p, e.X(model), fit))
        y.append(int(top_ok))
    return np.asarray(X).reshape(-1, len(NIL_FEATURES)), np.asarray(y)


def fit_nil(X: np.ndarray, y: np.ndarray, fit: dict[str, Any] | None = None
            ) -> dict[str, Any] | None:
    from sklearn.linear_model import LogisticRegression

    if len(set(y.tolist())) < 2:
        return None
    mu, sd = X.mean(0), X.std(0)
    sd = np.where(sd < 1e-6, 1.0, sd)  # a constant input: left as it is
    lr = LogisticRegression(max_iter=5000, C=1.0).fit((X - mu) / sd, y)
    return {"inputs": NIL_FEATURES, "mean": [round(float(v), 6) for v in mu],
            "scale": [round(float(v), 6) for v in sd],
            "coef": [round(float(v), 6) for v in lr.coef_[0]],
            "intercept": round(float(lr.intercept_[0]), 6), "fit": fit}


def outcome(e: Example, probs: np.ndarray, plink: float, threshold: float) -> tuple[bool, bool]:
    """(answered NIL, correct) for a round-1 example, NIL only where the sample allows it."""
    said_nil = e.allow_nil and plink < threshold
    if said_nil:
        return True, e.is_nil
    return False, bool(len(probs) and e.gold[int(np.argmax(probs))])


def choose_nil_threshold(examples: Sequence[Example], probs: Sequence[np.ndarray],
                         plinks: Sequence[float]) -> tuple[float, dict[str, float]]:
    """The lowest grid value whose accuracy (NIL counted, over the samples that allow NIL;
    smoothed, :func:`smooth`) is within :data:`NIL_TOLERANCE` of the best (NIL is answered
    less), and the raw accuracy at each grid value. 0 when no sample allows NIL."""
    idx = [i for i, e in enumerate(examples) if e.kind == "text" and e.allow_nil]
    if not idx or not any(examples[i].is_nil for i in idx):
        return 0.0, {}
    acc = [float(np.mean([outcome(examples[i], probs[i], plinks[i], t)[1] for i in idx]))
           for t in NIL_GRID]
    smoothed = smooth(acc)
    top = max(smoothed)
    best = min(t for t, a in zip(NIL_GRID, smoothed, strict=True) if a >= top - NIL_TOLERANCE)
    return float(best), {str(t): round(a, 4) for t, a in zip(NIL_GRID, acc, strict=True)}


def smooth(values: Sequence[float]) -> list[float]:
    """Each value averaged with its two neighbours (the end values count their own twice)."""
    v = np.pad(np.asarray(values, dtype=np.float64), 1, mode="edge")
    return [float(x) for x in (v[:-2] + v[1:-1] + v[2:]) / 3]


def icr_replay(scores: np.ndarray, sims: np.ndarray, gold: np.ndarray, alpha: float,
               reflections: int) -> int:
    """Round 1 as the graph runs it: TES takes the best-scoring candidate left; ICR rejects it
    below α, up to ``reflections`` times; if every try fails the best-ICR try is kept."""
    order = list(np.argsort(-scores, kind="stable"))
    tried = []
    for c in order[: reflections + 1]:
        tried.append(c)
        if sims[c] >= alpha:
            return int(gold[c])
    return int(gold[max(tried, key=lambda t: sims[t])])


def fit_model(examples: Sequence[Example], model: str, l2: float, folds: int) -> dict[str, Any]:
    """One model (``prior`` or ``no_prior``): weights, the NIL model and its threshold from
    held-out probabilities. ``prior`` is fitted on the examples with priors only (it is used only
    where there are priors), ``no_prior`` on every example with its priors stripped."""
    if model == "prior" and any(e.has_prior for e in examples):
        examples = [e for e in examples if e.has_prior]
    coef = fit_coef(examples, model, l2)
    held = held_out_probs(examples, model, l2, folds)
    own = fit_own(examples, model)
    X, y = nil_rows(examples, held, model, own)
    nil = fit_nil(X, y, own)
    plinks = [link_probability(nil, e.text, p, e.X(model), e.nil_rule) if e.kind == "text" else 1.0
              for e, p in zip(examples, held, strict=True)]
    threshold, sweep = choose_nil_threshold(examples, held, plinks)
    text = [i for i, e in enumerate(examples) if e.kind == "text" and not e.is_nil]
    cv = {"round1_top1_gold_in_candidates": round(float(np.mean(
        [examples[i].gold[int(np.argmax(held[i]))] for i in text])), 4) if text else None,
        "nil_threshold_sweep": sweep}
    return {"coef": [round(float(c), 6) for c in coef], "nil": nil,
            "nil_threshold": threshold, "cv": cv, "_held": held}


def fit(examples: Sequence[Example], *, l2: float = 0.001, folds: int = 5,
        reflections: int = 3, embedder: str = "", note: str = "") -> dict[str, Any]:
    """A whole weights spec: both models, ICR's α (held-out round-1 accuracy after ICR's
    re-choices, over every example; ties to the higher α)."""
    models = {m: fit_model(examples, m, l2, folds) for m in MODELS}
    held = models["no_prior"]["_held"]
    text = [i for i, e in enumerate(examples) if e.kind == "text" and not e.is_nil]
    sweep = {str(a): round(sum(icr_replay(np.log(held[i] + 1e-12), examples[i].sims,
                                          examples[i].gold, a, reflections)
                               for i in text) / max(len(text), 1), 4) for a in ALPHA_GRID}
    alpha = min(ALPHA_GRID, key=lambda a: (-sweep[str(a)], -a))
    for m in models.values():
        m.pop("_held")
    return {"features": FEATURES, "nil_features": NIL_FEATURES,
            "model": "conditional logit (softmax over a mention's candidates) + logistic NIL",
            "models": models,
            "icr_threshold": {"value": alpha, "embedder": embedder,
                              "held_out_round1_accuracy_by_alpha": sweep},
            "embedder": embedder, "l2": l2, "folds": folds, "note": note,
            "datasets": sorted({e.dataset for e in examples}),
            "mentions": len({e.mention for e in examples}),
            "date": dt.date.today().isoformat()}


def evaluate(examples: Sequence[Example], spec: dict[str, Any], model: str) -> dict[str, Any]:
    """Round-1 figures of a spec on examples: top-1 where the gold is a candidate, accuracy with
    NIL counted, NIL precision / recall / F1, and the last round's top-1 (every clue)."""
    coef = np.asarray(spec["models"][model]["coef"])
    nil = spec["models"][model]["nil"]
    t = spec["models"][model]["nil_threshold"]
    text = [e for e in examples if e.kind == "text"]
    ok_in = ok_all = tp = said = gold_nil = 0
    for e in text:
        X = e.X(model)
        probs = softmax(X @ coef)
        said_nil, correct = outcome(e, probs, link_probability(nil, e.text, probs, X, e.nil_rule), t)
        ok_all += correct
        if not e.is_nil:
            ok_in += bool(e.gold[int(np.argmax(probs))])
        said += said_nil
        gold_nil += e.is_nil and e.allow_nil
        tp += said_nil and e.is_nil
    n_in = sum(not e.is_nil for e in text)
    last: dict[int, Example] = {}
    for e in examples:
        last[e.mention] = e
    lr = [bool(e.gold[int(np.argmax(e.X(model) @ coef))]) for e in last.values() if not e.is_nil]
    p = tp / said if said else 0.0
    r = tp / gold_nil if gold_nil else 0.0
    return {"mentions": len(text), "gold_in_candidates": n_in,
            "top1_gold_in_candidates": round(ok_in / max(n_in, 1), 4),
            "accuracy_nil_counted": round(ok_all / max(len(text), 1), 4),
            "last_round_top1_gold_in_candidates": round(float(np.mean(lr)), 4) if lr else None,
            "nil_gold": gold_nil, "nil_answered": said,
            "nil_precision": round(p, 4), "nil_recall": round(r, 4),
            "nil_f1": round(2 * p * r / (p + r), 4) if p + r else 0.0}


def withheld_top1(examples: Sequence[Example], spec: dict[str, Any], seed: int = 1) -> float | None:
    """Round-1 top-1 of the ``prior`` model (gold a candidate) when the priors of a random part of
    each mention's candidates are withheld (:func:`withhold_priors`): what a KB that knows the
    prior of some entities only gets."""
    coef = np.asarray(spec["models"]["prior"]["coef"])
    rng = np.random.default_rng(seed)
    hits = []
    for e in examples:
        if e.kind == "text" and e.has_prior and not e.is_nil:
            G = withhold_priors(e.F, rng)
            hits.append(bool(e.gold[int(np.argmax((e.F if G is None else G) @ coef))]))
    return round(float(np.mean(hits)), 4) if hits else None


def leave_one_dataset_out(examples: Sequence[Example], **fit_kw: Any) -> dict[str, Any]:
    """For each dataset: fit on all the others, evaluate on it (with and without priors, and with
    some priors withheld)."""
    out = {}
    for d in sorted({e.dataset for e in examples}):
        train = [e for e in examples if e.dataset != d]
        test = [e for e in examples if e.dataset == d]
        spec = fit(train, **fit_kw)
        res = {"no_prior": evaluate(test, spec, "no_prior")}
        if any(e.has_prior for e in test):
            res["prior"] = evaluate(test, spec, "prior")
            res["prior"]["top1_priors_withheld"] = withheld_top1(test, spec)
        out[d] = res
    return out


def pooled(results: dict[str, Any], datasets: Sequence[str], model: str) -> dict[str, Any]:
    """Figures over several left-out datasets together (weighted by mentions)."""
    rows = [results[d][model] for d in datasets if model in results[d]]
    n = sum(r["mentions"] for r in rows)
    n_in = sum(r["gold_in_candidates"] for r in rows)
    tp = sum(round(r["nil_precision"] * r["nil_answered"]) for r in rows)
    said = sum(r["nil_answered"] for r in rows)
    gold = sum(r["nil_gold"] for r in rows)
    p = tp / said if said else 0.0
    rc = tp / gold if gold else 0.0
    held = [r for r in rows if r.get("top1_priors_withheld") is not None]
    out = {"mentions": n,
           "top1_gold_in_candidates": round(sum(r["top1_gold_in_candidates"] * r["gold_in_candidates"]
                                                for r in rows) / max(n_in, 1), 4),
           "accuracy_nil_counted": round(sum(r["accuracy_nil_counted"] * r["mentions"]
                                             for r in rows) / max(n, 1), 4),
           "nil_precision": round(p, 4), "nil_recall": round(rc, 4),
           "nil_f1": round(2 * p * rc / (p + rc), 4) if p + rc else 0.0}
    if held:
        out["top1_priors_withheld"] = round(
            sum(r["top1_priors_withheld"] * r["gold_in_candidates"] for r in held)
            / max(sum(r["gold_in_candidates"] for r in held), 1), 4)
    return out

