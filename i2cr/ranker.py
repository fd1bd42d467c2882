"""TES by retrieval: a candidate ranker with no LLM.

Each candidate gets a score from a logistic model over features a linker can compute offline
from what TES sees in that round (mention, context, and the round's visual clue):

- embedding similarity (the ICR embedder) of the query and the entity text, and its gap to the best;
- rapidfuzz similarities of mention and candidate name; whether the mention's words are in the name;
- how much of the name is in the context, and in the clue text (e.g. OCR);
- a popularity prior: the rank of the Wikidata QID number among the candidates (older, lower ids
  are on the whole better-known entities);
- agreement of gender words in the clue / context with the description's ``Sex:`` field, and of
  years in the context with the description's birth and death years.

The weights ship in ``ranker_weights.json``; ``python -m i2cr.eval.calibrate`` fits them on a
labelled split with grouped cross-validation and reports the held-out accuracy.
"""

from __future__ import annotations

import json
import math
import re
from functools import lru_cache
from importlib.resources import files
from typing import Any, Sequence

import numpy as np
from rapidfuzz import fuzz, utils

FEATURES = ["sim", "sim_gap", "token_set", "partial", "wratio", "mention_in_name", "name_in_context",
            "name_in_clue", "qid_rank", "gender_clue", "gender_context", "year_fit"]

_WORD = re.compile(r"\w+")
_YEAR = re.compile(r"\b(1[0-9]{3}|20[0-3][0-9])\b")
_FEM = re.compile(r"\b(woman|women|girl|lady|female|actress|queen|princess|mother|wife)\b", re.I)
_MAL = re.compile(r"\b(man|men|boy|gentleman|male|king|prince|father|husband|beard)\b", re.I)
_SHE = re.compile(r"\b(she|her|hers|herself)\b", re.I)
_HE = re.compile(r"\b(he|his|him|himself)\b", re.I)
_BIRTH = re.compile(r"Birth: (\d{3,4})")
_DEATH = re.compile(r"Death: (\d{3,4})")


def _toks(s: str) -> set[str]:
    return set(_WORD.findall((s or "").lower()))


def _sign(fem: bool, mal: bool) -> int:
    return 1 if fem and not mal else (-1 if mal and not fem else 0)


def _sex(desc: str) -> int:
    if "Sex: female" in desc:
        return 1
    if "Sex: male" in desc:
        return -1
    return 0


def _qid_num(c: dict[str, Any]) -> float:
    q = str(c.get("qid") or "")
    return float(q[1:]) if q[:1] in "Qq" and q[1:].isdigit() else math.inf


def features(mention: str, context: str, clue_text: str, candidates: Sequence[dict[str, Any]],
             sims: Sequence[float]) -> np.ndarray:
    """One row of :data:`FEATURES` per candidate. ``sims`` are the embedder's query-entity
    similarities (query = mention + context + clue)."""
    n = len(candidates)
    best = max(sims) if n else 0.0
    ctx_t, clue_t, men_t = _toks(context), _toks(clue_text), _toks(mention)
    g_clue = _sign(bool(_FEM.search(clue_text)), bool(_MAL.search(clue_text)))
    g_ctx = _sign(bool(_SHE.search(context)), bool(_HE.search(context)))
    years = [int(y) for y in _YEAR.findall(context)]
    qids = [_qid_num(c) for c in candidates]
    order = sorted(range(n), key=lambda i: qids[i])
    qrank = [0.0] * n
    for r, i in enumerate(order):
        qrank[i] = r / (n - 1) if n > 1 and qids[i] != math.inf else (0.5 if n > 1 else 0.0)
    rows = []
    for i, c in enumerate(candidates):
        name, desc = c["name"], c.get("desc") or ""
        nt = _toks(name)
        sex = _sex(desc)
        year_fit = 0.0
        b = _BIRTH.search(desc)
        if years and b:
            by = int(b.group(1))
            d = _DEATH.search(desc)
            dy = int(d.group(1)) if d else 2035
            year_fit = 1.0 if any(by - 5 <= y <= dy + 30 for y in years) else -1.0
        rows.append([
            sims[i], sims[i] - best,
            fuzz.token_set_ratio(mention, name, processor=utils.default_process) / 100,
            fuzz.partial_ratio(mention.lower(), name.lower()) / 100,
            fuzz.WRatio(mention, name, processor=utils.default_process) / 100,
            float(bool(men_t) and men_t <= nt),
            len(nt & ctx_t) / max(len(nt), 1),
            len(nt & clue_t) / max(len(nt), 1),
            qrank[i], float(g_clue * sex), float(g_ctx * sex), year_fit,
        ])
    return np.asarray(rows, dtype=np.float64).reshape(n, len(FEATURES))


@lru_cache(maxsize=4)
def load_weights(path: str | None = None) -> tuple[np.ndarray, float, dict[str, Any]]:
    text = (open(path, encoding="utf-8").read() if path
            else files("i2cr").joinpath("ranker_weights.json").read_text(encoding="utf-8"))
    spec = json.loads(text)
    if spec.get("features") != FEATURES:
        raise ValueError("ranker weights were fitted for other features; refit with "
                         "python -m i2cr.eval.calibrate")
    return np.asarray(spec["coef"], dtype=np.float64), float(spec["intercept"]), spec


def score(mention: str, context: str, clue_text: str, candidates: Sequence[dict[str, Any]],
          sims: Sequence[float], weights: str | None = None) -> list[float]:
    if not candidates:
        return []
    coef, intercept, _ = load_weights(weights)
    return [float(x) for x in features(mention, context, clue_text, candidates, sims) @ coef
            + intercept]
