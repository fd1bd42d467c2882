"""TES, target entity selection: the LLM picks one candidate (or NIL), mapped with rapidfuzz.

Candidates ICR rejected in this round are left out of the prompt. An answer that maps to no
candidate is recorded and asked again (``tes_retries``); if it still maps to nothing, or the LLM
fails, the candidate closest to the mention by embedding similarity is taken and the fallback is
recorded. The prompt's layout is the ``prompt_profile``'s (:mod:`i2cr.prompts.profiles`).

``tes_strategy``: ``llm`` asks the LLM every time, ``retrieval`` the ranker, ``hybrid`` the ranker
every time and the LLM once at the end, among the ranker's top-k, when the ranker is unsure of the
answer that stands (:mod:`i2cr.graph.review`). Where the mention allows NIL, every strategy answers
NIL by the ranker's rule (:func:`rule_nil`) without asking the LLM.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from langgraph.runtime import Runtime

from ..data import NIL
from ..llm import LLMCallFailed, ask_tes
from ..matching import map_answer
from ..prompts import profile
from ..ranker import Ranking
from ..ranker.model import names_borne, nil_rule
from ..redact import error_text
from ..texts import entity_text
from . import resources
from .context import Context, Strategy, settings_of
from .events import Event, LlmError, TesAnswer, TesHybrid, prompt_text, tokens_of
from .state import CandidateDict, Ranked, State
from .texts import document_of, round_clues, round_inputs, round_query


def allowed_candidates(state: State) -> list[CandidateDict]:
    """The candidates TES may offer: every candidate ICR has not rejected in this round."""
    excluded = set(state["excluded"])
    return [c for c in state["candidates"] if c["name"] not in excluded]


def rule_nil(state: Mapping[str, Any]) -> str | None:
    """Why the mention's candidates cannot hold the referent by the ranker's rule
    (:func:`i2cr.ranker.model.nil_rule`: a pronoun, a fuller name in the document that no
    candidate is, a proper name no candidate's title bears), where the mention allows NIL; None
    where it does not, or the rule does not apply. The rule reads every candidate of the
    mention, those ICR rejected in this round too: a rejection does not make the document's
    fuller name 'no candidate'."""
    cands = state.get("candidates") or []
    if not state.get("allow_nil") or not cands:
        return None
    return nil_rule(state["mention"], rule_names(state), document_of(state))


def rule_names(state: Mapping[str, Any]) -> list[str]:
    """The names the NIL rule reads: every name every candidate of the mention bears
    (:func:`i2cr.ranker.model.names_borne`; :func:`rule_nil`)."""
    return names_borne(state.get("candidates") or [])


def rank_by_embedding(query: str, ctx: Context, cands: Sequence[Mapping[str, Any]]) -> list[float]:
    """The similarity of the round's ``query`` with each candidate's entity text."""
    return resources.embedder(ctx).similarity(query, [entity_text(c) for c in cands])


def retrieval_ranking(state: State, ctx: Context, cands: Sequence[Mapping[str, Any]]) -> Ranking:
    """The ranker's view of ``cands`` in this round (mention, context, round clues)."""
    return resources.ranker(ctx).rank(*round_inputs(state, ctx), cands, document_of(state),
                                      rule_names=rule_names(state))


def ranked(state: State, cands: Sequence[Mapping[str, Any]], r: Ranking) -> Ranked:
    """What the state keeps of a ranking (for the hybrid's review to reuse)."""
    return {"round": state["round"], "offered": [c["name"] for c in cands], "order": r.order,
            "probs": [float(p) for p in r.probs]}


def _answered(state: State, query: str, choice: str | None, update: dict[str, Any]
              ) -> dict[str, Any]:
    """A TES answer's update: ``path``, ``choice``, the round's ``query`` (which ICR scores the
    choice against), ``first_answer`` when it is the first."""
    out: dict[str, Any] = {"path": ["tes"], "choice": choice, "query": query, **update}
    if state["first_answer"] is None:
        out["first_answer"] = choice
    return out


# the two algorithms (and the hybrid of both), chosen by the settings' strategy -------------------

def tes(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """The TES node: the strategy's algorithm (:func:`tes_algorithm`) answers."""
    ctx = settings_of(runtime)
    return tes_algorithm(ctx.strategy)(state, ctx)


def tes_algorithm(strategy: Strategy) -> Callable[[State, Context], dict[str, Any]]:
    """The TES of a strategy: the ranker's (``retrieval``), the ranker's recording its ranking for
    the review (``hybrid``), or the LLM's (``llm``)."""
    return {"retrieval": tes_retrieval, "hybrid": tes_hybrid, "llm": tes_llm_strategy}[strategy]


def tes_retrieval(state: State, ctx: Context, ranking: Ranking | None = None) -> dict[str, Any]:
    """The ranker's answer over the allowed candidates (``ranking``: theirs, when already made).

    Reads ``mention``, ``context``, ``candidates``, ``excluded``, ``round``, ``clues``,
    ``allow_nil``, ``document_mentions``, ``first_answer``; writes ``path``, ``choice``
    (NIL when nothing is left, or when NIL is allowed and the ranker says so), ``query`` (the
    round's: the one the ranker compared, ``Ranking.query``; with no candidate left,
    :func:`~i2cr.graph.texts.round_query`), ``llm_answer`` (None), ``first_answer`` (the first
    time) and a ``tes_answer`` event."""
    cands = allowed_candidates(state)
    ev: TesAnswer = {"type": "tes_answer", "round": state["round"],
                     "strategy": "retrieval", "method": "retrieval",
                     "offered": [c["name"] for c in cands]}
    if not cands:
        choice = NIL
        ev["top"] = []
        query = round_query(state, ctx)
    else:
        r = ranking or retrieval_ranking(state, ctx, cands)
        choice, query = cands[r.best]["name"], r.query
        table = r.table()
        ev.update({"top": table[:3], "scores": table, "model": r.model,
                   "p_link": round(r.p_link, 4), "nil_threshold": r.nil_threshold})
        if state.get("allow_nil") and r.nil:
            choice = NIL
            ev["nil_reason"] = r.nil_rule or f"p_link {r.p_link:.3f} < {r.nil_threshold}"
    ev["mapped"] = choice
    return _answered(state, query, choice, {"llm_answer": None, "events": [ev]})


def tes_hybrid(state: State, ctx: Context) -> dict[str, Any]:
    """The ranker answers every TES of the hybrid, re-choices after ICR and clue rounds included;
    the LLM is asked at most once per mention, by the ``review`` node, about the answer that
    stands. A ``tes_hybrid`` event records the ranker's top probability over the allowed
    candidates beside ``hybrid_threshold`` (``unsure``: below it).

    Reads what :func:`tes_retrieval` reads; writes what it writes, the ``tes_hybrid`` event
    before its own, and ``ranked`` (the ranking, which the review reuses)."""
    cands = allowed_candidates(state)
    if not cands:
        return tes_retrieval(state, ctx)
    r = retrieval_ranking(state, ctx, cands)
    p = float(r.probs[r.best])
    update = tes_retrieval(state, ctx, r)
    ev: TesHybrid = {"type": "tes_hybrid", "node": "tes", "round": state["round"],
                     "path": "ranker", "p": round(p, 4), "threshold": ctx.hybrid_threshold,
                     "unsure": p < ctx.hybrid_threshold}
    update["events"] = [ev, *update["events"]]
    update["ranked"] = ranked(state, cands, r)
    return update


def tes_llm_strategy(state: State, ctx: Context) -> dict[str, Any]:
    """TES of ``tes_strategy=llm``: NIL with the rule's reason (``nil_reason``) and no LLM call
    where the mention allows NIL and the ranker's rule says the candidates cannot hold its
    referent (:func:`rule_nil`, as the ranker answers it in the other strategies), else the LLM's
    choice (:func:`tes_llm`)."""
    cands = allowed_candidates(state)
    rule = rule_nil(state)
    if rule is None:
        return tes_llm(state, ctx, cands)
    ev: TesAnswer = {"type": "tes_answer", "round": state["round"], "strategy": "llm",
                     "method": "nil_rule", "offered": [c["name"] for c in cands],
                     "mapped": NIL, "nil_reason": rule}
    return _answered(state, round_query(state, ctx), NIL, {"llm_answer": None, "events": [ev]})


def tes_llm(state: State, ctx: Context, cands: list[CandidateDict] | None = None,
            fallback: str | None = None, node: str = "tes") -> dict[str, Any]:
    """The LLM chooses among ``cands`` (default: every candidate ICR has not rejected); when it
    fails or names none of them, ``fallback`` stands (default: the closest by embedding).
    ``node``: the graph node asking, named in its events.

    Reads ``mention``, ``context``, ``candidates``, ``excluded``, ``round``, ``clues``,
    ``allow_nil``, ``llm_calls``, ``first_answer``; writes ``path``, ``choice``, ``query`` (the
    round's, :func:`~i2cr.graph.texts.round_query`: the fallback's), ``llm_answer`` (the last raw
    answer), ``llm_calls`` (counted up), ``first_answer`` (the first time) and its events (each
    answer, each error, the fallback taken)."""
    cands = allowed_candidates(state) if cands is None else cands
    query = round_query(state, ctx)
    choice, how, raw, calls, events = ask_llm(state, ctx, cands, node)
    if choice is None:
        choice, how = fallback_choice(query, ctx, cands, fallback)
        events.append({"type": "tes_fallback", "choice": choice, "method": how})
    return _answered(state, query, choice, {"llm_answer": raw,
                                            "llm_calls": state["llm_calls"] + calls,
                                            "events": events})


def tes_messages(state: State, ctx: Context, cands: list[CandidateDict],
                 retry_note: str = "") -> list[Any]:
    """The TES prompt of the run's ``prompt_profile`` for this round's view of ``cands``."""
    return profile(ctx.prompt_profile).build(
        mention=state["mention"], context=state["context"], candidates=cands,
        excluded=state["excluded"], clues=round_clues(state, ctx.query_clues),
        allow_nil=bool(state.get("allow_nil")), desc_chars=ctx.desc_chars, retry_note=retry_note)


def ask_llm(state: State, ctx: Context, cands: list[CandidateDict], node: str
            ) -> tuple[str | None, str | None, str | None, int, list[Event]]:
    """(choice, how it was mapped, last raw answer, LLM calls made, events): the LLM asked to
    choose among ``cands``, again with the profile's retry note (``tes_retries`` times) while its
    answer maps to none of them. ``choice`` None: it never named one, or could not be asked."""
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
        messages = tes_messages(state, ctx, cands, note)
        t0 = time.perf_counter()
        try:
            msg, raw, asked = ask_tes(chat, messages, names, allow_nil=allow_nil, mode=ctx.tes_answer)
        except LLMCallFailed as e:  # refused after every retry: the mention becomes an error
            e.llm_calls = state["llm_calls"] + calls + 1  # record, counting its calls, this one too
            raise
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
        answer: TesAnswer = {"type": "tes_answer", "round": state["round"],
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
    return choice, how, raw, calls, events


def fallback_choice(query: str, ctx: Context, cands: list[CandidateDict],
                    fallback: str | None) -> tuple[str, str]:
    """(choice, method) when the LLM named no candidate: ``fallback`` when given, else the
    candidate closest to this round's ``query`` by embedding, else NIL (none left)."""
    if fallback is not None:
        return fallback, "ranker_fallback"
    if cands:
        sims = rank_by_embedding(query, ctx, cands)
        best = max(range(len(cands)), key=lambda i: sims[i])
        return cands[best]["name"], "embedding_fallback"
    return NIL, "no_candidates_left"
