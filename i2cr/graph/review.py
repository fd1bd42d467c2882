"""Hybrid TES's one LLM call: the answer that stands, when the ranker is unsure of it.

With ``tes_strategy=hybrid`` the ranker answers every TES (re-choices after an ICR exclusion, VIF
clue rounds), so the rounds cost no LLM call. When they are over, this node looks at the answer
that will stand (:func:`i2cr.graph.final.standing`: the round that passed IAV, or the last round's,
or round 1's text answer) and ranks that round's candidates again with its clues, without the ones
ICR rejected in it (the one ICR kept when every try failed is offered again). At or above
``hybrid_threshold`` the ranker's answer stands; below it the LLM chooses once among the ranker's
``hybrid_top_k``, seeing every clue that round carries, and its answer stands (when it fails or
names none of them, the ranker's answer stays). ICR and IAV do not judge the LLM's answer again:
there is no second call to re-choose with. The node's ``tes_hybrid`` event records which path
decided, the probability, and both answers. The LLM's answer is recorded in the standing round's
entry of ``rounds`` (beside the ranker's), so the one rule over the rounds
(:func:`i2cr.graph.final.settle`) gives it, in the graph and in evaluation alike. The ranking TES
made of that round is reused when it is the one the review needs. A NIL the ranker answered by
rule (:func:`i2cr.ranker.model.nil_rule`: a pronoun, a mention the document names more fully
when no candidate is that name, a proper name no candidate's title bears) stands: the LLM does
not see the document the rule read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langgraph.runtime import Runtime

from ..data import NIL
from .context import Context, settings_of
from .events import TesHybrid
from .final import Standing, standing
from .state import CandidateDict, State
from .tes import allowed_candidates, retrieval_ranking, rule_nil, tes_llm


def review(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """The review node (hybrid TES): the LLM asked about the answer that stands when the ranker
    is unsure of it.

    Reads ``candidates``, ``rounds``, ``text_answer``, ``visual_available``,
    ``iav_score`` (which answer stands), ``round``, ``excluded``, ``ranked`` and what
    :func:`~i2cr.graph.tes.tes_llm` reads; writes ``path``, ``events`` and, when the LLM was
    asked, ``llm_calls``, ``llm_answer`` and its answer where it stands (:func:`reviewed`)."""
    ctx = settings_of(runtime)
    s = standing(state, ctx.fallback_answer)
    update: dict[str, Any] = {"path": ["review"]}
    ev: TesHybrid = {"type": "tes_hybrid", "node": "review", "threshold": ctx.hybrid_threshold}
    if s.entry is None:
        return {**update, "events": [{**ev, "path": "none", "reason": "no candidates"}]}
    held = state["rounds"][s.entry].get("answer")
    view = review_view(state, s, held)
    ev.update({"round": view["round"], "reviews": "text_answer" if s.text else "choice",
               "ranker_answer": held})
    cands = allowed_candidates(view)
    if not cands:
        return {**update, "events": [{**ev, "path": "ranker", "reason": "no candidate left"}]}
    if held == NIL and (rule := rule_nil(view)):
        return {**update, "events": [{**ev, "path": "ranker", "answer": held, "reason": rule}]}
    order, probs = review_ranking(view, ctx, cands)
    p = probs[order[0]]
    ev["p"] = round(p, 4)
    if p >= ctx.hybrid_threshold:
        return {**update, "events": [{**ev, "path": "ranker", "answer": held}]}
    top = [cands[i] for i in sorted(order[: ctx.hybrid_top_k])]
    asked = tes_llm(view, ctx, top, fallback=held if held is not None else cands[order[0]]["name"],
                    node="review")
    answer = asked["choice"]
    ev.update({"path": "llm", "top_k": [c["name"] for c in top], "answer": answer})
    update.update(llm_calls=asked["llm_calls"], llm_answer=asked["llm_answer"],
                  events=[ev, *asked["events"]])
    return {**update, **reviewed(state, s.entry, held, answer)}


def review_view(state: State, s: Standing, held: str | None) -> State:
    """The standing round as TES saw it, without the candidates ICR rejected in it (the one ICR
    kept when every try failed is back); round 1's text answer standing after later rounds is
    asked about as round 1 saw it (that round's exclusions are no longer known)."""
    rnd = state["round"]
    excluded = [] if s.text and rnd > 1 else state["excluded"]
    return {**state, "round": 1 if s.text else rnd, "excluded": [n for n in excluded if n != held]}


def review_ranking(view: State, ctx: Context, cands: Sequence[CandidateDict]
                   ) -> tuple[list[int], list[float]]:
    """(order best first, probabilities) of the ranker over ``cands`` in the view's round: TES's
    own ranking (``ranked``) when it was of these candidates in this round, else made anew."""
    kept = view.get("ranked")
    if kept and kept["round"] == view["round"] and kept["offered"] == [c["name"] for c in cands]:
        return kept["order"], kept["probs"]
    r = retrieval_ranking(view, ctx, cands)
    return r.order, [float(p) for p in r.probs]


def reviewed(state: State, entry: int, held: str | None, answer: str | None) -> dict[str, Any]:
    """The review's answer recorded where it stands: in its round's entry of ``rounds``
    (``ranker_answer`` keeps the ranker's), as ``text_answer`` when that is round 1's and as
    ``choice`` when it is the current round's."""
    rounds = [dict(r) for r in state["rounds"]]
    rounds[entry].update(answer=answer, ranker_answer=held)
    out: dict[str, Any] = {"rounds": rounds}
    if entry == 0:
        out["text_answer"] = answer
    if entry == len(rounds) - 1:
        out["choice"] = answer
    return out
