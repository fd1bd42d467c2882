"""The texts the embedder and CLIP compare: the entity text and the ICR / ranker queries.

One owner for each: TES's ranker, ICR, IAV, prefetching and calibration all build their texts
here, so a text encoded ahead of time is exactly the one a node asks for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .data import MAX_NAME_CHARS
from .names import clean


def entity_text(cand: Mapping[str, Any]) -> str:
    """Entity name (title form undone: ``St._Louis`` -> ``St. Louis``) + description (WikiMEL
    descriptions already start with 'Name: ...')."""
    name, desc = clean(str(cand.get("name", ""))), (cand.get("desc") or "").strip()
    if not desc:
        return name
    if desc.lower().startswith(("name: " + name).lower()):
        return desc
    return f"{name}. {desc}"


def cut_context(context: str | None, settings: Any) -> str:
    """The context as a run uses it: cut to ``max_context_chars`` (the one cut: the prepare node's
    state, the queries and the fine-tuning prompts all take it from here)."""
    return (context or "")[: settings.max_context_chars]


def icr_query(mention: str, context: str, clues: Sequence[Mapping[str, Any]], prefix: str = "") -> str:
    q = f"{clean(mention)}. {context}".strip()
    for c in clues:
        q += f" {c['text'].strip()}"
    return prefix + q


def query_for(mention: str, context: str, clues: Sequence[Mapping[str, Any]], settings: Any) -> str:
    """The ICR/TES query as a run builds it: the context cut to ``max_context_chars`` (as the
    prepare node does) and the embedder's query prefix."""
    return icr_query(mention, cut_context(context, settings), clues, settings.embed_query_prefix)


DOCUMENT_QUERY_NAMES = 40  # the document's names put in its query, first seen first


def document_query(document: Sequence[str], settings: Any) -> str:
    """The other names of the mention's document, once each, as one query ('' without any): what
    the ranker compares with each entity text for the document's topic ('Crimson Tide, Nick
    Saban' tells the football team from the state)."""
    names = list(dict.fromkeys(n.strip()[:MAX_NAME_CHARS] for n in document
                               if isinstance(n, str) and n.strip()))
    return settings.embed_query_prefix + ", ".join(names[:DOCUMENT_QUERY_NAMES]) if names else ""


def context_query(context: str, settings: Any) -> str:
    """The context alone (cut, with the query prefix): what the ranker compares with each entity
    text (topical fit) and with each candidate's occupation."""
    return settings.embed_query_prefix + cut_context(context, settings)
