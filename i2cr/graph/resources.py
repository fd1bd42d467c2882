"""Models and tools a run needs, built once per process per setting and shared by all mentions.

Nodes ask for them through :func:`resources`; nothing heavy lives in the graph state.
"""

from __future__ import annotations

import threading
from typing import Any

from ..clip import ClipScorer
from ..embeddings import Embedder, ModelUnavailable
from ..llm import load_chat_model
from ..ranker import Ranker, load_weights
from ..tools import VisualTool, build_tools
from .context import Context

_LOCK = threading.RLock()
_EMBEDDERS: dict[tuple, Embedder] = {}
_CLIPS: dict[tuple, ClipScorer | ModelUnavailable] = {}
_CHATS: dict[tuple, Any] = {}


def embedder(ctx: Context) -> Embedder:
    key = (ctx.embedder, ctx.device, ctx.embed_batch_size, ctx.allow_downloads, ctx.embedding_cache,
           ctx.embed_dtype)
    with _LOCK:
        if key not in _EMBEDDERS:
            _EMBEDDERS[key] = Embedder(ctx.embedder, device=ctx.device,
                                       batch_size=ctx.embed_batch_size,
                                       allow_downloads=ctx.allow_downloads,
                                       store_dir=ctx.embedding_cache,
                                       dtype=ctx.embed_dtype)
        return _EMBEDDERS[key]


def ranker(ctx: Context) -> Ranker:
    """The retrieval ranker over the run's embedder and weights (weights are parsed once)."""
    return Ranker(embedder(ctx), load_weights(ctx.ranker_weights), ctx)


def clip(ctx: Context) -> ClipScorer:
    """The CLIP scorer, or :class:`ModelUnavailable` raised with the reason (remembered, so a
    missing model is reported once per run, not retried per mention)."""
    key = (ctx.clip_model, ctx.clip_pretrained, ctx.clip_model_config, ctx.device,
           ctx.allow_downloads)
    with _LOCK:
        if key not in _CLIPS:
            try:
                _CLIPS[key] = ClipScorer(ctx.clip_model, ctx.clip_pretrained,
                                         model_config=ctx.clip_model_config, device=ctx.device,
                                         allow_downloads=ctx.allow_downloads)
            except ModelUnavailable as e:
                _CLIPS[key] = e
        got = _CLIPS[key]
    if isinstance(got, ModelUnavailable):
        raise got
    return got


def chat_model(ctx: Context) -> Any:
    if ctx.chat_model is not None:
        return ctx.chat_model
    spec = "embedded" if ctx.llm == "none" else ctx.llm  # the default LLM when one is asked for
    key = (spec, ctx.llm_temperature, ctx.llm_max_tokens, ctx.llm_timeout, ctx.llm_retries,
           ctx.llm_backoff, ctx.llm_backoff_max)
    with _LOCK:
        if key not in _CHATS:
            _CHATS[key] = load_chat_model(spec, temperature=ctx.llm_temperature,
                                          max_tokens=ctx.llm_max_tokens, timeout=ctx.llm_timeout,
                                          retries=ctx.llm_retries, backoff=ctx.llm_backoff,
                                          backoff_max=ctx.llm_backoff_max)
        return _CHATS[key]


_TOOLS: dict[tuple, dict[str, VisualTool]] = {}


def tools(ctx: Context) -> dict[str, VisualTool]:
    """The run's visual tools, built once per settings (and per set of registered plug-ins)."""
    from ..tools import registered_tools

    key = (ctx.tools, ctx.tool_backend, ctx.vision_endpoint, ctx.vision_timeout,
           ctx.vision_retries, ctx.vision_backoff, ctx.clue_cache, ctx.clip_model,
           ctx.clip_pretrained, ctx.clip_model_config, ctx.device,
           tuple(sorted((n, id(t)) for n, t in registered_tools().items())))
    with _LOCK:
        if key not in _TOOLS:
            _TOOLS[key] = build_tools(ctx, get_clip=lambda: clip(ctx))
        return _TOOLS[key]


def reset() -> None:
    """Forget every cached model (tests use it to measure loading)."""
    with _LOCK:
        _EMBEDDERS.clear()
        _CLIPS.clear()
        _CHATS.clear()
        _TOOLS.clear()
