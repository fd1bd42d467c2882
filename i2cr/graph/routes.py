"""Conditional edges: the I2CR algorithm's control flow, one function per branching node."""

from __future__ import annotations

from typing import Literal

from langgraph.runtime import Runtime

from ..data import NIL
from .context import Context, settings_of
from .state import State
from .vif import unused_tools


def from_start(state: State, runtime: Runtime[Context]) -> Literal["retrieve", "prepare"]:
    """A mention without candidates goes to the KB first, when a KB is configured."""
    if not state.get("candidates") and settings_of(runtime).kb:
        return "retrieve"
    return "prepare"


def after_prepare(state: State) -> Literal["tes", "final"]:
    return "tes" if state.get("candidates") else "final"


def _settle(ctx: Context) -> Literal["review", "final"]:
    """The rounds are over: the hybrid TES's review may ask the LLM about the answer that stands."""
    return "review" if ctx.strategy == "hybrid" else "final"


def after_icr(state: State, runtime: Runtime[Context]) -> Literal["tes", "iav", "review", "final"]:
    """Rejected with reflections left -> TES again; otherwise this round's answer stands:
    NIL in round 1, or nothing visual to check, ends with the text answer; else IAV."""
    if state.get("icr_decision") == "reject_and_rechoose":
        return "tes"
    if (state.get("round") or 1) == 1 and state.get("choice") == NIL:
        return _settle(settings_of(runtime))
    if not state.get("visual_available"):
        return _settle(settings_of(runtime))
    return "iav"


def _vif_left(state: State, ctx: Context) -> bool:
    return (state.get("vif_rounds") or 0) < ctx.vif_cap and bool(unused_tools(state))


def after_iav(state: State, runtime: Runtime[Context]) -> Literal["vif", "review", "final"]:
    """IAV passed -> done; failed with tools and VIF rounds left -> VIF; else the text answer."""
    ctx = settings_of(runtime)
    if state.get("iav_passed"):
        return _settle(ctx)
    if not state.get("visual_available"):
        return _settle(ctx)
    return "vif" if _vif_left(state, ctx) else _settle(ctx)


def after_vif(state: State, runtime: Runtime[Context]) -> Literal["tes", "vif", "review", "final"]:
    """A useful clue -> TES with it; an empty or failed clue -> the next tool; none left -> end."""
    if state.get("last_clue_ok"):
        return "tes"
    ctx = settings_of(runtime)
    return "vif" if _vif_left(state, ctx) else _settle(ctx)
