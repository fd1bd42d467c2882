"""Put together the visual tools a run offers, from its settings.

Backends per tool (``tool_backend``: one for all, or ``ocr=tesseract,caption=azure,...``):

| backend | serves | needs |
|---|---|---|
| ``precomputed`` | ocr, caption, dense_captions, tags, objects | the sample's ``mention_imgdesc_Azure`` |
| ``tesseract`` | ocr | the ``tesseract`` binary |
| ``azure`` | ocr, caption, dense_captions, tags, objects | ``VISION_ENDPOINT`` + ``VISION_KEY`` or Entra ID |
| ``clip`` | caption, tags | CLIP weights (zero-shot over a shipped vocabulary) |
| ``auto`` | all | the first that can run: precomputed, then Azure if configured, then the local ones |

Live results are kept in the on-disk clue cache (``clue_cache``), keyed by image content hash,
tool, backend and backend version. The open caches and the Azure clients belong to a run: its
:class:`SharedBackends` (held by its ``Resources``), so a folder that could not be opened, or a
client's memory of what it analysed, lasts one run, not the process.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from .azure import AzureVision, azure_configured, azure_tool, new_vision, vision_key
from .base import ToolInput, VisualTool, plugin_errors, registered_tools
from .builtin import PAPER_ORDER, first_available, precomputed_tool, tesseract_tool
from .cache import ClueCache, cache_dir
from .clip_tools import clip_caption_tool, clip_tags_tool

BACKENDS = ("precomputed", "tesseract", "azure", "clip", "auto")


def parse_backends(spec: str) -> dict[str, str]:
    """``'auto'`` or ``'ocr=tesseract,caption=precomputed'`` -> tool -> backend (default auto)."""
    spec = (spec or "auto").strip()
    if "=" not in spec:
        if spec not in BACKENDS:
            raise ValueError(f"unknown tool backend {spec!r}; known: {', '.join(BACKENDS)}")
        return {n: spec for n in PAPER_ORDER}
    out = {n: "auto" for n in PAPER_ORDER}
    for part in spec.split(","):
        if not part.strip():
            continue
        k, sep, v = part.partition("=")
        if not sep or v.strip() not in BACKENDS:
            raise ValueError(f"tool_backend part {part!r} is not 'tool=backend' with a backend "
                             f"among {', '.join(BACKENDS)}")
        out[k.strip()] = v.strip()
    return out


def cached(tool: VisualTool, cache: ClueCache | None) -> VisualTool:
    """The same tool with its results kept in the clue cache (live backends only)."""
    if cache is None or tool.backend == "precomputed":
        return tool

    def fn(inp: ToolInput) -> str:
        key = ClueCache.key(inp.image_key(), tool.name, tool.backend, tool.version)
        hit = cache.get(key)
        if hit is not None:
            return hit
        text = tool.fn(inp)
        cache.set(key, text)
        return text

    return VisualTool(name=tool.name, description=tool.description, fn=fn, backend=tool.backend,
                      version=tool.version, needs_image=tool.needs_image, check=tool.check,
                      reads=tool.reads)


class SharedBackends:
    """What the tools of one run share: its clue caches (one per folder) and its Azure clients (one
    per endpoint and settings, so every tool and plug-in shares the single analyze call per
    image). A run's ``Resources`` holds one (``Resources.backends``); a failure to open a cache
    is the run's, and the next run opens the folder again."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._caches: dict[str, ClueCache] = {}
        self._visions: dict[tuple, AzureVision] = {}

    def clue_cache(self, directory: str | None) -> ClueCache | None:
        """The run's cache for a ``clue_cache`` setting (None: caching is off)."""
        d = cache_dir(directory)
        if d is None:
            return None
        with self._lock:
            if d not in self._caches:
                self._caches[d] = ClueCache(d)
            return self._caches[d]

    def vision(self, settings: Any, cache: ClueCache | None) -> AzureVision:
        key = vision_key(settings, cache)
        with self._lock:
            if key not in self._visions:
                self._visions[key] = new_vision(key, cache)
            return self._visions[key]

    def close(self) -> None:
        """Close the run's clue caches (a later use opens them again)."""
        with self._lock:
            caches, self._caches = list(self._caches.values()), {}
            self._visions.clear()
        for c in caches:
            c.close()


def shared_backends(settings: Any) -> SharedBackends:
    """The run's :class:`SharedBackends` (``settings.resources.backends``), or a new one for
    settings without resources."""
    shared = getattr(getattr(settings, "resources", None), "backends", None)
    return shared if isinstance(shared, SharedBackends) else SharedBackends()


class Backends:
    """Lazily built backends (the Azure client, the CLIP getter) for one run's settings, over
    the run's :class:`SharedBackends`."""

    def __init__(self, settings: Any, get_clip: Callable[[], Any] | None = None,
                 shared: SharedBackends | None = None):
        self.settings = settings
        self.get_clip = get_clip
        self.shared = shared if shared is not None else shared_backends(settings)
        self.cache = self.shared.clue_cache(getattr(settings, "clue_cache", None))

    def azure_configured(self) -> bool:
        return azure_configured(self.settings)

    def vision(self) -> AzureVision:
        return self.shared.vision(self.settings, self.cache)

    def tool(self, name: str, backend: str) -> VisualTool:
        if backend == "precomputed":
            return precomputed_tool(name)
        if backend == "tesseract":
            if name != "ocr":
                raise ValueError(f"the tesseract backend only serves 'ocr', not {name!r}")
            return cached(tesseract_tool(), self.cache)
        if backend == "azure":
            return azure_tool(name, self.vision())
        if backend == "clip":
            if name not in ("caption", "tags") or self.get_clip is None:
                raise ValueError(f"the clip backend serves 'caption' and 'tags', not {name!r}")
            maker = clip_caption_tool if name == "caption" else clip_tags_tool
            return cached(maker(self.get_clip), self.cache)
        if backend == "auto":
            chain = [precomputed_tool(name)]
            if self.azure_configured():
                chain.append(self.tool(name, "azure"))
            if name == "ocr":
                chain.append(self.tool(name, "tesseract"))
            if name in ("caption", "tags") and self.get_clip is not None:
                chain.append(self.tool(name, "clip"))
            return first_available(name, chain)
        raise ValueError(f"unknown backend {backend!r} for tool {name!r}")


def build_tools(settings: Any, get_clip: Callable[[], Any] | None = None,
                shared: SharedBackends | None = None) -> dict[str, VisualTool]:
    """The tools a run offers, by name, in the order of ``settings.tools``: built-ins with their
    configured backend, then plug-ins registered in code or through entry points. A plug-in
    whose entry point failed to load is left out (its load already warned, once, naming it).
    ``shared``: the run's caches and clients (default: those of ``settings.resources``)."""
    backends = parse_backends(settings.tool_backend)
    plugins = registered_tools()
    broken = plugin_errors()
    made = Backends(settings, get_clip, shared)
    out: dict[str, VisualTool] = {}
    for n in settings.tool_names:
        if n in plugins:
            out[n] = plugins[n]
        elif n in PAPER_ORDER:
            out[n] = made.tool(n, backends.get(n, "auto"))
        elif n in broken:
            continue
        else:
            raise ValueError(f"unknown visual tool {n!r}; built-ins: {', '.join(PAPER_ORDER)}; "
                             f"registered: {', '.join(sorted(plugins)) or 'none'}")
    return out
