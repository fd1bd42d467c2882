"""The Python API: link one mention (``link``) or one loaded sample (``link_mention``).

``link_mention`` is a pure function of one sample and the settings (the models are the settings'
:class:`~i2cr.graph.resources.Resources`, shared by the mentions of a run, but no state crosses
mentions), so a distributed engine can map it over a corpus. ``link`` is one run: given keyword
settings it builds them, and so its models, anew; given ``settings``, it uses theirs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from .data import (
    Candidate,
    DataError,
    LabelError,
    Mention,
    document_names,
    parse_candidates,
    same_entity,
)
from .graph import Context, graph as default_graph
from .kb import open_kb
from .llm import check_backend
from .redact import error_text
from .trace import traced_invoke


def truncated_candidates(events: list[Any]) -> list[dict[str, Any]]:
    """The ``truncated`` entry of a candidate list cut to ``max_candidates`` (from prepare's
    ``candidates_truncated`` event, under its names: ``from`` candidates, the first ``to``
    ranked), or none when every candidate was ranked."""
    return [{"field": "candidates", "from": e["from"], "to": e["to"]} for e in events
            if isinstance(e, dict) and e.get("type") == "candidates_truncated"]


def result_record(m: Mention, out: dict[str, Any], elapsed: float) -> dict[str, Any]:
    """The JSON result of one mention: answer, NIL flag, path through the graph and scores."""
    rec: dict[str, Any] = {
        "id": m.id,
        "mention": m.mention,
        "answer": out.get("answer"),
        "is_nil": bool(out.get("is_nil")),
        "final_reason": out.get("final_reason"),
        "fallback": out.get("fallback"),
        "path": out.get("path") or [],
        "first_answer": out.get("first_answer"),
        "text_answer": out.get("text_answer"),
        "scores": {
            "icr": out.get("icr_score"),
            "text_icr": out.get("text_icr"),
            "iav": out.get("iav_score"),
            "iav_mode": out.get("iav_mode"),
            "iav_passed": out.get("iav_passed"),
        },
        "rounds": out.get("rounds") or [],
        "tools_used": out.get("tools_used") or [],
        "clues": out.get("clues") or [],
        "image_status": out.get("image_status"),
        "llm_calls": out.get("llm_calls", 0),
        "elapsed_s": round(elapsed, 4),
        "events": out.get("events") or [],
        "error": None,
    }
    if out.get("image_reason"):
        rec["image_reason"] = out.get("image_reason")
    cuts = list(m.truncations)  # fields cut to their caps when the mention was loaded
    cuts += truncated_candidates(rec["events"])  # and the candidate list cut to max_candidates
    if cuts:
        rec["truncated"] = cuts
    if m.label is not None:
        rec["gold"] = m.label
        rec["correct"] = same_entity(rec["answer"], m.label)
    return rec


def error_record(rid: str, err: BaseException, label: str | None = None) -> dict[str, Any]:
    """The record of a mention that was not linked: ``err`` its error (scrubbed), ``llm_calls``
    the LLM calls it made when an LLM call refused after every retry ended it
    (:class:`~i2cr.llm.LLMCallFailed`: the only error that comes with calls made)."""
    rec: dict[str, Any] = {"id": rid, "answer": None, "error": error_text(err)}
    calls = getattr(err, "llm_calls", None)
    if isinstance(calls, int) and calls > 0:
        rec["llm_calls"] = calls
    if label is not None or isinstance(err, LabelError):  # a bad gold label: gold null, wrong
        rec["gold"], rec["correct"] = label, False
    return rec


def is_result(rec: Any) -> bool:
    """Whether ``rec`` is a record :func:`result_record` or :func:`error_record` made (a line of
    a results file): an id, an answer and an error (None or its text)."""
    return isinstance(rec, dict) and all(k in rec for k in ("id", "answer", "error"))


def link_mention(m: Mention, settings: Context | None = None, *, graph: Any = None,
                 config: dict[str, Any] | None = None,
                 on_event: Callable[[str, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run the graph on one sample and return its result record, with its trace (built from the
    graph's stream; ``on_event`` sees each node visit, with its events, as it ends)."""
    g = graph or default_graph
    settings = settings or Context()
    t0 = time.perf_counter()
    out, trace = traced_invoke(g, m.to_input(), context=settings, config=config,
                               on_event=on_event)
    rec = result_record(m, out, time.perf_counter() - t0)
    rec["image"] = m.image_ref()
    rec["trace"] = trace
    return rec


def link(mention: str, context: str,
         candidates: Sequence[dict[str, Any] | str | Candidate] | None = None, *,
         image: str | None = None, allow_nil: bool = False, clues: dict[str, Any] | None = None,
         kb: str | None = None, document: Sequence[str] = (), settings: Context | None = None,
         **overrides: Any) -> dict[str, Any]:
    """Link one mention. ``candidates`` are dicts with ``name`` and ``desc`` (or plain names).

    >>> link("Jordan", "Jordan dunks in the 1991 finals", [{"name": "Michael Jordan", "desc": ...},
    ...      {"name": "Jordan (country)", "desc": ...}], llm="openai:gpt-4o")   # doctest: +SKIP

    ``document``: the other mentions of the same document, as written; a surname or an initialism
    is then read as the fuller name the document gives (``Walters`` after ``Barbara Walters``).

    Without candidates, give a knowledge base (``kb="KBDIR"``, built with ``i2cr kb build``):
    the graph's retrieve node generates them.

    >>> link("Jordan", "Jordan dunks in the 1991 finals", kb="my_kb")   # doctest: +SKIP

    Raises :class:`i2cr.llm.BackendError` when the LLM backend cannot be set up or reached,
    :class:`i2cr.kb.KBError` when the KB is missing, unfinished or made with another embedder.
    """
    if kb is not None:
        overrides = {**overrides, "kb": kb}
    if settings is None:
        settings = Context.from_overrides(overrides)
    elif set(overrides) - {"kb"}:
        raise TypeError("pass either settings or keyword overrides, not both")
    elif kb is not None:
        settings = replace(settings, kb=kb)
    check_backend(settings)  # a bad spec, key or endpoint fails here, not as silent fallbacks
    if settings.kb:
        open_kb(settings.kb, settings.embedder)  # missing or mismatched: refused before linking
    elif candidates is None:
        raise TypeError("link() needs candidates, or a knowledge base (kb=...) to generate them")
    # a Candidate goes back to a dict so that parse_candidates checks it as it checks the dicts
    # (names stripped, duplicates dropped, priors checked); the graph's state then holds dicts
    raw = [c.to_dict() if isinstance(c, Candidate) else c for c in candidates or []]
    cands = parse_candidates(raw, source="link()", rid="0",
                             allow_empty=allow_nil or bool(settings.kb))
    if not mention or not mention.strip():
        raise DataError("is empty", source="link()", field="mention")
    doc = document_names(document, source="link()", field="document")  # None: no document
    m = Mention(id="0", mention=mention, context=context or "", candidates=cands, image=image,
                clues=clues, allow_nil=allow_nil, document=doc)
    return link_mention(m, settings)
