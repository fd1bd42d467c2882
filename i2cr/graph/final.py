"""The last node: settle the answer and say why.

The first round whose answer passed IAV gives the answer. When none passed, the text answer (round
1's) stands, as in the paper, or with ``fallback='last'`` the last round's answer, which with
cumulative clues has seen every clue. One rule (:func:`standing_round`) reads it off the rounds,
for the graph and for evaluation alike."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from langgraph.runtime import Runtime

from ..data import NIL
from .context import Context, settings_of
from .state import State


def standing_round(rounds: Sequence[Mapping[str, Any]], fallback: str) -> int | None:
    """The rule that settles a run, read off its ``rounds`` (the state's and the result's, one
    name: each round's answer and IAV verdict): the index of the round whose answer stands,
    the first that passed IAV; when none did, with ``fallback='last'`` the last one unless its
    answer is NIL; None when the text answer (round 1's) stands."""
    for i, r in enumerate(rounds):
        if r.get("iav_passed"):
            return i
    if fallback == "last" and rounds and rounds[-1].get("answer") not in (None, NIL):
        return len(rounds) - 1
    return None


def settle(rounds: Sequence[Mapping[str, Any]], text_answer: str | None,
           fallback: str) -> str | None:
    """The answer :func:`standing_round` gives: the graph's ``final`` asks it of the state,
    evaluation of a finished run's record (what a run cut after k rounds would have said)."""
    i = standing_round(rounds, fallback)
    return text_answer if i is None else rounds[i].get("answer")


class Standing(NamedTuple):
    """Which answer stands and why."""

    entry: int | None  # its index in rounds (0: round 1's); None: none (no candidates)
    text: bool  # it stands as the text answer (round 1's), for want of a better round
    reason: str  # the result's final_reason


def standing(state: State, fallback: str) -> Standing:
    """The answer that stands (:func:`standing_round` over the state's ``rounds``) with
    the reason the result gives for it."""
    rounds = state["rounds"]
    if not state["candidates"] or not rounds:
        return Standing(None, False, "no_candidates" if not state["candidates"] else "no_answer")
    i = standing_round(rounds, fallback)
    if i is not None and rounds[i].get("iav_passed"):
        rnd = rounds[i].get("round", 1)
        return Standing(i, False, "iav_passed_text" if rnd == 1 else f"iav_passed_round_{rnd}")
    if state["text_answer"] == NIL:
        return Standing(0, True, "nil_chosen")
    if len(rounds) == 1 and not state["visual_available"] and state["iav_score"] is None:
        return Standing(0, True, "text_only")
    if i is not None:
        return Standing(i, False, "no_round_passed_iav_last_round")
    return Standing(0, True, "no_round_passed_iav")


def final(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """The last node: the answer :func:`settle` gives over the rounds, and why (:func:`standing`).

    Reads ``candidates``, ``rounds``, ``text_answer``, ``visual_available``,
    ``iav_score``; writes ``path``, ``answer`` (NIL without candidates), ``is_nil``,
    ``final_reason`` and ``fallback`` (the resolved setting)."""
    fallback = settings_of(runtime).fallback_answer
    reason = standing(state, fallback).reason
    answer: str | None = NIL
    if state["candidates"]:
        answer = settle(state["rounds"], state["text_answer"], fallback)
    if answer is None:  # cannot happen with candidates, but never return nothing silently
        answer, reason = NIL, "no_answer"
    return {"path": ["final"], "answer": answer, "is_nil": answer == NIL, "final_reason": reason,
            "fallback": fallback}
