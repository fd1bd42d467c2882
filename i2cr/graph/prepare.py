"""The first node: check the input, look at the image, decide what IAV can score and which visual
tools this mention can use. Problems become recorded reasons, never crashes.

The image is loaded only when a step of the run may read it (:func:`reads_image`): IAV by CLIP, or
a visual tool that is not a precomputed clue, in a mention IAV can check (VIF runs only after
IAV). Otherwise it is not fetched at all (``image_status: "unused"``): an image nothing reads
cannot fail the run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from langgraph.runtime import Runtime

from ..embeddings import ModelUnavailable
from ..images import ImageError
from ..texts import cut_context
from ..tools import ToolInput
from . import resources
from .context import Context, IavMode, settings_of
from .events import Event
from .state import CandidateDict, State
from .tes import retrieval_ranking


def first_round() -> dict[str, Any]:
    """The bookkeeping every mention starts from (the keys of :class:`~.state.Prepared` that do not
    depend on the input): round 1, nothing tried, counted, gathered or answered yet."""
    return {"round": 1, "llm_calls": 0, "reflections": 0, "excluded": [], "tried": [], "clues": [],
            "tools_used": [], "vif_rounds": 0, "rounds": [], "choice": None,
            "first_answer": None, "text_answer": None, "answer": None, "iav_passed": None,
            "iav_score": None, "icr_score": None, "error": None}


def choose_iav_mode(modes: Sequence[IavMode], image_ok: bool, clip_problem: str | None,
                    clues: Mapping[str, Any] | None) -> tuple[IavMode | None, str | None]:
    """(mode, reason): 'clip', 'caption' or None, and why a better mode was not possible, from the
    modes the settings allow (best first), whether the image loaded, why CLIP cannot load (None:
    it loads; asked only with 'clip' allowed and a usable image) and the precomputed clues."""
    if not modes:
        return None, "IAV switched off"
    reason = None
    if "clip" in modes:
        if image_ok:
            if clip_problem is None:
                return "clip", None
            reason = f"CLIP unavailable: {clip_problem}"
        else:
            reason = "no usable image for CLIP"
        if "caption" not in modes:
            return None, reason
    clues = clues or {}
    if any(str(clues.get(k) or "").strip() for k in ("Caption", "Tags")):
        return "caption", reason
    return None, (reason + "; " if reason else "") + "no caption or tags for the caption bridge"


def clip_problem(ctx: Context) -> str | None:
    """Why the run's CLIP cannot load, or None when it does (loading it, once per run)."""
    try:
        resources.clip(ctx)
        return None
    except ModelUnavailable as e:
        return str(e)


def capped_candidates(state: State, ctx: Context) -> tuple[list[CandidateDict], list[Event]]:
    """(candidates, events): the input's candidates cut to ``max_candidates``, then, with
    ``prune_k``, to the ranker's top k (in their order)."""
    events: list[Event] = []
    cands = list(state.get("candidates") or [])
    if len(cands) > ctx.max_candidates:
        events.append({"type": "candidates_truncated", "from": len(cands), "to": ctx.max_candidates})
        cands = cands[: ctx.max_candidates]
    if not cands:
        events.append({"type": "no_candidates"})
    elif ctx.prune_k and len(cands) > ctx.prune_k:
        ranking = retrieval_ranking(
            {**state, "round": 1, "clues": [], "context": state.get("context") or ""}, ctx, cands)
        keep = ranking.order[: ctx.prune_k]
        pruned = [cands[i] for i in sorted(keep)]
        events.append({"type": "candidates_pruned", "k": ctx.prune_k,
                       "dropped": [c["name"] for c in cands if c not in pruned]})
        cands = pruned
    return cands, events


def capped_context(state: State, ctx: Context) -> tuple[str, list[Event]]:
    """(context, events): the input's context cut to ``max_context_chars``."""
    context = state.get("context") or ""
    cut = cut_context(context, ctx)
    if len(cut) < len(context):
        return cut, [{"type": "context_truncated", "from_chars": len(context),
                      "to_chars": ctx.max_context_chars}]
    return context, []


def reads_image(mode: IavMode | None, ctx: Context, inp: ToolInput) -> bool:
    """Whether a mention whose IAV mode, given a usable image, is ``mode`` would have its image
    read: by IAV with CLIP, or, when IAV can check it at all and VIF has rounds (VIF runs only
    after IAV; ``max_vif_rounds`` 0: never), by one of the run's visual tools on ``inp`` (the
    mention's image reference and precomputed clues): any but those that answer it from a
    precomputed clue (:meth:`~i2cr.tools.base.VisualTool.reads_image`; a backend chain, ``tool_backend=auto``,
    answers from the sample's clue when it has one)."""
    if mode == "clip":
        return True
    if mode is None or ctx.vif_cap == 0:
        return False
    try:
        tools = resources.tools(ctx)
    except ValueError:
        return False  # no tool can run (available_tools records why)
    return any(t.reads_image(inp) for t in tools.values())


def unused_reason(mode: IavMode | None, why: str | None, ctx: Context) -> str:
    """The ``image_reason`` of an image not loaded because nothing reads it (IAV's ``mode`` and
    why no better one, as :func:`choose_iav_mode` gives them for a usable image)."""
    if mode is None:
        return f"not loaded: no step of this run reads it ({why or 'IAV cannot run'})"
    tools = "no VIF round (max_vif_rounds 0)" if ctx.vif_cap == 0 else "only precomputed clue tools"
    return ("not loaded: no step of this run reads it (IAV by caption, " + tools
            + (f"; {why}" if why else "") + ")")


def image_status(state: State, ctx: Context) -> tuple[str, str | None, list[Event]]:
    """(status, reason, events): whether the mention's image loads (into the run's images)."""
    ref = state.get("image")
    if not ref:
        return "absent", "the mention has no image", []
    try:
        ctx.resources.images.load(ref, deadline=ctx.image_timeout)
        return "ok", None, []
    except ImageError as e:
        return e.kind, e.reason, [{"type": "image_unusable", "kind": e.kind, "reason": e.reason}]


def available_tools(state: State, ctx: Context, image_ok: bool) -> tuple[list[str], list[Event]]:
    """(tool names, events): the run's tools that can run for this mention, in fallback order."""
    inp = ToolInput(image_ref=state.get("image") if image_ok else None,
                    precomputed=state.get("precomputed_clues"), settings=ctx)
    try:
        tools = resources.tools(ctx)
        return [n for n, t in tools.items() if t.available(inp)], []
    except ValueError as e:
        return [], [{"type": "tools_error", "reason": str(e)}]


def prepare(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """Reads the input (``candidates``, ``context``, ``image``, ``precomputed_clues``); writes
    every key of :class:`~.state.Prepared` (:func:`first_round`, ``image_status``,
    ``image_reason``, ``iav_mode``, ``visual_available``, ``tools_available``), ``candidates``
    and ``context`` (cut to their caps), ``path`` and ``events``."""
    ctx = settings_of(runtime)
    cands, events = capped_candidates(state, ctx)
    context, context_events = capped_context(state, ctx)
    events += context_events
    modes, clues = ctx.resolved.iav_modes, state.get("precomputed_clues")
    problem = clip_problem(ctx) if "clip" in modes and state.get("image") else None
    # what IAV could do were the image usable: the image is loaded only when something reads it
    mode, why = choose_iav_mode(modes, True, problem, clues)
    status: str
    reason: str | None
    probe = ToolInput(image_ref=state.get("image"), precomputed=clues, settings=ctx)
    if state.get("image") and not reads_image(mode, ctx, probe):
        # CLIP's own words stay in the iav_mode event: they may name the run's files (a served
        # linker's model paths), and image_reason is in every record a server returns
        brief = choose_iav_mode(modes, True, problem and "see the iav_mode event", clues)[1]
        status, reason = "unused", unused_reason(mode, brief, ctx)
    else:
        status, reason, image_events = image_status(state, ctx)
        events += image_events
        mode, why = choose_iav_mode(modes, status == "ok", problem, clues)
    image_ok = status == "ok"
    if why:
        events.append({"type": "iav_mode", "mode": mode, "reason": why})

    tools, tool_events = available_tools(state, ctx, image_ok)
    events += tool_events
    return {"path": ["prepare"], **first_round(), "candidates": cands, "context": context,
            "image_status": status, "image_reason": reason, "iav_mode": mode,
            "visual_available": mode is not None, "tools_available": tools, "events": events}
