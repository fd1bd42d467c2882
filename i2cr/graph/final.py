"""The last node: settle the answer and say why.

The first round whose answer passed IAV gives the answer. When none passed, the text answer (round
1's) stands, as in the paper, or with ``fallback='last'`` the last round's answer, which with
cumulative clues has seen every clue."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from ..data import NIL
from .context import Context, settings_of
from .state import State


def final(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    fallback = settings_of(runtime).fallback_answer
    cands = state.get("candidates") or []
    rnd = state.get("round") or 1
    answer: str | None
    if not cands:
        answer, reason = NIL, "no_candidates"
    elif state.get("iav_passed"):
        answer = state.get("choice")
        reason = "iav_passed_text" if rnd == 1 else f"iav_passed_round_{rnd}"
    elif state.get("text_answer") == NIL:
        answer, reason = NIL, "nil_chosen"
    elif not state.get("visual_available") and (state.get("iav_score") is None):
        answer, reason = state.get("text_answer"), "text_only"
    elif fallback == "last" and state.get("choice") not in (None, NIL):
        answer, reason = state.get("choice"), "no_round_passed_iav_last_round"
    else:
        answer, reason = state.get("text_answer"), "no_round_passed_iav"
    if answer is None:  # cannot happen with candidates, but never return nothing silently
        answer, reason = NIL, "no_answer"
    return {"path": ["final"], "answer": answer, "is_nil": answer == NIL, "final_reason": reason,
            "fallback": fallback}
