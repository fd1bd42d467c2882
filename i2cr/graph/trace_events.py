"""Custom stream events: what nodes write for traces beyond the state.

They carry what the state does not keep (full prompts and raw LLM replies, tool outputs). Inside
:func:`i2cr.trace.traced_invoke` they go to the trace's collector; otherwise they go through
LangGraph's stream writer, so ``graph.stream(..., stream_mode="custom")`` sees them live, and with
``invoke`` they cost nothing. (The collector exists because asking LangGraph for the ``custom``
mode made every mention about 5.6 ms slower here, more than the graph's whole own work.)
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

from langgraph.config import get_stream_writer

from ..redact import scrub

# set by traced_invoke; LangGraph runs nodes with a copy of the caller's context, so nodes on
# worker threads see the same list
COLLECTOR: ContextVar[list[dict[str, Any]] | None] = ContextVar("i2cr_trace_collector",
                                                                default=None)


def emit(event: dict[str, Any]) -> None:
    """Send one custom event (its error text, if any, scrubbed of secrets first)."""
    if isinstance(event.get("error"), str) and event["error"]:
        event = {**event, "error": scrub(event["error"])}
    sink = COLLECTOR.get()
    if sink is not None:
        sink.append(event)
        return
    try:
        get_stream_writer()(event)
    except Exception:  # noqa: BLE001 - outside a graph run, or no writer: nothing to do
        pass


def tokens_of(msg: Any) -> int | None:
    """Total tokens of a chat-model reply, when the backend reports usage."""
    return (getattr(msg, "usage_metadata", None) or {}).get("total_tokens")


def prompt_text(messages: list[Any]) -> list[dict[str, str]]:
    return [{"role": getattr(m, "type", "?"), "content": str(getattr(m, "content", m))}
            for m in messages]
