"""A scripted chat model for driving the real compiled graph: it answers from a script, supports
``bind_tools`` and records every prompt and every tool list it was offered."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import Field, PrivateAttr


def tool_call(name: str, i: int = 0) -> dict[str, Any]:
    return {"name": name, "args": {}, "id": f"call_{name}_{i}", "type": "tool_call"}


class ScriptedChatModel(BaseChatModel):
    """Each call pops the next script item: a string (TES answer), an AIMessage (e.g. with
    tool_calls), an Exception (raised), or a callable ``(messages, tools) -> item``."""

    script: list[Any] = Field(default_factory=list)
    _calls: list[dict[str, Any]] = PrivateAttr(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "scripted"

    @property
    def calls(self) -> list[dict[str, Any]]:
        return self._calls

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any):
        return self.bind(tools=[convert_to_openai_tool(t) for t in tools], **kwargs)

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        tools = [t["function"]["name"] for t in kwargs.get("tools") or []]
        self._calls.append({"messages": [m.content for m in messages], "tools": tools})
        if not self.script:
            raise RuntimeError("ScriptedChatModel: script exhausted")
        item = self.script.pop(0)
        if callable(item) and not isinstance(item, type):
            item = item(messages, tools)
        if isinstance(item, BaseException):
            raise item
        msg = item if isinstance(item, AIMessage) else AIMessage(content=str(item))
        return ChatResult(generations=[ChatGeneration(message=msg)])
