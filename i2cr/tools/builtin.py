"""The built-in visual tools and their backends.

Tool names are the paper's four clue types, in its fallback order: ``ocr``, ``caption``,
``dense_captions``, ``tags``. Backends:

- ``precomputed``: the sample's own clues (``mention_imgdesc_Azure`` in the I2CR datasets), so the
  dev data runs offline with the paper's Azure outputs;
- ``tesseract``: real OCR with the Tesseract binary (language and page-segmentation mode from the
  settings);
- ``auto``: per sample, the precomputed clue when the sample has one, else a live backend.

Azure AI Vision (``azure``) and CLIP zero-shot tags/captions (``clip``) live in their own
modules; :mod:`i2cr.tools.factory` puts a run's tools together.
"""

from __future__ import annotations

from typing import Any

from .base import ToolInput, ToolUnavailable, VisualTool, tesseract_available

PAPER_ORDER = ("ocr", "caption", "dense_captions", "tags")

DESCRIPTIONS = {
    "ocr": "Read the text written in the image (signs, captions, jerseys, name plates).",
    "caption": "A one-sentence description of the whole image.",
    "dense_captions": "Short descriptions of the regions of the image (people, objects, scenes).",
    "tags": "Tags for what the image contains (objects, scene, style).",
}
CLUE_KEYS = {"ocr": "OCR text", "caption": "Caption", "dense_captions": "Dense Captions",
             "tags": "Tags"}


def clue_text(value: Any) -> str:
    """A precomputed clue value (text, list, or object with a text/name) as one line of text."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return "; ".join(clue_text(v) for v in value if v)
    if isinstance(value, dict):
        return str(value.get("text") or value.get("name") or value.get("object_name") or "")
    return str(value)


def precomputed_tool(name: str) -> VisualTool:
    key = CLUE_KEYS[name]

    def fn(inp: ToolInput) -> str:
        if not inp.precomputed or key not in inp.precomputed:
            raise ToolUnavailable(f"the sample has no precomputed {key!r}")
        return clue_text(inp.precomputed[key]).strip()

    return VisualTool(name=name, description=DESCRIPTIONS[name], fn=fn, backend="precomputed",
                      needs_image=False,
                      check=lambda inp: bool(inp.precomputed and key in inp.precomputed))


def tesseract_ocr(inp: ToolInput) -> str:
    import pytesseract

    img = inp.image()
    lang = getattr(inp.settings, "tesseract_lang", "eng") or "eng"
    psm = int(getattr(inp.settings, "tesseract_psm", 3) or 3)
    text = pytesseract.image_to_string(img.image, lang=lang, config=f"--psm {psm}", timeout=60)
    return " ".join(text.split())


def tesseract_tool() -> VisualTool:
    return VisualTool(name="ocr", description=DESCRIPTIONS["ocr"], fn=tesseract_ocr,
                      backend="tesseract", version=_tesseract_version(),
                      check=lambda inp: tesseract_available() and inp.has_image(),
                      reads=lambda inp: tesseract_available())


def _tesseract_version() -> str:
    try:
        import pytesseract

        return str(pytesseract.get_tesseract_version())
    except Exception:  # noqa: BLE001
        return "unknown"


def first_available(name: str, tools: list[VisualTool]) -> VisualTool:
    """A tool that runs the first of several backends available for the input."""

    def pick(inp: ToolInput) -> VisualTool | None:
        return next((t for t in tools if t.available(inp)), None)

    def fn(inp: ToolInput) -> str:
        t = pick(inp)
        if t is None:
            raise ToolUnavailable(f"no backend of {name!r} can run for this input")
        return t.fn(inp)

    def reads(inp: ToolInput) -> bool:
        """A backend that may read the image comes before any that answers without it (such as
        the sample's precomputed clue, which then is what runs)."""
        for t in tools:
            if t.reads_image(inp):
                return True
            if t.available(inp):
                return False
        return False

    return VisualTool(name=name, description=DESCRIPTIONS.get(name, tools[0].description), fn=fn,
                      backend="auto(" + "|".join(t.backend for t in tools) + ")",
                      check=lambda inp: pick(inp) is not None, reads=reads)
