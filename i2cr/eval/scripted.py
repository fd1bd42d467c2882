"""Scripted chat models, for driving the real compiled graph without a real LLM.

- :class:`ScriptedChatModel` answers from a script (the tests drive every route of the graph with
  it); it supports ``bind_tools`` and records every prompt and every tool list it was offered.
- :class:`Oracle` is an LLM of known accuracy for cost curves (``python -m i2cr.eval.hybrid
  --llm scripted:0.95``): it answers the gold with probability ``accuracy`` when the prompt offers
  the gold, otherwise a random offered candidate (a wrong one when it was drawn to miss), seeded per
  mention and call; asked for a visual tool, it calls the first one offered.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import Field, PrivateAttr

from ..data import NIL, Mention, same_entity
from ..prompts import profile


def tool_call(name: str, i: int = 0) -> dict[str, Any]:
    return {"name": name, "args": {}, "id": f"call_{name}_{i}", "type": "tool_call"}


class ScriptedChatModel(BaseChatModel):
    """Each call pops the next script item: a string (TES answer), an AIMessage (e.g. with
    tool_calls), an Exception (raised), or a callable ``(messages, tools) -> item``. Once the
    script is used up, ``then`` (such a callable) answers every further call, if given."""

    script: list[Any] = Field(default_factory=list)
    then: Any = None
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
        if self.script:
            item = self.script.pop(0)
        elif self.then is not None:
            item = self.then
        else:
            raise RuntimeError("ScriptedChatModel: script exhausted")
        if callable(item) and not isinstance(item, type):
            item = item(messages, tools)
        if isinstance(item, BaseException):
            raise item
        msg = item if isinstance(item, AIMessage) else AIMessage(content=str(item))
        return ChatResult(generations=[ChatGeneration(message=msg)])


class Oracle:
    """The answer policy of an LLM of known accuracy. It knows the gold of the mention it serves
    (``with oracle.serving(mention): ...`` around linking it) and reads the offered candidates
    back from the prompt of the run's ``prompt_profile``."""

    def __init__(self, accuracy: float, *, seed: int = 0, prompt_profile: str = "i2cr"):
        if not 0.0 <= accuracy <= 1.0:
            raise ValueError(f"accuracy must be within 0..1, not {accuracy}")
        self.accuracy, self.seed, self.profile = accuracy, seed, profile(prompt_profile)
        self._current: ContextVar[dict[str, Any] | None] = ContextVar("i2cr_oracle", default=None)

    def chat_model(self) -> ScriptedChatModel:
        return ScriptedChatModel(then=self)

    @contextmanager
    def serving(self, m: Mention) -> Iterator[None]:
        token = self._current.set({"id": m.id, "gold": m.label,
                                   "names": [c.name for c in m.candidates], "calls": 0})
        try:
            yield
        finally:
            self._current.reset(token)

    def __call__(self, messages: Sequence[BaseMessage], tools: Sequence[str]) -> Any:
        if tools:
            return AIMessage("", tool_calls=[tool_call(tools[0])])
        cur = self._current.get()
        if cur is None:
            raise RuntimeError("Oracle: no mention being served (use oracle.serving(mention))")
        cur["calls"] += 1
        h = hashlib.sha256(f"{self.seed}:{cur['id']}:{cur['calls']}".encode()).hexdigest()
        rng = random.Random(int(h[:16], 16))
        names, nil_ok = self.profile.offered(str(messages[-1].content), cur["names"])
        pool = names + ([NIL] if nil_ok else [])
        # the offered name the label names (as titles, data.same_entity: a label
        # 'Justin_Bieber' names the candidate 'Justin Bieber')
        gold = next((n for n in pool if same_entity(n, cur["gold"])), None)
        if gold is not None and rng.random() < self.accuracy:
            return self.profile.answer(gold)
        wrong = [n for n in pool if n != gold] or pool
        return self.profile.answer(rng.choice(wrong)) if wrong else "I cannot tell."
