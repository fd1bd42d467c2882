"""The visual-tool interface that the VIF node binds to the LLM.

A visual tool is a name, a description for the LLM and a function of the mention's image (taken
from the graph state, never from arguments the LLM writes). Tools come from three places:

- the built-ins (``ocr``, ``caption``, ``dense_captions``, ``tags``), each served by a backend
  chosen in the run's settings (``tool_backend``);
- :func:`register_tool` in code;
- the Python entry-point group ``i2cr.visual_tools``: a separate package can add a tool with
  ``[project.entry-points."i2cr.visual_tools"] mytool = "mypkg:my_tool"`` where ``my_tool`` is a
  :class:`VisualTool` (or a function returning one).
"""

from __future__ import annotations

import shutil
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from ..images import IMAGES, ImageError, LoadedImage
from ..redact import error_text, scrub

ENTRY_POINT_GROUP = "i2cr.visual_tools"


class ToolUnavailable(RuntimeError):
    """A tool cannot run for this input (no image, no clue, backend not installed)."""


@dataclass
class ToolInput:
    """What a tool may read: the image reference from the graph state, the sample's precomputed
    clues, and the run's settings."""

    image_ref: str | None
    precomputed: dict[str, Any] | None = None
    settings: Any = None

    def image(self) -> LoadedImage:
        if not self.image_ref:
            raise ToolUnavailable("the mention has no image")
        try:
            return IMAGES.load(self.image_ref)
        except ImageError as e:
            raise ToolUnavailable(f"image unusable ({e})") from None

    def has_image(self) -> bool:
        try:
            self.image()
            return True
        except ToolUnavailable:
            return False

    def is_url(self) -> bool:
        return bool(self.image_ref) and self.image_ref.startswith(("http://", "https://"))

    def image_reachable(self) -> bool:
        """A URL (a service fetches it) or a local image that decodes."""
        return self.is_url() or self.has_image()

    def image_key(self) -> str:
        """The key clues are cached under: the content hash, or the URL for remote images."""
        return "url:" + (self.image_ref or "") if self.is_url() else self.image().sha256


@dataclass
class ToolResult:
    tool: str
    text: str
    ok: bool
    backend: str
    error: str | None = None


@dataclass
class VisualTool:
    name: str
    description: str
    fn: Callable[[ToolInput], str]
    backend: str = "custom"
    version: str = "1"
    needs_image: bool = True
    check: Callable[[ToolInput], bool] | None = field(default=None, repr=False)

    def available(self, inp: ToolInput) -> bool:
        try:
            if self.check is not None:
                return bool(self.check(inp))
            return inp.has_image() if self.needs_image else True
        except Exception:  # noqa: BLE001 - an availability probe must never break a run
            return False

    def run(self, inp: ToolInput) -> ToolResult:
        try:
            text = self.fn(inp)
        except ToolUnavailable as e:
            return ToolResult(self.name, "", False, self.backend, scrub(f"unavailable: {e}"))
        except Exception as e:  # noqa: BLE001 - a failing tool becomes an observation
            return ToolResult(self.name, "", False, self.backend, error_text(e))
        if not isinstance(text, str):
            text = "" if text is None else str(text)
        return ToolResult(self.name, text, True, self.backend)

    def as_langchain_tool(self):
        """A schema-only langchain tool for ``bind_tools`` (no arguments: the image is implicit)."""
        from langchain_core.tools import StructuredTool
        from pydantic import BaseModel

        class NoArgs(BaseModel):
            pass

        def _never(**_: Any) -> str:  # VIF runs tools itself, with the image from the state
            raise RuntimeError("visual tools are executed by the VIF node")

        return StructuredTool.from_function(_never, name=self.name, description=self.description,
                                            args_schema=NoArgs)


_REGISTRY: dict[str, VisualTool] = {}
_LOCK = threading.Lock()
_ENTRY_POINTS_LOADED = False


def register_tool(tool: VisualTool | None = None, *, name: str | None = None,
                  description: str | None = None, needs_image: bool = True):
    """Register a visual tool. Use directly with a :class:`VisualTool`, or as a decorator on a
    function ``fn(inp: ToolInput) -> str``::

        @register_tool(name="faces", description="Count the faces in the image.")
        def faces(inp):
            ...
    """
    if tool is not None:
        with _LOCK:
            _REGISTRY[tool.name] = tool
        return tool

    def deco(fn: Callable[[ToolInput], str]) -> Callable[[ToolInput], str]:
        register_tool(VisualTool(name=name or fn.__name__,
                                 description=description or (fn.__doc__ or fn.__name__).strip(),
                                 fn=fn, needs_image=needs_image))
        return fn

    return deco


def unregister_tool(name: str) -> None:
    with _LOCK:
        _REGISTRY.pop(name, None)


def load_entry_points(force: bool = False) -> list[str]:
    """Load plug-in tools from the ``i2cr.visual_tools`` entry-point group (once per process)."""
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED and not force:
        return []
    from importlib.metadata import entry_points

    names = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        obj = ep.load()
        tool = obj() if callable(obj) and not isinstance(obj, VisualTool) else obj
        if not isinstance(tool, VisualTool):
            raise TypeError(f"entry point {ep.name!r} in {ENTRY_POINT_GROUP} gave "
                            f"{type(tool).__name__}, not a VisualTool")
        register_tool(tool)
        names.append(tool.name)
    _ENTRY_POINTS_LOADED = True
    return names


def registered_tools() -> dict[str, VisualTool]:
    load_entry_points()
    with _LOCK:
        return dict(_REGISTRY)


def tesseract_available() -> bool:
    return shutil.which("tesseract") is not None
