"""VIF, visual iterative feedback: the answer failed IAV, so the LLM asks for one visual tool.

The LLM is bound to the unused, available tools with ``bind_tools``. Only the first tool call is
run, no tool runs twice for one mention, and tools read the image from the graph state. With no
tool call, an unknown tool, an LLM error, or ``vif_llm_choice`` off, the next unused tool in the
paper's order is taken and the state records why.
"""

from __future__ import annotations

import time
from typing import Any

from langgraph.runtime import Runtime

from ..llm import LLMCallFailed
from ..prompts import build_vif_messages
from ..redact import error_text
from ..tools import ToolInput
from . import resources
from .context import Context, settings_of
from .events import Event, VifRequest, prompt_text, tokens_of
from .state import State


def unused_tools(state: State) -> list[str]:
    used = set(state.get("tools_used") or [])
    return [t for t in state.get("tools_available") or [] if t not in used]


def vif(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    ctx = settings_of(runtime)
    tools = resources.tools(ctx)
    offered = [n for n in unused_tools(state) if n in tools]
    events: list[Event] = []
    calls = 0
    picked: str | None = None
    how = "fixed_order"
    if offered and ctx.llm_picks_tools:
        messages = build_vif_messages(
            mention=state["mention"], context=state.get("context", ""), answer=state.get("choice"),
            score=state.get("iav_score"),
            threshold=ctx.iav_threshold if state.get("iav_mode") == "clip" else ctx.caption_threshold,
            used=state.get("tools_used") or [], available=offered)
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
            if not tool_calls:
                how = "fallback_no_tool_call"
            elif requested[0] not in offered:
                how = "fallback_invalid_tool"
                events.append({"type": "invalid_tool_call", "requested": requested[0],
                               "offered": offered})
            else:
                picked, how = requested[0], "llm"
                if len(tool_calls) > 1:
                    events.append({"type": "extra_tool_calls_ignored", "ignored": requested[1:]})
        except LLMCallFailed:
            raise  # refused after every retry: the mention becomes an error record
        except Exception as e:  # noqa: BLE001 - an LLM failure falls back to the fixed order
            calls += 1
            how = "fallback_llm_error"
            events.append({"type": "llm_error", "node": "vif",
                           "error": error_text(e)[:300]})
    if picked is None and offered:
        picked = offered[0]
    update: dict[str, Any] = {"path": ["vif"], "llm_calls": (state.get("llm_calls") or 0) + calls,
                              "vif_rounds": (state.get("vif_rounds") or 0) + 1}
    if picked is None:
        events.append({"type": "vif_no_tool_left"})
        return {**update, "events": events, "last_clue_ok": False}
    inp = ToolInput(image_ref=state.get("image") if state.get("image_status") == "ok" else None,
                    precomputed=state.get("precomputed_clues"), settings=ctx)
    t0 = time.perf_counter()
    res = tools[picked].run(inp)
    ok = res.ok and bool(res.text.strip())
    events.append({"type": "tool_call", "tool": picked, "how": how, "backend": res.backend,
                   "ok": res.ok, "error": res.error, "result": res.text[:500],
                   "latency_s": round(time.perf_counter() - t0, 3)})
    rnd = (state.get("round") or 1) + 1
    return {**update, "events": events,
            "tools_used": [*(state.get("tools_used") or []), picked],
            "clues": [*(state.get("clues") or []), {"tool": picked, "text": res.text, "ok": res.ok}],
            "last_clue_ok": ok, "round": rnd,
            # a new round starts: TES may offer every candidate again
            "excluded": [], "tried": [], "reflections": 0}
