"""The visual-tool interface that the VIF node binds to the LLM.

A visual tool is a name, a description for the LLM and a function of the mention's image (taken
from the graph state, never from arguments the LLM writes). Tools come from three places:

- the built-ins (``ocr``, ``caption``, ``dense_captions``, ``tags``), each served by a backend
  chosen in the run's settings (``tool_backend``);
- :func:`register_tool` in code: a :class:`VisualTool`, a LangChain tool, or as a decorator on a
  function ``fn(inp: ToolInput) -> str`` (the decorator returns the :class:`VisualTool`);
- the Python entry-point group ``i2cr.visual_tools``: a separate package can add a tool with
  ``[project.entry-points."i2cr.visual_tools"] mytool = "mypkg:my_tool"`` where ``my_tool`` is a
  :class:`VisualTool` (e.g. a function decorated with ``@register_tool``), a LangChain tool
  (``@tool`` / ``BaseTool``), or a function of no arguments returning one of these.

A LangChain tool is given the image by the graph through its arguments named in
:data:`IMAGE_ARGS` (mark them ``InjectedToolArg`` so no LLM is ever asked to write them); it may
have no other required argument. A plug-in that cannot be loaded is skipped with one
:class:`PluginWarning` naming its entry point; the other tools keep working.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import shutil
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from langchain_core.tools import BaseTool, StructuredTool
from pydantic import BaseModel

from ..images import ImageError, ImageLoader, LoadedImage
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
        # the run's loader (its settings' resources), shared with prepare and IAV; else a new one
        loader = getattr(getattr(self.settings, "resources", None), "images", None)
        try:
            return (loader if isinstance(loader, ImageLoader) else ImageLoader()).load(
                self.image_ref)
        except ImageError as e:
            raise ToolUnavailable(f"image unusable ({e})") from None

    def has_image(self) -> bool:
        try:
            self.image()
            return True
        except ToolUnavailable:
            return False

    def is_url(self) -> bool:
        return bool(self.image_ref and self.image_ref.startswith(("http://", "https://")))

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
    # whether running on an input may read its image, told without loading it (None: any tool
    # but a precomputed clue may); see reads_image
    reads: Callable[[ToolInput], bool] | None = field(default=None, repr=False)

    def __call__(self, inp: ToolInput) -> str:
        """The tool is still the function it was made from (``@register_tool`` returns it)."""
        return self.fn(inp)

    def reads_image(self, inp: ToolInput) -> bool:
        """Whether running on ``inp`` may read the mention's image, told without loading it (a
        run loads the image only when something reads it): ``reads`` when the tool gives it,
        else True for any tool but a precomputed clue (a probe that fails: True)."""
        if self.reads is None:
            return self.backend != "precomputed"
        try:
            return bool(self.reads(inp))
        except Exception:  # noqa: BLE001 - in doubt, the image may be read
            return True

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
        class NoArgs(BaseModel):
            pass

        def _never(**_: Any) -> str:  # VIF runs tools itself, with the image from the state
            raise RuntimeError("visual tools are executed by the VIF node")

        return StructuredTool.from_function(_never, name=self.name, description=self.description,
                                            args_schema=NoArgs)


class PluginWarning(UserWarning):
    """A visual-tool plug-in could not be loaded (it is skipped; the other tools keep working)."""


# The arguments a LangChain tool may receive from the graph, by name (never written by the LLM).
IMAGE_ARGS = {"image": "the mention's image as an RGB PIL.Image",
              "image_ref": "the image's local path or URL, as given in the input"}


def _is_langchain_tool(obj: Any) -> bool:
    return isinstance(obj, BaseTool)


def _schema_fields(tool: Any) -> tuple[list[str], list[str]]:
    """(argument names, required argument names) of a LangChain tool, injected ones included."""
    schema = tool.get_input_schema()
    if isinstance(schema, dict):  # a JSON-schema args_schema
        return list(schema.get("properties") or {}), list(schema.get("required") or [])
    fields_ = schema.model_fields
    return list(fields_), [n for n, f in fields_.items() if f.is_required()]


def from_langchain_tool(tool: Any) -> VisualTool:
    """A LangChain tool (``@tool`` or a ``BaseTool``) as a visual tool: the graph passes the
    image in the arguments named in :data:`IMAGE_ARGS` the tool declares; the LLM sees no
    argument. Raises ``TypeError`` if the tool needs an argument only an LLM could write."""
    names, required = _schema_fields(tool)
    others = [n for n in required if n not in IMAGE_ARGS]
    if others:
        raise TypeError(f"LangChain tool {tool.name!r} has required argument(s) {', '.join(others)} "
                        f"that the graph cannot fill; a visual tool gets only "
                        f"{' / '.join(IMAGE_ARGS)} (give the others defaults)")
    wants = [n for n in IMAGE_ARGS if n in names]

    def fn(inp: ToolInput) -> str:
        args: dict[str, Any] = {}
        if "image" in wants:
            args["image"] = inp.image().image
        if "image_ref" in wants:
            if not inp.image_ref:
                raise ToolUnavailable("the mention has no image")
            args["image_ref"] = inp.image_ref
        out = tool.invoke(args)
        return out if isinstance(out, str) else str(getattr(out, "content", out))

    if "image" in wants:
        check = ToolInput.has_image
    elif wants:
        check = ToolInput.image_reachable
    else:
        check = None
    return VisualTool(name=tool.name, description=tool.description or tool.name, fn=fn,
                      backend=f"langchain:{tool.name}", needs_image=bool(wants), check=check)


def _required_params(fn: Callable[..., Any]) -> list[str]:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in params if p.default is p.empty
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def as_visual_tool(obj: Any, *, source: str = "the object") -> VisualTool:
    """A :class:`VisualTool` from what a plug-in gives: a VisualTool, a LangChain tool, or a
    function of no arguments returning one of these. Raises ``TypeError`` saying what is wrong."""
    if isinstance(obj, VisualTool):
        return obj
    if _is_langchain_tool(obj):
        return from_langchain_tool(obj)
    if callable(obj):
        needed = _required_params(obj)
        if needed:
            raise TypeError(
                f"{source} is a function of ({', '.join(needed)}), not a tool: decorate it with "
                "@register_tool(name=..., description=...), which makes it a VisualTool, or point "
                "at a function of no arguments that returns one")
        made = obj()
        if isinstance(made, VisualTool) or _is_langchain_tool(made):
            return as_visual_tool(made, source=source)
        raise TypeError(f"{source} returned {type(made).__name__}, not a VisualTool or a "
                        "LangChain tool")
    raise TypeError(f"{source} is a {type(obj).__name__}, not a VisualTool, a LangChain tool or "
                    "a function returning one")


_REGISTRY: dict[str, VisualTool] = {}
_LOCK = threading.Lock()
_LOAD_LOCK = threading.Lock()
_ENTRY_POINTS_LOADED = False
_LOAD_ERRORS: dict[str, str] = {}  # entry-point name -> why it was not loaded


def register_tool(tool: Any = None, *, name: str | None = None, description: str | None = None,
                  needs_image: bool = True):
    """Register a visual tool and return it as a :class:`VisualTool`. Pass a VisualTool or a
    LangChain tool, or use it as a decorator on a function ``fn(inp: ToolInput) -> str``::

        @register_tool(name="faces", description="Count the faces in the image.")
        def faces(inp):
            ...

    ``faces`` is then a VisualTool (still callable as ``faces(inp)``), so an entry point can
    name it directly.
    """
    if tool is not None:
        if (not isinstance(tool, VisualTool) and not _is_langchain_tool(tool) and callable(tool)
                and _required_params(tool)):
            return register_tool(name=name, description=description,
                                 needs_image=needs_image)(tool)  # bare @register_tool
        vt = as_visual_tool(tool, source=f"register_tool({type(tool).__name__})")
        with _LOCK:
            _REGISTRY[vt.name] = vt
        return vt

    def deco(fn: Callable[[ToolInput], str]) -> VisualTool:
        return register_tool(VisualTool(name=name or fn.__name__,
                                        description=description or (fn.__doc__ or fn.__name__).strip(),
                                        fn=fn, needs_image=needs_image))

    return deco


def unregister_tool(name: str) -> None:
    with _LOCK:
        _REGISTRY.pop(name, None)


def load_entry_points(force: bool = False) -> list[str]:
    """Load plug-in tools from the ``i2cr.visual_tools`` entry-point group (once per process).

    A plug-in that fails to import or is not a tool is skipped with one :class:`PluginWarning`
    naming its entry point (see :func:`plugin_errors`); the others are loaded."""
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED and not force:
        return []
    with _LOAD_LOCK:
        if _ENTRY_POINTS_LOADED and not force:
            return []
        names = []
        errors: dict[str, str] = {}
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            try:
                tool = as_visual_tool(ep.load(), source=ep.value)
            except Exception as e:  # noqa: BLE001 - one broken plug-in must not stop the others
                msg = (f"i2cr: visual-tool plug-in {ep.name!r} = {ep.value!r} (entry-point group "
                       f"{ENTRY_POINT_GROUP}) was not loaded: {type(e).__name__}: {e}")
                errors[ep.name] = msg
                warnings.warn(msg, PluginWarning, stacklevel=2)
                continue
            register_tool(tool)
            names.append(tool.name)
        _LOAD_ERRORS.clear()
        _LOAD_ERRORS.update(errors)
        _ENTRY_POINTS_LOADED = True
        return names


def plugin_errors() -> dict[str, str]:
    """Entry-point name -> why that plug-in was not loaded."""
    load_entry_points()
    return dict(_LOAD_ERRORS)


def registered_tools() -> dict[str, VisualTool]:
    load_entry_points()
    with _LOCK:
        return dict(_REGISTRY)


def tesseract_available() -> bool:
    return shutil.which("tesseract") is not None
