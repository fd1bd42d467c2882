"""IAV's image-text scorer: an open_clip model, scores in the paper's logit units (100 x cosine)."""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from .embeddings import ModelUnavailable
from .offline import hub_offline

_PAREN = re.compile(r"\s*\([^)]*\)")


def clip_text(desc: str) -> str:
    """The entity text CLIP sees: the description with parenthesised asides removed (as the paper)."""
    return _PAREN.sub("", desc).strip()


def _tag_files(model: str, pretrained: str) -> tuple[str, list[str]]:
    """Where a pretrained tag's weights are looked for (its hub repo, or its URL) and the files
    of them in the Hugging Face cache (none: not on this machine), for :func:`_require_local_weights`
    and :func:`clip_stamp`. ModelUnavailable when open_clip knows no such tag."""
    from huggingface_hub import try_to_load_from_cache
    from open_clip.pretrained import get_pretrained_cfg

    cfg = get_pretrained_cfg(model, pretrained)
    if not cfg:
        raise ModelUnavailable(f"open_clip knows no pretrained tag {pretrained!r} for {model!r}, "
                               "and it is not a checkpoint file")
    repo = (cfg.get("hf_hub") or "").strip("/")
    found = []
    if repo:
        for fname in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
            hit = try_to_load_from_cache(repo, fname)
            if isinstance(hit, str):
                found.append(hit)
    return repo or str(cfg.get("url")), found


def _require_local_weights(model: str, pretrained: str) -> None:
    """Fail fast, before building the model, when a pretrained tag's weights are not on disk."""
    if Path(pretrained).expanduser().is_file():
        return
    where, found = _tag_files(model, pretrained)
    if found:
        return
    raise ModelUnavailable(
        f"CLIP weights for {model} / {pretrained} are not on this machine (looked in the Hugging "
        f"Face cache for {where}); point clip_pretrained at a local checkpoint or "
        "set allow_downloads")


def files_stamp(*paths: str | None) -> tuple:
    """What a CLIP load read from disk, as its files stand now: each named path's size and
    modification time (None: not a file, e.g. a pretrained tag), so that a failure remembered
    for a run is tried again once a checkpoint or config there is replaced."""
    out: list[tuple[int, int] | None] = []
    for p in paths:
        try:
            st = Path(p).expanduser().stat() if p else None
        except (OSError, ValueError):
            st = None
        out.append((st.st_size, st.st_mtime_ns) if st is not None else None)
    return tuple(out)


def clip_stamp(model: str, pretrained: str | None, model_config: str | None) -> tuple:
    """:func:`files_stamp` of every file a CLIP load would read: its config, its checkpoint, and
    for a pretrained tag the weights the Hugging Face cache holds for it (so that weights put in
    the cache, or a cache folder whose mount came back, are tried again)."""
    cached: list[str] = []
    if pretrained and not Path(pretrained).expanduser().exists():
        name = model or (Path(model_config).stem if model_config else "")
        try:
            cached = _tag_files(name, pretrained)[1]
        except Exception:  # noqa: BLE001 - no such tag (the load says so), an unreadable cache
            cached = []
    return files_stamp(pretrained, model_config) + (tuple(cached),) + files_stamp(*cached)


class ClipScorer:
    def __init__(self, model: str, pretrained: str | None = None, *, model_config: str | None = None,
                 device: str = "cpu", allow_downloads: bool = False):
        import open_clip
        import torch

        self._torch = torch
        self.device = device
        if model_config:
            cfg = Path(model_config)
            if not cfg.is_file():
                raise ModelUnavailable(f"CLIP model config {model_config} does not exist")
            open_clip.add_model_config(cfg)
            model = model or cfg.stem
        self.model_name = model
        self.pretrained = pretrained or None
        if self.pretrained and not allow_downloads:
            _require_local_weights(model, self.pretrained)
        try:
            with hub_offline(not allow_downloads):
                self.model, _, self.preprocess = open_clip.create_model_and_transforms(
                    model, pretrained=self.pretrained, device=device)
                self.tokenizer = open_clip.get_tokenizer(model)
        except Exception as e:  # noqa: BLE001
            raise ModelUnavailable(
                f"cannot load CLIP {model!r} / {pretrained!r} ({type(e).__name__}: {e}). Point "
                "clip_pretrained at a local checkpoint, have the weights in the Hugging Face cache, "
                "or set allow_downloads") from e
        self.model.eval()
        self._text_cache: OrderedDict[str, object] = OrderedDict()
        self._image_cache: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()
        self.forward_passes = 0

    def _text_features(self, texts: Sequence[str]):
        torch = self._torch
        missing = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        if missing:
            with torch.no_grad():
                feats = self.model.encode_text(self.tokenizer(missing).to(self.device))
                feats = feats / feats.norm(dim=-1, keepdim=True)
            self.forward_passes += 1
            for t, f in zip(missing, feats, strict=True):
                self._text_cache[t] = f
            while len(self._text_cache) > 100_000:
                self._text_cache.popitem(last=False)
        return torch.stack([self._text_cache[t] for t in texts])

    def _image_features(self, image: Image.Image, key: str | None):
        torch = self._torch
        if key is not None and key in self._image_cache:
            return self._image_cache[key]
        with torch.no_grad():
            x = self.preprocess(image).unsqueeze(0).to(self.device)
            f = self.model.encode_image(x)[0]
            f = f / f.norm()
        self.forward_passes += 1
        if key is not None:
            self._image_cache[key] = f
            while len(self._image_cache) > 256:
                self._image_cache.popitem(last=False)
        return f

    def score(self, image: Image.Image, texts: Sequence[str], *, image_key: str | None = None
              ) -> list[float]:
        """100 x cosine between the image and each text (the paper's 'CLIP logit')."""
        with self._lock:
            img = self._image_features(image, image_key)
            txt = self._text_features([clip_text(t) for t in texts])
            return [float(x) for x in (txt @ img) * 100.0]
