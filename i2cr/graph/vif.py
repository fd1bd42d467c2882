"""VIF, visual iterative feedback: the answer failed IAV, so the LLM asks for one visual tool.

The LLM is bound to the unused, available tools with ``bind_tools``. Only the first tool call is
run, no tool runs twice for one mention, and tools read the image from the graph state. With no
tool call, an unknown tool, an LLM error, or ``vif_llm_choice`` off, the next unused tool in the
paper's order is taken and the state records why.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from langgraph.runtime import Runtime

from ..llm import LLMCallFailed
from ..prompts import build_vif_messages
from ..redact import error_text
from ..tools import ToolInput, ToolResult, VisualTool
from . import resources
from .context import Context, settings_of
from .events import Event, VifRequest, prompt_text, tokens_of
from .iav import threshold_for
from .state import State


def unused_tools(state: State) -> list[str]:
    used = set(state["tools_used"])
    return [t for t in state["tools_available"] if t not in used]


def vif(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """The VIF node: one visual tool, the LLM's pick (:func:`pick_tool`) or the next unused one in
    the fixed order, runs (:func:`run_tool`) and its clue opens the next round.

    Reads ``tools_used``, ``tools_available``, ``llm_calls``, ``vif_rounds`` and, to pick and run
    the tool, ``mention``, ``context``, ``choice``, ``iav_score``, ``iav_mode``, ``image``,
    ``image_status``, ``precomputed_clues``, ``round``, ``clues``; writes ``path``,
    ``llm_calls``, ``vif_rounds``, ``events``, ``last_clue_ok`` and, when a tool ran, what
    :func:`next_round` writes."""
    ctx = settings_of(runtime)
    tools = resources.tools(ctx)
    offered = [n for n in unused_tools(state) if n in tools]
    picked: str | None = None
    how, calls = "fixed_order", 0
    events: list[Event] = []
    if offered and ctx.llm_picks_tools:
        picked, how, calls, events = pick_tool(state, ctx, tools, offered)
    if picked is None and offered:
        picked = offered[0]
    update: dict[str, Any] = {"path": ["vif"], "llm_calls": state["llm_calls"] + calls,
                              "vif_rounds": state["vif_rounds"] + 1}
    if picked is None:
        events.append({"type": "vif_no_tool_left"})
        return {**update, "events": events, "last_clue_ok": False}
    res, tool_events = run_tool(state, ctx, picked, tools[picked], how)
    return {**update, "events": events + tool_events, **next_round(state, picked, res)}


def vif_messages(state: State, ctx: Context, offered: list[str]) -> list[Any]:
    """VIF's prompt: the answer that failed IAV, its score against the mode's threshold, the tools
    used and those offered."""
    return build_vif_messages(
        mention=state["mention"], context=state["context"], answer=state["choice"],
        score=state["iav_score"],
        threshold=threshold_for(ctx, state["iav_mode"]),
        used=state["tools_used"], available=offered)


def pick_tool(state: State, ctx: Context, tools: Mapping[str, VisualTool], offered: list[str]
              ) -> tuple[str | None, str, int, list[Event]]:
    """(tool, how it was picked, LLM calls, events): the LLM, bound to the ``offered`` tools, asked
    for one (tool None: it named none of them, or failed; ``how`` says which)."""
    messages = vif_messages(state, ctx, offered)
    events: list[Event] = []
    calls = 0
    t0 = time.perf_counter()
    try:
        bound = resources.chat_model(ctx).bind_tools([tools[n].as_langchain_tool() for n in offered])
        msg = bound.invoke(messages)
        calls += 1
        tool_calls = list(getattr(msg, "tool_calls", None) or [])
        requested = [tc.get("name") for tc in tool_calls]
        req: VifRequest = {"type": "vif_request", "offered": offered, "requested": requested,
                           "raw": str(getattr(msg, "content", "")),
                           "latency_s": round(time.perf_counter() - t0, 3),
                           "tokens": tokens_of(msg)}
        if ctx.trace_prompts:
            req["prompt"] = prompt_text(messages)
        events.append(req)
        picked, how, more = read_tool_calls(requested, offered)
        return picked, how, calls, events + more
    except LLMCallFailed as e:  # refused after every retry: the mention becomes an error record,
        e.llm_calls = state["llm_calls"] + calls + 1  # counting its calls, this one too
        raise
    except Exception as e:  # noqa: BLE001 - an LLM failure falls back to the fixed order
        calls += 1
        how = "fallback_llm_error"
        events.append({"type": "llm_error", "node": "vif",
                       "error": error_text(e)[:300]})
        return None, how, calls, events


def read_tool_calls(requested: list[Any], offered: list[str]
                    ) -> tuple[str | None, str, list[Event]]:
    """(tool, how, events) from the tool names the LLM called, in order: the first, when offered;
    None with the reason otherwise (no call, a tool not offered). Further calls are ignored."""
    events: list[Event] = []
    if not requested:
        return None, "fallback_no_tool_call", events
    if requested[0] not in offered:
        events.append({"type": "invalid_tool_call", "requested": requested[0],
                       "offered": offered})
        return None, "fallback_invalid_tool", events
    if len(requested) > 1:
        events.append({"type": "extra_tool_calls_ignored", "ignored": requested[1:]})
    return requested[0], "llm", events


def run_tool(state: State, ctx: Context, picked: str, tool: VisualTool, how: str
             ) -> tuple[ToolResult, list[Event]]:
    """(result, events): ``tool`` (named ``picked`` in the run's tools) run on the mention's image
    (when it loaded) and precomputed clues."""
    inp = ToolInput(image_ref=state.get("image") if state["image_status"] == "ok" else None,
                    precomputed=state.get("precomputed_clues"), settings=ctx)
    t0 = time.perf_counter()
    res = tool.run(inp)
    events: list[Event] = [{"type": "tool_call", "tool": picked, "how": how, "backend": res.backend,
               "ok": res.ok, "error": res.error, "result": res.text[:500],
               "latency_s": round(time.perf_counter() - t0, 3)}]
    return res, events


def next_round(state: State, picked: str, res: ToolResult) -> dict[str, Any]:
    """The tool's clue gathered and a new round opened: ``tools_used``, ``clues``,
    ``last_clue_ok`` (a clue with text), ``round`` (+1), and the round's ICR bookkeeping reset
    (``excluded``, ``tried``, ``reflections``)."""
    ok = res.ok and bool(res.text.strip())
    rnd = state["round"] + 1
    return {"tools_used": [*state["tools_used"], picked],
            "clues": [*state["clues"], {"tool": picked, "text": res.text, "ok": res.ok}],
            "last_clue_ok": ok, "round": rnd,
            # a new round starts: TES may offer every candidate again
            "excluded": [], "tried": [], "reflections": 0}
