"""The texts that the embedder and CLIP compare: the ICR query and the entity text."""

from __future__ import annotations

from typing import Any, Sequence

from .state import Clue


def entity_text(cand: dict[str, Any]) -> str:
    """Entity name + description (WikiMEL descriptions already start with 'Name: ...')."""
    name, desc = cand.get("name", ""), (cand.get("desc") or "").strip()
    if not desc:
        return name
    if desc.lower().startswith(("name: " + name).lower()):
        return desc
    return f"{name}. {desc}"


def round_clues(state: dict[str, Any], mode: str) -> list[Clue]:
    """The clues this round's prompt and ICR query carry: in round 1 none; later either only the
    clue that opened the round (the paper) or every useful clue so far ('cumulative')."""
    clues = [c for c in state.get("clues") or [] if c.get("ok") and c.get("text", "").strip()]
    if (state.get("round") or 1) <= 1 or not clues:
        return []
    return clues if mode == "cumulative" else clues[-1:]


def query_for(mention: str, context: str, clues: Sequence[Clue], settings: Any) -> str:
    """The ICR/TES query as a run builds it: the context cut to ``max_context_chars`` (as the
    prepare node does) and the embedder's query prefix. Prefetching uses it too, so the texts
    it encodes ahead are the ones the graph asks for."""
    return icr_query(mention, (context or "")[: settings.max_context_chars], clues,
                     settings.embed_query_prefix)


def round_query(state: dict[str, Any], settings: Any) -> str:
    """The query TES's ranking and ICR compare with entity texts in the current round."""
    return query_for(state["mention"], state.get("context", ""),
                     round_clues(state, settings.query_clues), settings)


def occupation_query(context: str, settings: Any) -> str:
    """The text the ranker compares with each candidate's occupation: the (cut) context."""
    return settings.embed_query_prefix + (context or "")[: settings.max_context_chars]


def clue_sequence(clues: dict[str, Any] | None, tool_names: Sequence[str]) -> list[Clue]:
    """The useful precomputed clues in the order VIF's fixed order would fetch them."""
    from ..tools.builtin import CLUE_KEYS, _clue_text

    out: list[Clue] = []
    for tool in tool_names:
        text = _clue_text((clues or {}).get(CLUE_KEYS.get(tool, ""))).strip()
        if text:
            out.append({"tool": tool, "text": text, "ok": True})
    return out


def icr_query(mention: str, context: str, clues: Sequence[Clue], prefix: str = "") -> str:
    q = f"{mention}. {context}".strip()
    for c in clues:
        q += f" {c['text'].strip()}"
    return prefix + q
