"""ICR, intra-modal consistency reflection: does the chosen entity's description agree with the
mention, its context and this round's clue?

At or above the threshold the choice stands. Below it the choice is excluded and TES chooses again,
at most ``max_reflections`` times; when every try fails, the try with the best score is kept.
"""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from ..data import NIL, DataError
from . import resources
from .context import Context, settings_of
from .events import IcrDecision
from .state import State, Tried
from .tes import allowed_candidates
from .texts import chosen_text


def icr_score(state: State, ctx: Context, name: str) -> float:
    """The cosine of this round's query, as TES built it (``query``), with the entity text of the
    candidate ``name``. A state without it (a checkpoint an older i2cr wrote between TES and ICR,
    resumed) is a :class:`DataError` naming the mention: its record is an error, the run goes on
    (no second query builder stands in for TES's)."""
    query = state.get("query")
    if query is None:
        raise DataError("checkpoint from an older i2cr: the state reaching ICR has no 'query' "
                        "(TES writes it now); link this mention afresh from its input instead "
                        "of resuming that checkpoint", record=state.get("sample_id"))
    return resources.embedder(ctx).similarity(query, [chosen_text(state, name)])[0]


def icr(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """The ICR node: score TES's choice against this round's query.

    Reads ``choice``, ``round``, ``candidates``, ``query`` (TES's), ``tried``,
    ``reflections``, ``excluded``, ``rounds``; writes ``path``, ``icr_score``,
    ``icr_decision``, ``events`` and either ``tried``, ``excluded`` and
    ``reflections`` (rejected: choose again) or the round's answer (:func:`_accept`: an entry in
    ``rounds``, in round 1 ``text_answer`` and ``text_icr``; ``choice`` when the best try
    is kept)."""
    ctx = settings_of(runtime)
    choice = state["choice"]
    rnd = state["round"]
    update: dict[str, Any] = {"path": ["icr"]}
    if choice is None or choice == NIL:
        # NIL has no description to check; it stands as this round's answer.
        update.update(icr_score=None, icr_decision="nil_not_checked",
                      events=[{"type": "icr", "round": rnd, "choice": choice, "score": None,
                               "decision": "nil_not_checked"}])
        return {**update, **_accept(state, choice, None, rnd)}

    score = icr_score(state, ctx, choice)
    tried: list[Tried] = [*state["tried"], {"name": choice, "icr": score}]
    alpha = ctx.alpha
    passed = score >= alpha
    reflections = state["reflections"]
    left = [c for c in allowed_candidates(state) if c["name"] != choice]
    ev: IcrDecision = {"type": "icr", "round": rnd, "choice": choice, "score": round(score, 4),
                       "threshold": alpha}
    update.update(icr_score=score, tried=tried)
    if passed:
        ev["decision"] = update["icr_decision"] = "pass"
        update["events"] = [ev]
        return {**update, **_accept(state, choice, score, rnd)}
    if reflections < ctx.max_reflections and left:
        ev["decision"] = update["icr_decision"] = "reject_and_rechoose"
        update.update(excluded=[*state["excluded"], choice],
                      reflections=reflections + 1, events=[ev])
        return update
    best = max(tried, key=lambda t: t["icr"] if t["icr"] is not None else float("-inf"))
    ev["decision"] = update["icr_decision"] = "exhausted_keep_best"
    ev["kept"] = best["name"]
    update.update(choice=best["name"], icr_score=best["icr"], events=[ev])
    return {**update, **_accept(state, best["name"], best["icr"], rnd)}


def _accept(state: State, choice: str | None, score: float | None, rnd: int) -> dict[str, Any]:
    """Record this round's answer; round 1's is the text answer."""
    out: dict[str, Any] = {
        "rounds": [*state["rounds"], {"round": rnd, "answer": choice, "icr": score}],
    }
    if rnd == 1:
        out.update(text_answer=choice, text_icr=score)
    return out
