"""The first node: check the input, look at the image, decide what IAV can score and which visual
tools this mention can use. Problems become recorded reasons, never crashes."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from ..embeddings import ModelUnavailable
from ..images import ImageError
from ..tools import ToolInput
from . import resources
from .context import Context, settings_of
from .events import Event
from .state import State
from .tes import retrieval_ranking


def choose_iav_mode(state: State, ctx: Context, image_ok: bool) -> tuple[str | None, str | None]:
    """(mode, reason): 'clip', 'caption' or None, and why a better mode was not possible."""
    modes = ctx.resolved.iav_modes
    if not modes:
        return None, "IAV switched off"
    reason = None
    if "clip" in modes:
        if image_ok:
            try:
                resources.clip(ctx)
                return "clip", None
            except ModelUnavailable as e:
                reason = f"CLIP unavailable: {e}"
        else:
            reason = "no usable image for CLIP"
        if "caption" not in modes:
            return None, reason
    clues = state.get("precomputed_clues") or {}
    if any(str(clues.get(k) or "").strip() for k in ("Caption", "Tags")):
        return "caption", reason
    return None, (reason + "; " if reason else "") + "no caption or tags for the caption bridge"


def prepare(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    ctx = settings_of(runtime)
    events: list[Event] = []
    update: dict[str, Any] = {
        "path": ["prepare"], "round": 1, "llm_calls": 0, "reflections": 0, "excluded": [],
        "tried": [], "clues": [], "tools_used": [], "vif_rounds": 0, "round_answers": [],
        "choice": None, "first_answer": None, "text_answer": None, "answer": None,
        "iav_passed": None, "iav_score": None, "icr_score": None, "error": None,
    }
    cands = list(state.get("candidates") or [])
    if len(cands) > ctx.max_candidates:
        events.append({"type": "candidates_truncated", "from": len(cands), "to": ctx.max_candidates})
        cands = cands[: ctx.max_candidates]
        update["candidates"] = cands
    if not cands:
        events.append({"type": "no_candidates"})
    elif ctx.prune_k and len(cands) > ctx.prune_k:
        ranking = retrieval_ranking({**state, "round": 1, "clues": []}, ctx, cands)
        keep = ranking.order[: ctx.prune_k]
        pruned = [cands[i] for i in sorted(keep)]
        events.append({"type": "candidates_pruned", "k": ctx.prune_k,
                       "dropped": [c["name"] for c in cands if c not in pruned]})
        cands = pruned
        update["candidates"] = cands

    context = state.get("context") or ""
    if len(context) > ctx.max_context_chars:
        update["context"] = context[: ctx.max_context_chars]
        events.append({"type": "context_truncated", "from_chars": len(context),
                       "to_chars": ctx.max_context_chars})

    ref = state.get("image")
    if not ref:
        status, reason = "absent", "the mention has no image"
    else:
        try:
            ctx.resources.images.load(ref, deadline=ctx.image_timeout)
            status, reason = "ok", None
        except ImageError as e:
            status, reason = e.kind, e.reason
            events.append({"type": "image_unusable", "kind": e.kind, "reason": e.reason})
    update["image_status"], update["image_reason"] = status, reason

    mode, why = choose_iav_mode(state, ctx, status == "ok")
    update["iav_mode"] = mode
    update["visual_available"] = mode is not None
    if why:
        events.append({"type": "iav_mode", "mode": mode, "reason": why})

    inp = ToolInput(image_ref=ref if status == "ok" else None,
                    precomputed=state.get("precomputed_clues"), settings=ctx)
    try:
        tools = resources.tools(ctx)
        update["tools_available"] = [n for n, t in tools.items() if t.available(inp)]
    except ValueError as e:
        update["tools_available"] = []
        events.append({"type": "tools_error", "reason": str(e)})
    update["events"] = events
    return update
