"""Custom stream events: what nodes write through LangGraph's stream writer for traces.

They carry what the state does not keep (full prompts and raw LLM replies, tool outputs). With
``stream_mode="custom"`` a caller sees them live; with ``invoke`` they cost nothing.
"""

from __future__ import annotations

from typing import Any


def emit(event: dict[str, Any]) -> None:
    try:
        from langgraph.config import get_stream_writer

        get_stream_writer()(event)
    except Exception:  # noqa: BLE001 - outside a graph run, or no writer: nothing to do
        pass


def tokens_of(msg: Any) -> int | None:
    """Total tokens of a chat-model reply, when the backend reports usage."""
    return (getattr(msg, "usage_metadata", None) or {}).get("total_tokens")


def prompt_text(messages: list[Any]) -> list[dict[str, str]]:
    return [{"role": getattr(m, "type", "?"), "content": str(getattr(m, "content", m))}
            for m in messages]
