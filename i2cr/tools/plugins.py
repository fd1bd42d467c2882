"""The worked example of a plug-in tool: an objects/people detector.

It is registered through this package's own entry point (``i2cr.visual_tools``, see
pyproject.toml), exactly as a separate package would add one. It reads the sample's precomputed
``Objects`` (the I2CR datasets ship Azure's) and otherwise calls Azure AI Vision's OBJECTS
feature, sharing the run's single analyze call per image. Offer it with
``--set tools=ocr,caption,dense_captions,tags,objects``.
"""

from __future__ import annotations

from .azure import azure_configured, objects_text
from .base import ToolInput, ToolUnavailable, VisualTool
from .factory import Backends

DESCRIPTION = ("Detect the objects and people in the image, with confidences (e.g. how many people "
               "there are and what they hold).")


def _azure_objects(inp: ToolInput) -> str:
    backends = Backends(inp.settings)
    if not azure_configured(inp.settings):
        raise ToolUnavailable("no precomputed Objects and Azure AI Vision is not configured")
    return backends.tool("objects", "azure").fn(inp)


def objects(inp: ToolInput) -> str:
    if inp.precomputed and "Objects" in inp.precomputed:
        return objects_text(inp.precomputed["Objects"])
    return _azure_objects(inp)


def _available(inp: ToolInput) -> bool:
    if inp.precomputed and "Objects" in inp.precomputed:
        return True
    return azure_configured(inp.settings) and inp.image_reachable()


def objects_tool() -> VisualTool:
    return VisualTool(name="objects", description=DESCRIPTION, fn=objects, backend="plugin:objects",
                      check=_available, reads=_reads)


def _reads(inp: ToolInput) -> bool:
    """The image is read (by Azure) only for a sample without precomputed ``Objects``."""
    return not (inp.precomputed and "Objects" in inp.precomputed) and azure_configured(
        inp.settings)
