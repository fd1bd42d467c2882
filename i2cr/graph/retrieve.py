"""Candidate generation from a knowledge base, for a mention that came without candidates.

The KB's alias table (the entities whose alias the mention's normalised surface is, with that
alias's prior p(entity | mention)), lexical search over the KB's names and aliases (the mention's
folded forms) and dense search with the ICR query (mention + context) are fused by reciprocal
rank, after the alias table's likeliest entities (:meth:`i2cr.kb.KB.generate`); the top
``kb_top_k`` entities become the candidates, with the alias's prior when the mention matched one.
The node's event keeps the generator's scores, and the names of the generated ranking down to
rank 50 (what recall@k is measured on). With ``kb_allow_nil`` (the default) the mention may be
NIL: nothing guarantees the KB holds its referent."""

from __future__ import annotations

import time
from typing import Any

from langgraph.runtime import Runtime

from ..kb.index import candidates_of
from ..texts import entity_text, query_for
from . import resources
from .context import Context, settings_of
from .events import KbCandidates
from .state import State


def retrieve(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """The retrieve node (before ``prepare``: the input's keys only, with defaults).

    Reads ``mention``, ``context``; writes ``path``, ``candidates`` (the KB's top ``kb_top_k``),
    ``events`` (``kb_candidates``) and, with ``kb_allow_nil``, ``allow_nil``."""
    ctx = settings_of(runtime)
    if not ctx.kb:  # the router takes this node only with a KB
        raise ValueError("retrieve needs a kb setting")
    kb = resources.kb(ctx)  # a KB made with another embedder is refused here
    t0 = time.perf_counter()
    mention = state.get("mention") or ""
    query = query_for(mention, state.get("context") or "", [], ctx)
    vector = resources.embedder(ctx).encode([query], query=True)[0]
    ranked = kb.generate(mention, vector, ctx.kb_top_k)
    cands = candidates_of(ranked, ctx.kb_top_k)
    # the entities the mention's surface is an alias of bear its name, whatever their titles (the
    # NIL rules read it: 'Big Apple' is New York City's)
    by_alias = {e["name"] for e in ranked if "alias_rank" in e}
    for c in cands:
        if c["name"] in by_alias:
            c["aliases"] = [mention]
    top = {c["name"] for c in cands}
    latency = round(1000 * (time.perf_counter() - t0), 2)
    emb = resources.embedder(ctx)
    if kb.meta.get("dtype") == emb.dtype:  # the KB's vectors are the ones the ranker would compute
        chosen = [e for e in ranked if e["name"] in top]
        vecs = {e["id"]: e["_vector"] for e in chosen if e.get("_vector") is not None}
        vecs.update(kb.vectors([e["id"] for e in chosen if e["id"] not in vecs]))
        emb.remember({entity_text(e): vecs[e["id"]] for e in chosen if e["id"] in vecs})
    event: KbCandidates = {
        "type": "kb_candidates", "kb": str(kb.path.name), "k": ctx.kb_top_k,
        "latency_ms": latency,
        "generated": [{k: v for k, v in e.items() if k not in ("desc", "_vector")}
                      for e in ranked if e["name"] in top],
        "ranked": [e["name"] for e in ranked],
    }
    update: dict[str, Any] = {"path": ["retrieve"], "candidates": cands, "events": [event]}
    if ctx.kb_allow_nil:
        update["allow_nil"] = True  # the referent may not be in the KB at all
    return update
