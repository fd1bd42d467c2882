"""The ranker as one object: its weights, its inputs, its scores and its NIL decision.

A weights file holds two fitted models, chosen per mention: ``prior`` (used when any candidate has
a ``prior``) and ``no_prior`` (fitted with every prior stripped, so its other weights carry the
ranking alone). Each model has

- ``coef``: a conditional logit over :data:`~.features.FEATURES` (a softmax over one mention's
  candidates: it compares candidates and is trained for exactly what TES does);
- ``nil``: a logistic model over :data:`NIL_FEATURES` of the best candidate (its softmax
  probability, lead, similarity, name match, prior, the number of candidates), giving
  ``p_link``, the probability that the best candidate is the referent at all; where a sample
  allows NIL, NIL is answered when ``p_link`` is below ``nil_threshold`` (chosen by
  cross-validation on the NIL gold of the fitting data).

Three rules, not fitted weights, set ``p_link`` to 0 (:func:`nil_rule`, which names the reason):
a personal pronoun, a mention whose fuller name in its document is none of the candidates
(``Walters`` after ``Barbara Walters``: :func:`~i2cr.names.unlisted_fuller_name`), and a proper
name that no candidate's title bears any likeness to (``Jordan`` with only ``Amman`` and ``Paris
Hilton``: :func:`~i2cr.names.no_candidate_bears_it`).

TES, pruning, prefetching and calibration all go through :class:`Ranker`.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np

from ..names import no_candidate_bears_it, strip_mention, unlisted_fuller_name
from ..texts import context_query, document_query, entity_text, query_for
from .features import FEATURES, features, has_prior, occupation

NIL_FEATURES = ["top_prob", "margin", "top_sim", "top_exact", "top_wratio", "top_token_set",
                "top_acronym", "top_demonym", "top_mention_in_desc", "top_prior", "log_candidates",
                "mention_lowercase", "mention_words", "top_fit", "has_expansion", "top_expansion"]
# what the candidate-level fit model reads: how well one candidate fits the mention on its own
FIT_INPUTS = ["sim", "exact", "wratio", "token_set", "mention_in_name", "acronym", "demonym",
              "mention_in_desc", "has_expansion", "expansion_exact", "expansion_jaccard"]
# personal pronouns: a name lookup cannot have found their referent (that is coreference), so
# where NIL is allowed a pronoun is NIL, whatever the candidates (a rule, not a fitted weight)
PRONOUNS = {"i", "me", "my", "mine", "myself", "you", "your", "yours", "yourself", "he", "him", "his",
            "himself", "she", "her", "hers", "herself", "it", "its", "itself", "we", "us", "our",
            "ours", "ourselves", "they", "them", "their", "theirs", "themselves"}
MODELS = ("prior", "no_prior")
_WORD = re.compile(r"[^\W_]+")


def is_pronoun(mention: str) -> bool:
    """A personal pronoun as written ('he', 'His', 'I'), read as the candidate lookup reads the
    mention (:func:`~i2cr.names.strip_mention`, punctuation around it dropped: 'He,', '"she"');
    not an acronym in capitals that spells one ('US' is the United States, 'IT' information
    technology; 'U.S.' is two letters), nor an accented word ('Hé')."""
    words = _WORD.findall(unicodedata.normalize("NFKC", strip_mention(mention)))
    if len(words) != 1:
        return False
    w = words[0]
    return w.lower() in PRONOUNS and not (len(w) > 1 and w.isupper())


def own_fit(fit: Mapping[str, Any] | None, F: np.ndarray) -> np.ndarray:
    """Each candidate's log-odds of being the referent from its own fit alone (a logistic model
    over :data:`FIT_INPUTS`, fitted over every candidate: unlike the softmax, it knows that a
    candidate whose name and text do not fit the mention is unlikely, whatever the others)."""
    if not fit or not len(F):
        return np.zeros(len(F))
    cols = [FEATURES.index(k) for k in FIT_INPUTS]
    return F[:, cols] @ np.asarray(fit["coef"]) + float(fit["intercept"])


def nil_features(mention: str, probs: np.ndarray, F: np.ndarray,
                 fit: Mapping[str, Any] | None = None) -> np.ndarray:
    """The mention-level row the NIL model reads: the best candidate's features, its lead and its
    own-fit log-odds (:func:`own_fit`), the mention's own form (lower case, as common nouns
    are; its length in words), and whether the document names it more fully and the best
    candidate is that name."""
    if not len(probs):
        return np.zeros(len(NIL_FEATURES))
    order = np.argsort(-probs)
    b = int(order[0])
    second = float(probs[order[1]]) if len(order) > 1 else 0.0
    col = {k: FEATURES.index(k) for k in FEATURES}
    return np.asarray([
        float(probs[b]), float(probs[b]) - second, F[b, col["sim"]], F[b, col["exact"]],
        F[b, col["wratio"]], F[b, col["token_set"]], F[b, col["acronym"]], F[b, col["demonym"]],
        F[b, col["mention_in_desc"]], F[b, col["prior"]], math.log(len(probs)),
        float(mention.strip()[:1].islower()),
        min(len(mention.split()), 6) / 6, float(np.clip(own_fit(fit, F)[b], -20, 20)),
        F[b, col["has_expansion"]], F[b, col["expansion_jaccard"]],
    ], dtype=np.float64)


def names_borne(candidates: Iterable[Mapping[str, Any]]) -> list[str]:
    """Every name the candidates bear, as :func:`nil_rule` reads them: each title, and the
    ``aliases`` a candidate carries (a KB's alias the mention matched: 'Big Apple' is New York
    City's, though no letter of its title says so)."""
    out: list[str] = []
    for c in candidates:
        out.append(str(c.get("name", "")))
        aliases = c.get("aliases")
        if isinstance(aliases, list):
            out.extend(a for a in aliases if isinstance(a, str))
    return out


def nil_rule(mention: str, candidate_names: Sequence[str], document: Sequence[str] = ()
             ) -> str | None:
    """Why the referent cannot be among the candidates, whatever the weights say, or None: a
    personal pronoun (a name lookup cannot have found its referent: that is coreference), a
    fuller name the document gives the mention that no candidate is
    (:func:`~i2cr.names.unlisted_fuller_name`), or a proper name that no candidate's title
    bears any likeness to (:func:`~i2cr.names.no_candidate_bears_it`)."""
    if is_pronoun(mention):
        return "a personal pronoun"
    fuller = unlisted_fuller_name(mention, candidate_names, document)
    if fuller is not None:
        return f"the document names it {fuller!r}, which no candidate is"
    if no_candidate_bears_it(mention, candidate_names):
        return "a proper name that no candidate's title bears"
    return None


def link_probability(nil: Mapping[str, Any] | None, mention: str, probs: np.ndarray,
                     F: np.ndarray, rule: str | None) -> float:
    """``p_link`` from a fitted NIL model (1 without one; 0 without candidates or where a
    :func:`nil_rule` applies: ``rule``, its reason)."""
    if not len(probs) or rule:
        return 0.0
    if not nil:
        return 1.0
    x = ((nil_features(mention, probs, F, nil.get("fit")) - np.asarray(nil["mean"]))
         / np.asarray(nil["scale"]))
    return sigmoid(float(np.dot(nil["coef"], x) + nil["intercept"]))


def softmax(scores: np.ndarray) -> np.ndarray:
    if not len(scores):
        return scores
    e = np.exp(scores - scores.max())
    return e / e.sum()


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(min(z, 50.0), -50.0)))


@dataclass(frozen=True)
class Weights:
    """A parsed weights file."""

    spec: dict[str, Any]
    source: str

    def coef(self, model: str) -> np.ndarray:
        return np.asarray(self.spec["models"][model]["coef"], dtype=np.float64)

    def p_link(self, model: str, mention: str, probs: np.ndarray, F: np.ndarray,
               rule: str | None) -> float:
        return link_probability(self.spec["models"][model].get("nil"), mention, probs, F, rule)

    def nil_threshold(self, model: str) -> float:
        return float(self.spec["models"][model].get("nil_threshold", 0.0))

    @property
    def icr_threshold(self) -> dict[str, Any]:
        return self.spec.get("icr_threshold") or {}


def load_weights(path: str | None = None) -> Weights:
    """A weights file (the shipped one by default), checked against this version's features.
    (Read each time it is asked: a run keeps what it read in its ``Resources.weights``.)"""
    where = path or "(shipped)"
    try:
        text = (Path(path).read_text(encoding="utf-8") if path
                else files("i2cr.ranker").joinpath("weights.json").read_text(encoding="utf-8"))
        spec = json.loads(text)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read ranker weights {where}: {e}") from e
    if not isinstance(spec, dict) or spec.get("features") != FEATURES or \
            set(spec.get("models") or {}) != set(MODELS) or spec.get("nil_features") != NIL_FEATURES:
        raise ValueError(f"ranker weights {where} were fitted for other features; refit them with "
                         "python -m i2cr.eval.calibrate")
    for m in MODELS:
        model = spec["models"][m]
        if not isinstance(model, dict) or len(model.get("coef") or []) != len(FEATURES):
            raise ValueError(f"ranker weights {where}: model {m!r} has the wrong number of weights")
        _check_model(model, f"ranker weights {where}: model {m!r}")
    icr = spec.get("icr_threshold")
    if icr is not None and (not isinstance(icr, dict) or
                            (icr.get("value") is not None and not _finite(icr["value"]))):
        raise ValueError(f"ranker weights {where}: 'icr_threshold' must hold a finite 'value'")
    return Weights(spec, where)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_model(model: Mapping[str, Any], what: str) -> None:
    """ValueError naming the part of a model that is not the finite numbers of the right number
    the ranker reads (a hand-edited or damaged file: NaN weights would rank silently at random)."""
    def vector(v: Any, n: int, name: str) -> None:
        if not isinstance(v, list) or len(v) != n or not all(map(_finite, v)):
            raise ValueError(f"{what}: {name!r} must be {n} finite numbers")

    def number(v: Any, name: str) -> None:
        if not _finite(v):
            raise ValueError(f"{what}: {name!r} must be a finite number, not {repr(v)[:40]}")

    vector(model["coef"], len(FEATURES), "coef")
    if "nil_threshold" in model:
        number(model["nil_threshold"], "nil_threshold")
    nil = model.get("nil")
    if not nil:
        return
    if not isinstance(nil, dict):
        raise ValueError(f"{what}: 'nil' must be an object")
    for k in ("mean", "scale", "coef"):
        vector(nil.get(k), len(NIL_FEATURES), f"nil.{k}")
    if not all(nil["scale"]):
        raise ValueError(f"{what}: 'nil.scale' must have no 0")
    number(nil.get("intercept"), "nil.intercept")
    fit = nil.get("fit")
    if fit:
        if not isinstance(fit, dict):
            raise ValueError(f"{what}: 'nil.fit' must be an object")
        vector(fit.get("coef"), len(FIT_INPUTS), "nil.fit.coef")
        number(fit.get("intercept"), "nil.fit.intercept")


@dataclass(frozen=True)
class Ranking:
    """The ranker's view of one mention's candidates in one round."""

    candidates: list[dict[str, Any]]
    scores: np.ndarray  # linear scores (comparable within the mention)
    probs: np.ndarray  # softmax over the candidates
    features: np.ndarray
    model: str  # 'prior' or 'no_prior'
    p_link: float  # probability that the best candidate is the referent at all
    nil_threshold: float
    query: str  # the round's query the candidates' entity texts were compared with (TES keeps it)
    nil_rule: str | None = None  # why p_link is 0 whatever the weights (:func:`nil_rule`), or None

    @property
    def order(self) -> list[int]:
        return [int(i) for i in np.argsort(-self.scores, kind="stable")]

    @property
    def best(self) -> int:
        return self.order[0]

    @property
    def nil(self) -> bool:
        """Whether NIL beats the best candidate (to be applied only where NIL is allowed)."""
        return self.p_link < self.nil_threshold

    def table(self, k: int | None = None) -> list[dict[str, Any]]:
        """Candidates best first with score and probability (for traces)."""
        return [{"name": self.candidates[i]["name"], "score": round(float(self.scores[i]), 3),
                 "p": round(float(self.probs[i]), 4)} for i in self.order[:k]]


class Ranker:
    """Scores a mention's candidates with the embedder and the weights; NIL by ``p_link``.

    ``settings`` supplies ``max_context_chars``, ``embed_query_prefix`` and, optionally,
    ``nil_threshold`` (None: the fitted one). Without weights it computes features only (for
    fitting)."""

    def __init__(self, embedder: Any, weights: Weights | None, settings: Any):
        self.embedder, self.weights, self.settings = embedder, weights, settings

    # the texts it embeds ------------------------------------------------------------------------
    def entity_texts(self, candidates: Sequence[Mapping[str, Any]]) -> list[str]:
        texts = [entity_text(c) for c in candidates]
        texts += [o for o in (occupation(dict(c)) for c in candidates) if o]
        return texts

    def queries(self, mention: str, context: str,
                clue_sets: Iterable[Sequence[Mapping[str, Any]]],
                document: Sequence[str] = ()) -> list[str]:
        """The query texts for every round (one clue set per round), the context query and the
        document's, if it has other names."""
        doc = document_query(document, self.settings)
        return [context_query(context, self.settings)] + ([doc] if doc else []) + [
            query_for(mention, context, clues, self.settings) for clues in clue_sets]

    # scoring ------------------------------------------------------------------------------------
    def features(self, mention: str, context: str, clues: Sequence[Mapping[str, Any]],
                 candidates: Sequence[Mapping[str, Any]], *, strip_prior: bool = False,
                 document: Sequence[str] = (), query: str | None = None) -> np.ndarray:
        """``query``: the round's query when the caller built it already (:func:`query_for` of
        the mention, context and clues)."""
        cands = [dict(c) for c in candidates]
        if strip_prior:
            cands = [{k: v for k, v in c.items() if k != "prior"} for c in cands]
        if not cands:
            return np.zeros((0, len(FEATURES)))
        emb = self.embedder
        ents = [entity_text(c) for c in cands]
        if query is None:
            query = query_for(mention, context, clues, self.settings)
        sims = emb.similarity(query, ents)
        cq = context_query(context, self.settings)
        csims = emb.similarity(cq, ents)
        occs = [occupation(c) for c in cands]
        known = [o for o in occs if o]
        osims: list[float | None] = [None] * len(cands)
        if known:
            got = dict(zip(known, emb.similarity(cq, known), strict=True))
            osims = [got[o] if o else None for o in occs]
        dq = document_query(document, self.settings)
        dsims = emb.similarity(dq, ents) if dq else None
        clue_text = " ".join(str(c.get("text", "")) for c in clues)
        return features(mention, context, clue_text, cands, sims, csims, osims, document, dsims)

    def rank(self, mention: str, context: str, clues: Sequence[Mapping[str, Any]],
             candidates: Sequence[Mapping[str, Any]], document: Sequence[str] = (),
             rule_names: Sequence[str] | None = None) -> Ranking:
        """``document``: the other mentions of the mention's document, as written (see
        :func:`i2cr.names.expansions`); ``rule_names``: the names :func:`nil_rule` compares
        with (None: the candidates'; the graph gives every candidate of the mention, those ICR
        rejected too). The ranking carries the round's query it compared (``Ranking.query``),
        built once."""
        cands = [dict(c) for c in candidates]
        model = "prior" if has_prior(cands) else "no_prior"
        query = query_for(mention, context, clues, self.settings)
        F = self.features(mention, context, clues, cands, document=document, query=query)
        names = names_borne(cands) if rule_names is None else rule_names
        rule = nil_rule(mention, names, document)
        return self.ranking(mention, cands, F, model, query, rule)

    def ranking(self, mention: str, cands: list[dict[str, Any]], F: np.ndarray,
                model: str, query: str, rule: str | None = None) -> Ranking:
        if self.weights is None:
            raise ValueError("this ranker has no weights: it computes features only")
        scores = F @ self.weights.coef(model) if len(cands) else np.zeros(0)
        probs = softmax(scores)
        threshold = getattr(self.settings, "nil_threshold", None)
        if threshold is None:
            threshold = self.weights.nil_threshold(model)
        return Ranking(cands, scores, probs, F, model,
                       self.weights.p_link(model, mention, probs, F, rule), float(threshold), query,
                       rule)
