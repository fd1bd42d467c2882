"""Which clues a round carries, the round's query and a chosen candidate's text (the texts
themselves: :mod:`i2cr.texts`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..texts import entity_text, query_for
from ..tools.builtin import CLUE_KEYS, clue_text
from .state import Clue


def round_clues(state: Mapping[str, Any], mode: str) -> list[Clue]:
    """The clues this round's prompt and ICR query carry: in round 1 none; later either only the
    clue that opened the round (the paper) or every useful clue so far ('cumulative')."""
    clues = [c for c in state["clues"] if c.get("ok") and c.get("text", "").strip()]
    if state["round"] <= 1 or not clues:
        return []
    return clues if mode == "cumulative" else clues[-1:]


def round_inputs(state: Mapping[str, Any], settings: Any) -> tuple[str, str, list[Clue]]:
    """(mention, context, clues) of the current round: what its query is made of
    (:func:`round_query`) and what TES gives the ranker, which builds the same query from them."""
    return state["mention"], state["context"], round_clues(state, settings.query_clues)


def document_of(state: Mapping[str, Any]) -> list[str]:
    """The other mentions of the state's document, as the ranker and its NIL rule read them
    ([] without any)."""
    doc = state.get("document_mentions")
    return doc if isinstance(doc, list) else []


def round_query(state: Mapping[str, Any], settings: Any) -> str:
    """The query TES's ranking and ICR compare with entity texts in the current round, built by
    :func:`~i2cr.texts.query_for` as the ranker builds it from :func:`round_inputs`. TES keeps it
    in the state's ``query`` (the ranker's own, ``Ranking.query``, when it ranked; this one when
    it did not); ICR scores its choice against that (never a query of its own)."""
    return query_for(*round_inputs(state, settings), settings)


def chosen_text(state: Mapping[str, Any], name: str) -> str:
    """The entity text of the candidate named ``name`` (TES's choice), which ICR and IAV score.

    ICR and IAV look the choice up by name rather than take its text from TES: it is cheap (a list
    of at most ``max_candidates``; the embedder encodes each distinct text once per run)."""
    cand = next(c for c in state["candidates"] if c["name"] == name)
    return entity_text(cand)


def clue_sequence(clues: dict[str, Any] | None, tool_names: Sequence[str]) -> list[Clue]:
    """The useful precomputed clues in the order VIF's fixed order would fetch them."""
    out: list[Clue] = []
    for tool in tool_names:
        text = clue_text((clues or {}).get(CLUE_KEYS.get(tool, ""))).strip()
        if text:
            out.append({"tool": tool, "text": text, "ok": True})
    return out
