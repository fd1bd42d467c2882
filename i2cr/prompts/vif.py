"""The VIF prompt: the current answer failed visual verification; ask for one visual tool."""

from __future__ import annotations

from collections.abc import Sequence

from langchain_core.messages import HumanMessage, SystemMessage

VIF_SYSTEM_PROMPT = (
    "You help an entity linker verify its answer against an image. You cannot see the image, but "
    "you can call visual tools that describe it. Call exactly one tool: the one most likely to "
    "tell whether the image shows the chosen entity."
)


def build_vif_messages(*, mention: str, context: str, answer: str | None, score: float | None,
                       threshold: float, used: Sequence[str], available: Sequence[str]) -> list:
    s = "no score" if score is None else f"{score:.1f} (threshold {threshold:.1f})"
    body = (f"Mention: {mention}\nContext: {context}\nCurrent answer: {answer}\n"
            f"Image-text agreement for this answer: {s}, too low to accept it.\n")
    if used:
        body += f"Tools already used: {', '.join(used)}.\n"
    body += f"Call one of: {', '.join(available)}."
    return [SystemMessage(VIF_SYSTEM_PROMPT), HumanMessage(body)]
