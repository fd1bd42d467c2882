"""TES by retrieval: a candidate ranker with no LLM.

Each candidate gets a score from a linear model over features a linker can compute offline
from what TES sees in that round (mention, context, and the round's visual clues):

- embedding similarity (the ICR embedder) of the query and the entity text, and its gap to the best;
  the context's similarity to the entity's ``Occupation:`` field alone (e.g. "Chief Justice" and
  "judge"), as a gap to the best candidate;
- rapidfuzz similarities of mention and candidate name; whether the mention's words are in the name,
  and whether they are its last words (a surname) or its first words (a given name);
- how much of the name is in the context, and in the clue text (e.g. OCR);
- popularity priors: how far the Wikidata QID number is above the candidates' lowest, in orders of
  magnitude (older, lower ids are on the whole better-known entities), and whether the description
  lists a spouse;
- agreement of gender words in the clue / context with the description's ``Sex:`` field;
- time: years in the context against the description's birth and death years (before birth, as a
  child, within the lifetime, after death, unless the text speaks of a child or of a grave or
  statue), and the image's era from its clue (a painting or engraving suggests a person born before
  1830, a monochrome photo one born before 1950).

The model is a conditional logit (softmax over one mention's candidates), so scores compare
candidates of one mention; :func:`top_probability` gives the probability that the best candidate is
the referent at all, from a separate model of each candidate's own fit (used for NIL). The weights ship in
``ranker_weights.json``; ``python -m i2cr.eval.calibrate`` fits them on a labelled split with
grouped cross-validation and reports the held-out accuracy.
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
            "name_in_clue", "qid_gap", "gender_clue", "gender_context", "year_fit",
            "surname_match", "given_name_match", "has_spouse", "gender_words_context",
            "before_birth", "child_at_year", "in_lifetime", "after_death",
            "painting_era", "monochrome_era", "occupation_context", "no_occupation"]

_WORD = re.compile(r"\w+")
_YEAR = re.compile(r"\b(1[0-9]{3}|20[0-3][0-9])\b")
_FEM = re.compile(r"\b(woman|women|girl|lady|female|actress|queen|princess|mother|wife)\b", re.I)
_MAL = re.compile(r"\b(man|men|boy|gentleman|male|king|prince|father|husband|beard)\b", re.I)
_SHE = re.compile(r"\b(she|her|hers|herself)\b", re.I)
_HE = re.compile(r"\b(he|his|him|himself)\b", re.I)
_FEM_WORDS = re.compile(r"\b(actress|mrs|miss|ms|queen|princess|wife|mother|daughter|sister|lady|"
                        r"duchess|empress|countess|she|her|herself|woman|girl)\b", re.I)
_MAL_WORDS = re.compile(r"\b(mr|king|prince|husband|father|sir|lord|duke|emperor|he|his|him|"
                        r"himself|man|boy)\b", re.I)
_YOUNG = re.compile(r"\b(infant|baby|child|children|boy|girl|young|youth|toddler|kid|born|birth)\b",
                    re.I)
_AFTER = re.compile(r"\b(grave|gravesite|tomb|statue|memorial|monument|funeral|buried|death|died|"
                    r"plaque|bust|museum|posthumous)\b", re.I)
_PAINTING = re.compile(r"\b(painting|drawing|engraving|sketch|fresco|illustration|miniature)\b", re.I)
_MONO = re.compile(r"\b(black and white|monochrome|retro|vintage)\b", re.I)
_BIRTH = re.compile(r"Birth: (\d{3,4})")
_DEATH = re.compile(r"Death: (\d{3,4})")
_OCCUPATION = re.compile(r"Occupation: ([^.]*)")


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


def qid_gaps(candidates: Sequence[dict[str, Any]]) -> list[float]:
    """How many orders of magnitude each candidate's Wikidata QID number is above the lowest of the
    candidates, capped at 3 and scaled to 0..1 (0: the best-known candidate; 0.5 without a QID).
    A gap, not a rank, so it means the same with 3 candidates as with 10."""
    logs = [math.log10(q) if 0 < q < math.inf else None for q in map(_qid_num, candidates)]
    known = [x for x in logs if x is not None]
    low = min(known) if known else 0.0
    return [0.5 if x is None else min(x - low, 3.0) / 3.0 for x in logs]


def occupation(cand: dict[str, Any]) -> str:
    """The ``Occupation:`` field of a structured description ('' when there is none)."""
    m = _OCCUPATION.search(cand.get("desc") or "")
    return m.group(1).strip() if m else ""


def _year(pattern: re.Pattern[str], desc: str) -> int | None:
    m = pattern.search(desc)
    return int(m.group(1)) if m else None


def features(mention: str, context: str, clue_text: str, candidates: Sequence[dict[str, Any]],
             sims: Sequence[float], occupation_sims: Sequence[float | None] | None = None
             ) -> np.ndarray:
    """One row of :data:`FEATURES` per candidate. ``sims`` are the embedder's query-entity
    similarities (query = mention + context + this round's clues); ``occupation_sims`` the
    embedder's context-occupation similarities (None where a candidate has no occupation)."""
    n = len(candidates)
    best = max(sims) if n else 0.0
    ctx_t, clue_t, men_t = _toks(context), _toks(clue_text), _toks(mention)
    men_w = _WORD.findall((mention or "").lower())
    g_clue = _sign(bool(_FEM.search(clue_text)), bool(_MAL.search(clue_text)))
    g_ctx = _sign(bool(_SHE.search(context)), bool(_HE.search(context)))
    g_words = float(np.sign(len(_FEM_WORDS.findall(context)) - len(_MAL_WORDS.findall(context))))
    years = [int(y) for y in _YEAR.findall(context)]
    young = bool(_YOUNG.search(context) or _YOUNG.search(clue_text))
    after = bool(_AFTER.search(context) or _AFTER.search(clue_text))
    painting = bool(_PAINTING.search(clue_text))
    mono = bool(_MONO.search(clue_text))
    occ = list(occupation_sims) if occupation_sims is not None else [None] * n
    occ_known = [o for o in occ if o is not None]
    occ_best = max(occ_known) if occ_known else 0.0
    qrank = qid_gaps(candidates)
    rows = []
    for i, c in enumerate(candidates):
        name, desc = c["name"], c.get("desc") or ""
        nt = _toks(name)
        name_w = _WORD.findall(name.lower())
        sex = _sex(desc)
        by, dy = _year(_BIRTH, desc), _year(_DEATH, desc)
        year_fit = before = child = alive = dead = 0.0
        if years and by is not None:
            year_fit = 1.0 if any(by - 5 <= y <= (dy or 2035) + 30 for y in years) else -1.0
            y = max(years)
            before = float(y < by)
            child = float(by <= y < by + 12 and not young)
            alive = float(by + 15 <= y <= by + 90 and (dy is None or y <= dy + 1))
            dead = float(dy is not None and y > dy + 1 and not after)
        era_paint = era_mono = 0.0
        if by is not None:
            era_paint = float(painting) * (1.0 if by < 1830 else -1.0)
            era_mono = float(mono) * (1.0 if by < 1950 else -1.0)
        k = len(men_w)
        rows.append([
            sims[i], sims[i] - best,
            fuzz.token_set_ratio(mention, name, processor=utils.default_process) / 100,
            fuzz.partial_ratio(mention.lower(), name.lower()) / 100,
            fuzz.WRatio(mention, name, processor=utils.default_process) / 100,
            float(bool(men_t) and men_t <= nt),
            len(nt & ctx_t) / max(len(nt), 1),
            len(nt & clue_t) / max(len(nt), 1),
            qrank[i], float(g_clue * sex), float(g_ctx * sex), year_fit,
            float(k > 0 and name_w[-k:] == men_w),
            float(k > 0 and name_w[:k] == men_w and name_w != men_w),
            float("Spouse:" in desc), g_words * sex,
            before, child, alive, dead, era_paint, era_mono,
            0.0 if occ[i] is None else occ[i] - occ_best, float(occ[i] is None),
        ])
    return np.asarray(rows, dtype=np.float64).reshape(n, len(FEATURES))


@lru_cache(maxsize=4)
def load_weights(path: str | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """(coefficients, the whole spec) of a weights file; the shipped one by default."""
    try:
        text = (open(path, encoding="utf-8").read() if path
                else files("i2cr").joinpath("ranker_weights.json").read_text(encoding="utf-8"))
        spec = json.loads(text)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read ranker weights {path or '(shipped)'}: {e}") from e
    if spec.get("features") != FEATURES:
        raise ValueError("ranker weights were fitted for other features; refit with "
                         "python -m i2cr.eval.calibrate")
    return np.asarray(spec["coef"], dtype=np.float64), spec


def score(mention: str, context: str, clue_text: str, candidates: Sequence[dict[str, Any]],
          sims: Sequence[float], weights: str | None = None,
          occupation_sims: Sequence[float | None] | None = None) -> list[float]:
    """Linear scores, comparable within one mention's candidates (higher is better)."""
    return rank(mention, context, clue_text, candidates, sims, weights, occupation_sims)[0]


def rank(mention: str, context: str, clue_text: str, candidates: Sequence[dict[str, Any]],
         sims: Sequence[float], weights: str | None = None,
         occupation_sims: Sequence[float | None] | None = None) -> tuple[list[float], np.ndarray]:
    """(scores, feature matrix) of the candidates."""
    if not candidates:
        return [], np.zeros((0, len(FEATURES)))
    coef, _ = load_weights(weights)
    F = features(mention, context, clue_text, candidates, sims, occupation_sims)
    return [float(x) for x in F @ coef], F


FIT_INPUTS = ["sim", "wratio", "token_set", "mention_in_name"]


def fit_inputs(F: np.ndarray) -> np.ndarray:
    """What the fit model reads of each candidate: only how well it fits the mention on its own
    (embedding similarity, name match), nothing relative to the other candidates."""
    return F[:, [FEATURES.index(k) for k in FIT_INPUTS]]


def top_probability(scores: Sequence[float], F: np.ndarray, weights: str | None = None) -> float:
    """Probability that the ranker's best candidate is the referent at all (used for NIL), from
    a logistic model of each candidate's own fit, fitted by calibrate over every candidate of the
    split. The ranker's softmax cannot say this: it only compares candidates, so with none fitting
    its best can still lead by far."""
    if not len(scores):
        return 0.0
    _, spec = load_weights(weights)
    fit = spec.get("fit_model") or {"coef": [0.0] * len(FIT_INPUTS), "intercept": 0.0}
    x = fit_inputs(np.asarray(F))[int(np.argmax(scores))]
    z = float(np.dot(fit["coef"], x) + fit["intercept"])
    return 1.0 / (1.0 + math.exp(-max(min(z, 50.0), -50.0)))
