"""What a served linker fixes for every run, and what a run's settings may change.

The server reads its settings from its environment (``I2CR_<SETTING>``, as every :class:`Context`
does) plus ``I2CR_API_KEYS`` (comma-separated), ``I2CR_MAX_BODY_BYTES``, ``I2CR_MAX_BATCH`` and
``I2CR_BODY_TIMEOUT_S`` (the longest wait for the next piece of a request body). A
request (``/link``'s ``settings``, or a run's ``context`` on the LangGraph API) may change only the
settings in :data:`RUN_SETTINGS` (thresholds, strategies, tools, counts; those in :data:`CAPPED`
only up to the server's own value); anything that names a
file, a model, an endpoint or a network rule stays the server's, and a request that tries to
change it is refused (400) naming the setting. Caches may be switched off (``'none'``) per run.

A server process holds one :class:`~i2cr.graph.resources.Resources` (:func:`process_resources`):
every run it serves, on the LangGraph API or ``/link``, loads its models into it, once; a CLIP
load that failed there is tried again after ``clip_retry_s`` (:func:`serving`).
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, fields
from functools import cached_property
from typing import Any

from ..envvars import API_KEYS, BODY_TIMEOUT_S, MAX_BATCH, MAX_BODY_BYTES
from ..graph.context import Context, coerce_setting, default_settings, setting_kind, setting_types
from ..graph.resources import Resources
from ..images import MAX_DATA_URL_BYTES, ImagePolicy
from ..redact import register

RUN_SETTINGS = frozenset({
    "tes_strategy", "prune_k", "nil_threshold", "llm_temperature", "llm_max_tokens", "tes_retries",
    "desc_chars", "max_candidates", "max_context_chars", "icr_threshold", "max_reflections",
    "iav_mode", "iav_threshold", "caption_threshold", "tools", "tool_backend", "max_vif_rounds",
    "vif_llm_choice", "clue_mode", "fallback", "tesseract_lang", "tesseract_psm", "kb_top_k",
    "trace_prompts", "image_timeout",
})
CACHES = frozenset({"clue_cache", "embedding_cache"})  # a run may switch these off ('none')
# run settings a request may lower but not raise above the server's value (time, calls, size)
CAPPED = frozenset({"image_timeout", "llm_max_tokens", "tes_retries", "max_reflections",
                    "max_candidates", "max_context_chars", "kb_top_k"})

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024  # room for one inline image at its cap (base64)
DEFAULT_MAX_BATCH = 64
DEFAULT_BODY_TIMEOUT_S = 30  # a client that stops sending its body mid-way is cut off (408)


class BadRequest(ValueError):
    """A request the server refuses (HTTP 4xx); the message says why in one line."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def process_resources() -> Resources:
    """The server process's one :class:`Resources`, built on first use: that of the process's
    default settings (:func:`~i2cr.graph.context.default_settings`, which a run given no context
    uses), so that the served graph's runs (with or without a context) and ``/link`` share it.
    (Under a lock: the first requests, arriving together, must not build one each.)"""
    with _BUILDING:
        return serving(default_settings()).resources


def serving(settings: Context) -> Context:
    """``settings`` with their Resources made a server's, which lives as long as the process: a
    CLIP failure is forgotten after ``clip_retry_s`` (a run's is kept for the run)."""
    settings.resources.clip_retry_s = settings.clip_retry_s
    return settings


_BUILDING = threading.Lock()


def _int_env(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, not {raw!r}") from None
    if value < 1:
        raise ValueError(f"{name} must be >= 1, not {value}")
    return value


@dataclass(frozen=True)
class ServerConfig:
    """A server's fixed configuration (see the module docstring)."""

    api_keys: tuple[str, ...] = ()
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_batch: int = DEFAULT_MAX_BATCH
    body_timeout_s: int = DEFAULT_BODY_TIMEOUT_S
    base: Context | None = None  # the settings every run starts from (None: from the environment)

    def __post_init__(self) -> None:
        for k in self.api_keys:
            register(k)  # masked wherever it could appear (errors, logs of i2cr)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServerConfig:
        env = os.environ if env is None else env
        keys = tuple(k.strip() for k in env.get(API_KEYS, "").split(",") if k.strip())
        return cls(api_keys=keys, max_body_bytes=_int_env(env, MAX_BODY_BYTES,
                                                          DEFAULT_MAX_BODY_BYTES),
                   max_batch=_int_env(env, MAX_BATCH, DEFAULT_MAX_BATCH),
                   body_timeout_s=_int_env(env, BODY_TIMEOUT_S, DEFAULT_BODY_TIMEOUT_S))

    @cached_property
    def settings(self) -> Context:
        return serving(self.base) if self.base is not None else \
            Context(resources=process_resources())

    def image_policy(self) -> ImagePolicy:
        s = self.settings
        return ImagePolicy.server(image_root=s.serve_image_root,
                                  allow_private_urls=s.allow_private_urls)

    def run_settings(self, overrides: Any) -> Context:
        """The server's settings with a request's ``overrides`` applied, or :class:`BadRequest`."""
        if overrides is None:
            return self.settings
        typed = check_overrides(overrides, self.settings)
        vals = {f.name: getattr(self.settings, f.name) for f in fields(Context)}
        try:
            coerced = Context.from_overrides(typed)  # each field validated
            vals.update({k: getattr(coerced, k) for k in typed})
            return Context(**vals)
        except (ValueError, TypeError) as e:
            raise BadRequest(f"settings: {e}") from None


def check_overrides(overrides: Any, base: Context) -> dict[str, Any]:
    """The request's settings as their types, or :class:`BadRequest` for one it may not change
    or a value of the wrong type."""
    if not isinstance(overrides, dict):
        raise BadRequest(f"settings must be an object of name -> value, not "
                         f"{type(overrides).__name__}")
    hints = setting_types()
    typed: dict[str, Any] = {}
    for k, v in overrides.items():
        if k not in hints:
            raise BadRequest(f"unknown setting {str(k)[:60]!r}")
        v = typed[k] = _typed(k, v, hints[k])
        if k in CAPPED:
            if v is None or v < 0:
                raise BadRequest(f"setting {k!r} must be a number >= 0, not {str(v)[:40]}")
            if v > getattr(base, k):
                raise BadRequest(f"setting {k!r} may be at most the server's "
                                 f"{getattr(base, k)!r}, not {str(v)[:40]}")
        if k in RUN_SETTINGS:
            continue
        if k in CACHES and (v is None or str(v).strip().lower() in {"none", ""}):
            continue
        if v == getattr(base, k):
            continue  # the server's own value, restated
        raise BadRequest(f"setting {k!r} is fixed by the server; a request may set: "
                         f"{', '.join(sorted(RUN_SETTINGS))} (and switch caches off)")
    return typed


def check_image_ref(ref: Any, where: str = "image") -> None:
    """Refuse, before any work, an image a served request cannot use: not a string, a scheme
    other than http(s)/data, or an inline image over its cap. (Local paths and private hosts are
    judged by the image policy when the image is loaded.)"""
    if ref is None or ref == "":
        return
    if not isinstance(ref, str):
        raise BadRequest(f"{where} must be an http(s) URL or a data: URL, not "
                         f"{type(ref).__name__}")
    scheme = ref[:max(ref.find(":", 0, 32), 0)].lower()
    if scheme in ("http", "https", "data") and not ref.startswith(scheme + ":"):
        raise BadRequest(f"{where}: write the URL scheme in lower case ({scheme}:)")
    if ref.startswith("data:"):
        if len(ref) > (MAX_DATA_URL_BYTES * 4) // 3 + 256:
            raise BadRequest(f"{where}: inline image (data: URL) is over {MAX_DATA_URL_BYTES} "
                             "bytes")
        return
    if len(scheme) > 1 and scheme not in ("http", "https"):
        raise BadRequest(f"{where}: URL scheme {scheme[:20]!r} is not http, https or data")


def _typed(name: str, value: Any, hint: Any) -> Any:
    """A request's ``value`` for the setting ``name`` as its type (a string read as ``--set``
    reads it; JSON numbers, booleans and null only where the setting takes them; numbers
    finite), or :class:`BadRequest`."""
    typ, nullable = setting_kind(hint)
    if isinstance(value, str):
        try:
            value = coerce_setting(value, hint, name)
        except ValueError as e:
            raise BadRequest(f"settings: {e}") from None
    elif value is None:
        if not nullable:
            raise BadRequest(f"setting {name!r} may not be null")
    else:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if typ is bool:
            ok, kind = isinstance(value, bool), "true or false"
        elif typ is float:
            ok, kind = number, "a number"
        elif typ is int:
            ok, kind = number and float(value).is_integer(), "a whole number"
            value = int(value) if ok else value
        else:
            ok, kind = False, "a string"
        if not ok:
            raise BadRequest(f"setting {name!r} must be {kind}, not "
                             f"{type(value).__name__} {str(value)[:40]}")
    if isinstance(value, float) and not math.isfinite(value):
        raise BadRequest(f"setting {name!r} must be a finite number, not {value}")
    return value
