"""Local tags and a caption from CLIP zero-shot scoring over a shipped vocabulary.

They run only when CLIP weights are configured (the same model IAV uses); otherwise they report
themselves unavailable and VIF does not offer them.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.resources import files
from typing import Any

from .base import ToolInput, ToolUnavailable, VisualTool
from .builtin import DESCRIPTIONS


def vocabulary() -> list[str]:
    text = files("i2cr.tools").joinpath("vocab.txt").read_text(encoding="utf-8")
    return [t.strip() for t in text.splitlines() if t.strip() and not t.startswith("#")]


def _ranked(inp: ToolInput, get_clip: Callable[[], Any]) -> list[tuple[str, float]]:
    try:
        clip = get_clip()
    except Exception as e:  # noqa: BLE001 - ModelUnavailable and friends
        raise ToolUnavailable(f"CLIP not configured ({e})") from None
    img = inp.image()
    vocab = vocabulary()
    scores = clip.score(img.image, [f"a photo of {t}" for t in vocab], image_key=img.sha256)
    return sorted(zip(vocab, scores, strict=True), key=lambda x: -x[1])


def clip_tags_tool(get_clip: Callable[[], Any], k: int = 8) -> VisualTool:
    def fn(inp: ToolInput) -> str:
        return "; ".join(t for t, _ in _ranked(inp, get_clip)[:k])

    return VisualTool(name="tags", description=DESCRIPTIONS["tags"], fn=fn,
                      backend="clip-zero-shot", check=lambda inp: _can(inp, get_clip),
                      reads=lambda inp: _loads(get_clip))


def clip_caption_tool(get_clip: Callable[[], Any]) -> VisualTool:
    def fn(inp: ToolInput) -> str:
        top = [t for t, _ in _ranked(inp, get_clip)[:3]]
        return f"a photo of {top[0]}" + (f" with {top[1]} and {top[2]}" if len(top) == 3 else "")

    return VisualTool(name="caption", description=DESCRIPTIONS["caption"], fn=fn,
                      backend="clip-zero-shot", check=lambda inp: _can(inp, get_clip),
                      reads=lambda inp: _loads(get_clip))


def _loads(get_clip: Callable[[], Any]) -> bool:
    """Whether CLIP loads (without it, these tools never read the image)."""
    try:
        get_clip()
    except Exception:  # noqa: BLE001
        return False
    return True


def _can(inp: ToolInput, get_clip: Callable[[], Any]) -> bool:
    return _loads(get_clip) and inp.has_image()
