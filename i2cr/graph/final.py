"""The last node: settle the answer and say why.

The first round whose answer passed IAV gives the answer. When none passed, the text answer (round
1's) stands, as in the paper, or with ``fallback='last'`` the last round's answer, which with
cumulative clues has seen every clue."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from langgraph.runtime import Runtime

from ..data import NIL
from .context import Context, settings_of
from .state import State


def settle(rounds: Sequence[Mapping[str, Any]], text_answer: str | None,
           fallback: str) -> str | None:
    """The one rule for the answer a run's rounds give (``rounds``: the state's
    ``round_answers``, the result's ``rounds``): the first round that passed IAV; when none did,
    with ``fallback='last'`` the last round's answer unless it is NIL, else the text answer.
    ``final`` answers with it, and evaluation asks it what a run cut after k rounds would say."""
    for r in rounds:
        if r.get("iav_passed"):
            return r.get("answer")
    if fallback == "last" and rounds and rounds[-1].get("answer") not in (None, NIL):
        return rounds[-1].get("answer")
    return text_answer


def final(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    fallback = settings_of(runtime).fallback_answer
    cands = state.get("candidates") or []
    rnd = state.get("round") or 1
    rounds = state.get("round_answers") or []
    text = state.get("text_answer")
    answer: str | None
    if not cands:
        answer, reason = NIL, "no_candidates"
    elif state.get("iav_passed"):
        answer = settle(rounds, text, fallback)
        reason = "iav_passed_text" if rnd == 1 else f"iav_passed_round_{rnd}"
    elif text == NIL:
        answer, reason = NIL, "nil_chosen"
    elif not state.get("visual_available") and (state.get("iav_score") is None):
        answer, reason = text, "text_only"  # no visual evidence at all: the text answer
    else:
        answer = settle(rounds, text, fallback)
        reason = ("no_round_passed_iav_last_round" if fallback == "last" and rounds
                  and rounds[-1].get("answer") not in (None, NIL) else "no_round_passed_iav")
    if answer is None:  # cannot happen with candidates, but never return nothing silently
        answer, reason = NIL, "no_answer"
    return {"path": ["final"], "answer": answer, "is_nil": answer == NIL, "final_reason": reason,
            "fallback": fallback}
