"""TES, target entity selection: the LLM picks one candidate (or NIL), mapped with rapidfuzz.

Candidates ICR rejected in this round are left out of the prompt. An answer that maps to no
candidate is recorded and asked again (``tes_retries``); if it still maps to nothing, or the LLM
fails, the candidate closest to the mention by embedding similarity is taken and the fallback is
recorded. The prompt's layout is the ``prompt_profile``'s (:mod:`i2cr.prompts.profiles`).

``tes_strategy``: ``llm`` asks the LLM every time, ``retrieval`` the ranker, ``hybrid`` the ranker
every time and the LLM once at the end, among the ranker's top-k, when the ranker is unsure of the
answer that stands (:mod:`i2cr.graph.review`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, cast

from langgraph.runtime import Runtime

from ..data import NIL
from ..llm import LLMCallFailed, ask_tes
from ..matching import map_answer
from ..prompts import profile
from ..ranker import Ranking
from ..redact import error_text
from ..texts import entity_text
from . import resources
from .context import Context, settings_of
from .events import Event, LlmError, TesAnswer, TesHybrid, prompt_text, tokens_of
from .state import CandidateDict, State
from .texts import round_clues, round_query


def allowed_candidates(state: State) -> list[CandidateDict]:
    excluded = set(state.get("excluded") or [])
    return [c for c in state.get("candidates") or [] if c["name"] not in excluded]


def rank_by_embedding(state: State, ctx: Context, cands: Sequence[Mapping[str, Any]]) -> list[float]:
    emb = resources.embedder(ctx)
    q = round_query(state, ctx)
    return emb.similarity(q, [entity_text(c) for c in cands])


def retrieval_ranking(state: State, ctx: Context, cands: Sequence[Mapping[str, Any]]) -> Ranking:
    """The ranker's view of ``cands`` in this round (mention, context, round clues)."""
    doc = state.get("document_mentions")
    return resources.ranker(ctx).rank(state["mention"], state.get("context", ""),
                                      round_clues(state, ctx.query_clues), cands,
                                      doc if isinstance(doc, list) else ())


def tes_retrieval(state: State, ctx: Context, ranking: Ranking | None = None) -> dict[str, Any]:
    """The ranker's answer over the allowed candidates (``ranking``: theirs, when already made)."""
    cands = allowed_candidates(state)
    ev: TesAnswer = {"type": "tes_answer", "round": state.get("round", 1),
                     "strategy": "retrieval", "method": "retrieval",
                     "offered": [c["name"] for c in cands]}
    if not cands:
        choice = NIL
        ev["top"] = []
    else:
        r = ranking or retrieval_ranking(state, ctx, cands)
        choice = cands[r.best]["name"]
        table = r.table()
        ev.update({"top": table[:3], "scores": table, "model": r.model,
                   "p_link": round(r.p_link, 4), "nil_threshold": r.nil_threshold})
        if state.get("allow_nil") and r.nil:
            choice = NIL
            ev["nil_reason"] = f"p_link {r.p_link:.3f} < {r.nil_threshold}"
    ev["mapped"] = choice
    update: dict[str, Any] = {"path": ["tes"], "choice": choice, "llm_answer": None, "events": [ev]}
    if state.get("first_answer") is None:
        update["first_answer"] = choice
    return update


def _text(msg: Any) -> str:
    content = getattr(msg, "content", msg)
    if isinstance(content, list):  # content blocks
        return " ".join(b.get("text", "") if isinstance(b, dict) else str(b) for b in content)
    return str(content or "")


def tes(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    ctx = settings_of(runtime)
    if ctx.strategy == "retrieval":
        return tes_retrieval(state, ctx)
    if ctx.strategy == "hybrid":
        return tes_hybrid(state, ctx)
    return tes_llm(state, ctx)


def tes_hybrid(state: State, ctx: Context) -> dict[str, Any]:
    """The ranker answers every TES of the hybrid, re-choices after ICR and clue rounds included;
    the LLM is asked at most once per mention, by the ``review`` node, about the answer that
    stands. A ``tes_hybrid`` event records the ranker's top probability over the allowed
    candidates beside ``hybrid_threshold`` (``unsure``: below it)."""
    cands = allowed_candidates(state)
    if not cands:
        return tes_retrieval(state, ctx)
    r = retrieval_ranking(state, ctx, cands)
    p = float(r.probs[r.best])
    update = tes_retrieval(state, ctx, r)
    ev: TesHybrid = {"type": "tes_hybrid", "node": "tes", "round": state.get("round", 1),
                     "path": "ranker", "p": round(p, 4), "threshold": ctx.hybrid_threshold,
                     "unsure": p < ctx.hybrid_threshold}
    update["events"] = [ev, *update["events"]]
    return update


def tes_llm(state: State, ctx: Context, cands: list[CandidateDict] | None = None,
            fallback: str | None = None, node: str = "tes") -> dict[str, Any]:
    """The LLM chooses among ``cands`` (default: every candidate ICR has not rejected); when it
    fails or names none of them, ``fallback`` stands (default: the closest by embedding).
    ``node``: the graph node asking, named in its events."""
    cands = allowed_candidates(state) if cands is None else cands
    prompts = profile(ctx.prompt_profile)
    allow_nil = bool(state.get("allow_nil"))
    names = [c["name"] for c in cands]
    events: list[Event] = []
    calls = 0
    choice, raw, how = None, None, None
    note = ""
    chat = None
    try:
        chat = resources.chat_model(ctx)
    except Exception as e:  # noqa: BLE001 - a backend that cannot start is recorded, not fatal
        events.append({"type": "llm_error", "node": node, "error": error_text(e)})
    for attempt in range(1 + max(0, ctx.tes_retries)):
        if chat is None:
            break
        messages = prompts.build(
            mention=state["mention"], context=state.get("context", ""), candidates=cands,
            excluded=state.get("excluded") or [], clues=round_clues(state, ctx.query_clues),
            allow_nil=allow_nil, desc_chars=ctx.desc_chars, retry_note=note)
        t0 = time.perf_counter()
        try:
            msg, raw, asked = ask_tes(chat, messages, names, allow_nil=allow_nil, mode=ctx.tes_answer)
        except LLMCallFailed:
            raise  # refused after every retry: the mention becomes an error record
        except Exception as e:  # noqa: BLE001
            calls += 1
            failed: LlmError = {"type": "llm_error", "node": node, "attempt": attempt,
                                "error": error_text(e)[:300],
                                "latency_s": round(time.perf_counter() - t0, 3)}
            if ctx.trace_prompts:
                failed["prompt"] = prompt_text(messages)
            events.append(failed)
            continue
        calls += 1
        m = map_answer(raw, names, allow_nil=allow_nil)
        answer: TesAnswer = {"type": "tes_answer", "round": state.get("round", 1),
                             "attempt": attempt, "raw": raw, "mapped": m.name, "method": m.method,
                             "score": round(m.score, 1), "offered": names,
                             "latency_s": round(time.perf_counter() - t0, 3),
                             "tokens": tokens_of(msg), **cast(TesAnswer, asked)}
        if ctx.trace_prompts:
            answer["prompt"] = prompt_text(messages)
        events.append(answer)
        if m.name is not None:
            choice, how = m.name, m.method
            break
        events.append({"type": "unmappable_answer", "raw": raw[:200]})
        note = prompts.retry_note
    if choice is None:
        if fallback is not None:
            choice, how = fallback, "ranker_fallback"
        elif cands:
            sims = rank_by_embedding(state, ctx, cands)
            best = max(range(len(cands)), key=lambda i: sims[i])
            choice, how = cands[best]["name"], "embedding_fallback"
        else:
            choice, how = NIL, "no_candidates_left"
        events.append({"type": "tes_fallback", "choice": choice, "method": how})
    update: dict[str, Any] = {
        "path": ["tes"], "choice": choice, "llm_answer": raw,
        "llm_calls": (state.get("llm_calls") or 0) + calls, "events": events,
    }
    if state.get("first_answer") is None:
        update["first_answer"] = choice
    return update
