"""Models and tools a run needs, held by one :class:`Resources` object per run.

A :class:`~i2cr.graph.context.Context` carries its ``Resources`` (``Context.resources``): the caller
that starts a run builds the settings, and so one ``Resources``, once (``link`` per call, the eval
runner per run, a server process and each Ray worker for their life: ``i2cr.serve.config``'s
``process_resources``); copies of the settings (``dataclasses.replace``, a server's per-request
settings) share it. Inside it each model is built on first use and kept for the settings that
shape it (a server's requests may differ in their thresholds, not in their models): the
embedder, CLIP, the chat model, the ranker's weights, the KB, the visual tools with their clue
caches and Azure clients (``backends``), and which LLM backends answered the start-up check. A
model, weights file, KB or cache that fails to load is not remembered: the next mention or run
asks again; but CLIP, asked by every mention with an image (IAV, the CLIP tools), is tried
once: its failure is remembered, for this ``Resources`` only, until a file it reads changes (the
checkpoint or config it names, a pretrained tag's weights in the Hugging Face cache: a broken
multi-gigabyte checkpoint was read again for each mention). A server's ``Resources`` lives as
long as the server, so there a failure is also forgotten after ``clip_retry_s``
(:attr:`Resources.clip_retry_s`, set by :mod:`i2cr.serve.config`): a server whose CLIP could not
load recovers without a restart.
An image that failed is remembered for the run only (in its ``images``).

What outlives a run, on purpose, lives elsewhere with one owner: the llama.cpp server processes
(:data:`i2cr.llm.SERVERS`, stopped at exit), the image policy a server installs, the registered
plug-in tools and the secrets to scrub.
Nodes reach them through the module functions (``resources.embedder(ctx)``). Nothing heavy lives
in the graph state, and models do not travel: a pickled ``Resources`` (in the settings sent to a
worker) arrives empty.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from ..clip import ClipScorer, clip_stamp
from ..embeddings import Embedder, ModelUnavailable
from ..images import ImageLoader
from ..kb.index import KB, kb_stamp, open_kb
from ..llm import load_chat_model
from ..ranker import Ranker, Weights, load_weights
from ..tools import VisualTool, build_tools, registered_tools
from ..tools.factory import SharedBackends

if TYPE_CHECKING:
    from .context import Context


class Resources:
    """The models and tools of a run (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._embedders: dict[tuple, Embedder] = {}
        self._clips: dict[tuple, ClipScorer] = {}
        # key -> (its files' stamp, why, when: time.monotonic())
        self._clip_failed: dict[tuple, tuple[tuple, str, float]] = {}
        # seconds a CLIP failure is remembered (None: while its files are unchanged, for this
        # Resources' life: a run's); a server sets its clip_retry_s (i2cr.serve.config)
        self.clip_retry_s: float | None = None
        self._chats: dict[tuple, Any] = {}
        self._tools: dict[tuple, dict[str, VisualTool]] = {}
        self._weights: dict[str | None, Weights] = {}
        self._kbs: dict[tuple[str, int], KB] = {}
        self.images = ImageLoader()  # the run's images, decoded once for prepare, IAV and tools
        self.backends = SharedBackends()  # the tools' clue caches and Azure clients
        self.checked_backends: set[tuple] = set()  # LLM backends that passed llm.check_backend

    def __getstate__(self) -> dict[str, Any]:
        return {}  # models stay in their process; a worker builds its own

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]

    def __repr__(self) -> str:
        return (f"Resources({len(self._embedders)} embedder(s), {len(self._clips)} CLIP, "
                f"{len(self._chats)} chat model(s), {len(self._tools)} tool set(s))")

    def close(self) -> None:
        """Close what the run holds open (its clue caches); a later use opens them again."""
        self.backends.close()

    def embedder(self, ctx: Context) -> Embedder:
        key = (ctx.embedder, ctx.device, ctx.embed_batch_size, ctx.allow_downloads,
               ctx.embedding_cache, ctx.embed_dtype)
        with self._lock:
            if key not in self._embedders:
                self._embedders[key] = Embedder(ctx.embedder, device=ctx.device,
                                                batch_size=ctx.embed_batch_size,
                                                allow_downloads=ctx.allow_downloads,
                                                store_dir=ctx.embedding_cache,
                                                dtype=ctx.embed_dtype)
            return self._embedders[key]

    def weights(self, path: str | None) -> Weights:
        """The ranker's weights file (None: the shipped one), read once per run."""
        with self._lock:
            if path not in self._weights:
                self._weights[path] = load_weights(path)
            return self._weights[path]

    def ranker(self, ctx: Context) -> Ranker:
        """The retrieval ranker over the run's embedder and weights."""
        return Ranker(self.embedder(ctx), self.weights(ctx.ranker_weights), ctx)

    def kb(self, ctx: Context) -> KB:
        """The run's KB (``ctx.kb``), opened once per build and checked against the embedder."""
        if not ctx.kb:
            raise ValueError("no KB is set (the kb setting)")
        key = kb_stamp(ctx.kb)
        with self._lock:
            if key not in self._kbs:
                self._kbs[key] = open_kb(ctx.kb)
            kb = self._kbs[key]
        kb.check_embedder(ctx.embedder)  # a KB made with another embedder is refused here
        return kb

    def clip(self, ctx: Context) -> ClipScorer:
        """The CLIP scorer, or :class:`~i2cr.embeddings.ModelUnavailable` with the reason. A
        load that failed is remembered, with its reason, while the files it reads are unchanged
        (:func:`~i2cr.clip.clip_stamp`) and, in a server, for ``clip_retry_s`` at most: each
        later mention gets the same reason without reading them again; a new ``Resources``
        (the next run) tries again."""
        key = (ctx.clip_model, ctx.clip_pretrained, ctx.clip_model_config, ctx.device,
               ctx.allow_downloads)
        with self._lock:
            if key not in self._clips:
                stamp = clip_stamp(ctx.clip_model, ctx.clip_pretrained, ctx.clip_model_config)
                failed = self._clip_failed.get(key)
                if failed is not None and failed[0] == stamp and not self._expired(failed[2]):
                    raise ModelUnavailable(failed[1])
                try:
                    self._clips[key] = ClipScorer(ctx.clip_model, ctx.clip_pretrained,
                                                  model_config=ctx.clip_model_config,
                                                  device=ctx.device,
                                                  allow_downloads=ctx.allow_downloads)
                except ModelUnavailable as e:
                    self._clip_failed[key] = (stamp, str(e), time.monotonic())
                    raise
                self._clip_failed.pop(key, None)
            return self._clips[key]

    def _expired(self, when: float) -> bool:
        return self.clip_retry_s is not None and time.monotonic() - when >= self.clip_retry_s

    def clip_failures(self) -> list[dict[str, Any]]:
        """The CLIP loads whose failure is remembered (a server's ``/health``): the model, the
        pretrained tag or checkpoint, why, and the seconds until the next request tries again
        (None: when a file it reads changes)."""
        with self._lock:
            out = []
            for (model, pretrained, *_), (_, why, when) in self._clip_failed.items():
                left = None if self.clip_retry_s is None else \
                    max(0.0, round(self.clip_retry_s - (time.monotonic() - when), 1))
                out.append({"model": model, "pretrained": pretrained or None, "reason": why,
                            "retry_in_s": left})
            return out

    def chat_model(self, ctx: Context) -> Any:
        if ctx.chat_model is not None:
            return ctx.chat_model
        spec = "embedded" if ctx.llm == "none" else ctx.llm  # the default LLM when one is asked for
        key = (spec, ctx.llm_temperature, ctx.llm_max_tokens, ctx.llm_timeout, ctx.llm_retries,
               ctx.llm_backoff, ctx.llm_backoff_max)
        with self._lock:
            if key not in self._chats:
                self._chats[key] = load_chat_model(
                    spec, temperature=ctx.llm_temperature, max_tokens=ctx.llm_max_tokens,
                    timeout=ctx.llm_timeout, retries=ctx.llm_retries, backoff=ctx.llm_backoff,
                    backoff_max=ctx.llm_backoff_max)
            return self._chats[key]

    def tools(self, ctx: Context) -> dict[str, VisualTool]:
        """The run's visual tools, built once per settings (and per set of registered plug-ins)."""
        key = (ctx.tools, ctx.tool_backend, ctx.vision_endpoint, ctx.vision_timeout,
               ctx.vision_retries, ctx.vision_backoff, ctx.clue_cache, ctx.clip_model,
               ctx.clip_pretrained, ctx.clip_model_config, ctx.device,
               tuple(sorted((n, id(t)) for n, t in registered_tools().items())))
        with self._lock:
            if key not in self._tools:
                self._tools[key] = build_tools(ctx, get_clip=lambda: self.clip(ctx),
                                               shared=self.backends)
            return self._tools[key]


# the run's resources for a node holding its settings -------------------------------------------

def embedder(ctx: Context) -> Embedder:
    return ctx.resources.embedder(ctx)


def ranker(ctx: Context) -> Ranker:
    return ctx.resources.ranker(ctx)


def clip(ctx: Context) -> ClipScorer:
    return ctx.resources.clip(ctx)


def chat_model(ctx: Context) -> Any:
    return ctx.resources.chat_model(ctx)


def tools(ctx: Context) -> dict[str, VisualTool]:
    return ctx.resources.tools(ctx)


def kb(ctx: Context) -> KB:
    return ctx.resources.kb(ctx)
