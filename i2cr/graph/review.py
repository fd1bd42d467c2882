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
decided, the probability, and both answers.
"""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from .context import Context, settings_of
from .events import TesHybrid
from .final import standing
from .state import State
from .tes import allowed_candidates, retrieval_ranking, tes_llm


def review(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    ctx = settings_of(runtime)
    field, _ = standing(state, ctx.fallback_answer)
    rnd = state.get("round") or 1
    update: dict[str, Any] = {"path": ["review"]}
    ev: TesHybrid = {"type": "tes_hybrid", "node": "review", "threshold": ctx.hybrid_threshold}
    if field is None:
        return {**update, "events": [{**ev, "path": "none", "reason": "no candidates"}]}
    held = state.get(field)
    # the standing round as TES saw it, without the candidates ICR rejected in it (the one ICR kept
    # when every try failed is back); round 1's text answer standing after later rounds is asked
    # about as round 1 saw it (that round's exclusions are no longer known)
    excluded = [] if field == "text_answer" and rnd > 1 else state.get("excluded") or []
    view: State = {**state, "round": rnd if field == "choice" else 1,
                   "excluded": [n for n in excluded if n != held]}
    ev.update({"round": view.get("round") or 1, "reviews": field, "ranker_answer": held})
    cands = allowed_candidates(view)
    if not cands:
        return {**update, "events": [{**ev, "path": "ranker", "reason": "no candidate left"}]}
    r = retrieval_ranking(view, ctx, cands)
    p = float(r.probs[r.best])
    ev["p"] = round(p, 4)
    if p >= ctx.hybrid_threshold:
        return {**update, "events": [{**ev, "path": "ranker", "answer": held}]}
    top = [cands[i] for i in sorted(r.order[: ctx.hybrid_top_k])]
    asked = tes_llm(view, ctx, top, fallback=held if held is not None else cands[r.best]["name"],
                    node="review")
    answer = asked["choice"]
    ev.update({"path": "llm", "top_k": [c["name"] for c in top], "answer": answer})
    update.update(llm_calls=asked["llm_calls"], llm_answer=asked["llm_answer"],
                  events=[ev, *asked["events"]])
    update[field] = answer
    if rnd == 1:  # round 1's answer is both this round's choice and the text answer
        update.update(choice=answer, text_answer=answer)
    return update
