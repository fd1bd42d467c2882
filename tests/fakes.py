"""A scripted chat model for driving the real compiled graph: it answers from a script, supports
``bind_tools`` and records every prompt and every tool list it was offered. It lives in the
package (:mod:`i2cr.eval.scripted`), where the hybrid cost curve's oracle LLM uses it too."""

from __future__ import annotations

from i2cr.eval.scripted import Oracle, ScriptedChatModel, tool_call

__all__ = ["Oracle", "ScriptedChatModel", "tool_call"]
