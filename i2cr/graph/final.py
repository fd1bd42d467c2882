"""The last node: settle the answer and say why."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from ..data import NIL
from .context import Context
from .state import State


def final(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    cands = state.get("candidates") or []
    rnd = state.get("round") or 1
    if not cands:
        answer, reason = NIL, "no_candidates"
    elif state.get("iav_passed"):
        answer = state.get("choice")
        reason = "iav_passed_text" if rnd == 1 else f"iav_passed_round_{rnd}"
    elif state.get("text_answer") == NIL:
        answer, reason = NIL, "nil_chosen"
    elif not state.get("visual_available") and (state.get("iav_score") is None):
        answer, reason = state.get("text_answer"), "text_only"
    else:
        answer, reason = state.get("text_answer"), "no_round_passed_iav"
    if answer is None:  # cannot happen with candidates, but never return nothing silently
        answer, reason = NIL, "no_answer"
    return {"path": ["final"], "answer": answer, "is_nil": answer == NIL, "final_reason": reason}
