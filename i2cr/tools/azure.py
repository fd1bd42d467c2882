"""Azure AI Vision (Image Analysis 4.0) as a visual-tool backend, with the official SDK
``azure-ai-vision-imageanalysis`` 1.0.

One HTTP call per image asks for every feature a run may need (READ, CAPTION, DENSE_CAPTIONS,
TAGS, OBJECTS); the parsed result is kept in memory and in the clue cache, and each tool reads its
part. Outputs have the shape of the precomputed clues in the I2CR datasets (``Caption``,
``Dense Captions``, ``Tags``, ``OCR text``, ``Objects``).

Credentials: ``VISION_ENDPOINT`` and ``VISION_KEY`` (or ``vision_endpoint`` in the settings); with
no key, an Entra ID credential from azure-identity (``DefaultAzureCredential``). The key is only
ever handed to the SDK's credential object; errors are scrubbed of it before they are recorded.
"""

from __future__ import annotations

import importlib.metadata
import io
import os
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from PIL import Image

from ..redact import register, scrub
from .base import ToolInput, ToolUnavailable, VisualTool
from .builtin import CLUE_KEYS, DESCRIPTIONS
from .cache import ClueCache

if TYPE_CHECKING:
    from azure.ai.vision.imageanalysis import ImageAnalysisClient

AZURE_MAX_BYTES = 20 * 1024 * 1024
AZURE_MIN_SIDE = 50
AZURE_MAX_SIDE = 16000
API_VERSION = "2023-10-01"


class AzureVisionError(RuntimeError):
    pass


def _scrub(text: str, secret: str | None) -> str:
    """The shared scrubbing (every configured secret), plus this client's own key."""
    return scrub(text, (secret,))


def fit_for_azure(data: bytes, size: tuple[int, int], ref: str) -> bytes:
    """Check Azure's image limits before any call: refuse images under 50x50 px, shrink images
    over 20 MB or 16000 px (re-encoded as JPEG)."""
    w, h = size
    if min(w, h) < AZURE_MIN_SIDE:
        raise ToolUnavailable(f"image {ref} is {w}x{h} px; Azure AI Vision needs at least "
                              f"{AZURE_MIN_SIDE}x{AZURE_MIN_SIDE}")
    if len(data) <= AZURE_MAX_BYTES and max(w, h) <= AZURE_MAX_SIDE:
        return data
    im = Image.open(io.BytesIO(data)).convert("RGB")
    scale = min(1.0, AZURE_MAX_SIDE / max(w, h))
    quality = 90
    while True:
        nw, nh = max(AZURE_MIN_SIDE, int(w * scale)), max(AZURE_MIN_SIDE, int(h * scale))
        buf = io.BytesIO()
        im.resize((nw, nh)).save(buf, format="JPEG", quality=quality)
        if buf.tell() <= AZURE_MAX_BYTES:
            return buf.getvalue()
        scale *= 0.7
        quality = max(60, quality - 10)


def parse_result(result: Any) -> dict[str, Any]:
    """An SDK ``ImageAnalysisResult`` -> the dataset's clue dict."""
    caption = result.caption.text if result.caption else ""
    dense = "; ".join(c.text for c in (result.dense_captions.list if result.dense_captions else []))
    tags = "; ".join(t.name for t in (result.tags.list if result.tags else []))
    lines: list[str] = []
    if result.read:
        for block in result.read.blocks:
            lines.extend(line.text for line in block.lines)
    objects = []
    for o in (result.objects.list if result.objects else []):
        tag = o.tags[0] if o.tags else None
        bb = o.bounding_box
        objects.append({"object_name": tag.name if tag else "object",
                        "confidence": round(tag.confidence, 3) if tag else None,
                        "bounding_box": [bb.x, bb.y, bb.width, bb.height]})
    return {"Caption": caption, "Dense Captions": dense, "Tags": tags,
            "OCR text": " ".join(lines), "Objects": objects}


class AzureVision:
    """A shared client: one analyze call per image, cached in memory and on disk."""

    def __init__(self, endpoint: str | None = None, key: str | None = None, *, credential: Any = None,
                 timeout: float = 30.0, retries: int = 3, backoff: float = 0.8,
                 cache: ClueCache | None = None, language: str = "en"):
        self.endpoint = (endpoint or os.environ.get("VISION_ENDPOINT") or "").rstrip("/")
        if not self.endpoint:
            raise ToolUnavailable("Azure AI Vision needs VISION_ENDPOINT (and VISION_KEY, or an "
                                  "Entra ID login)")
        self._key = key if key is not None else os.environ.get("VISION_KEY")
        register(self._key)  # scrubbed from every error text, not only this client's
        self._credential = credential
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.cache, self.language = cache, language
        self._client: ImageAnalysisClient | None = None
        self._memo: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self.requests = 0  # analyze calls sent (for tests and reports)

    def __repr__(self) -> str:  # never show the key
        return f"AzureVision(endpoint={self.endpoint!r})"

    @property
    def version(self) -> str:
        try:  # the SDK's version as its distribution records it (a key of the clue cache)
            return f"sdk{importlib.metadata.version('azure-ai-vision-imageanalysis')}-api{API_VERSION}"
        except importlib.metadata.PackageNotFoundError:
            return f"api{API_VERSION}"

    def client(self) -> ImageAnalysisClient:
        if self._client is None:
            try:
                from azure.ai.vision.imageanalysis import ImageAnalysisClient
            except ImportError:
                raise ToolUnavailable("Azure AI Vision needs azure-ai-vision-imageanalysis "
                                      "(pip install 'i2cr[azure]')") from None
            if self._credential is not None:
                cred = self._credential
            elif self._key:
                from azure.core.credentials import AzureKeyCredential

                cred = AzureKeyCredential(self._key)
            else:
                try:
                    from azure.identity import DefaultAzureCredential
                except ImportError:
                    raise ToolUnavailable("no VISION_KEY and no azure-identity for an Entra ID "
                                          "login") from None
                cred = DefaultAzureCredential()
            self._client = ImageAnalysisClient(
                endpoint=self.endpoint, credential=cred, connection_timeout=self.timeout,
                read_timeout=self.timeout, retry_total=self.retries,
                retry_backoff_factor=self.backoff, retry_backoff_max=30,
                logging_enable=False)
        return self._client

    def analyze(self, inp: ToolInput) -> dict[str, Any]:
        """Every clue for the image, from memory, the disk cache, or one Azure call."""
        if not inp.image_ref:
            raise ToolUnavailable("the mention has no image")
        ikey = inp.image_key()
        with self._lock:
            if ikey in self._memo:
                return self._memo[ikey]
            lock = self._locks.setdefault(ikey, threading.Lock())
        with lock:  # one call per image even when tools ask at once
            with self._lock:
                if ikey in self._memo:
                    return self._memo[ikey]
            ckey = ClueCache.key(ikey, "analyze", "azure", self.version)
            clues = self.cache.get(ckey) if self.cache is not None else None
            if clues is None:
                clues = self._call(inp)
                if self.cache is not None:
                    self.cache.set(ckey, clues)
            with self._lock:
                self._memo[ikey] = clues
                while len(self._memo) > 256:
                    self._memo.popitem(last=False)
            return clues

    def _call(self, inp: ToolInput) -> dict[str, Any]:
        from azure.ai.vision.imageanalysis.models import VisualFeatures
        from azure.core.exceptions import AzureError, HttpResponseError, ServiceResponseError

        feats = [VisualFeatures.READ, VisualFeatures.CAPTION, VisualFeatures.DENSE_CAPTIONS,
                 VisualFeatures.TAGS, VisualFeatures.OBJECTS]
        ref = inp.image_ref or ""
        is_url = inp.is_url()
        data: bytes | None = None  # None for a URL: the service fetches it
        if not is_url:
            img = inp.image()
            data = fit_for_azure(img.data, img.size, ref)  # limits checked before any call
        attempt = 0
        while True:
            self.requests += 1
            try:
                if data is None:
                    result = self.client().analyze_from_url(image_url=ref, visual_features=feats,
                                                            language=self.language)
                else:
                    result = self.client().analyze(image_data=data, visual_features=feats,
                                                   language=self.language)
                break
            except HttpResponseError as e:  # 429/5xx were already retried by azure-core
                raise AzureVisionError(_scrub(
                    f"Azure AI Vision answered HTTP {e.status_code}: {e.reason or ''} "
                    f"{getattr(e.error, 'message', '') or ''}".strip(), self._key)) from None
            except ServiceResponseError as e:
                # azure-core does not retry a read timeout on POST; analyze is idempotent, so we do
                if attempt < self.retries:
                    attempt += 1
                    time.sleep(self.backoff * 2 ** (attempt - 1))
                    continue
                raise AzureVisionError(_scrub(f"Azure AI Vision failed after {attempt + 1} "
                                              f"tries: {type(e).__name__}: {e}", self._key)) from None
            except AzureError as e:
                raise AzureVisionError(_scrub(f"Azure AI Vision failed: {type(e).__name__}: {e}",
                                              self._key)) from None
        return parse_result(result)


def objects_text(objs: Any) -> str:
    if not objs:
        return ""
    if isinstance(objs, str):
        return objs
    parts = []
    for o in objs:
        name = o.get("object_name") or o.get("name") or "object"
        conf = o.get("confidence")
        parts.append(f"{name} ({conf:.2f})" if isinstance(conf, (int, float)) else name)
    return "; ".join(parts)


def azure_tool(name: str, vision: AzureVision) -> VisualTool:
    key = CLUE_KEYS.get(name, "Objects")

    def fn(inp: ToolInput) -> str:
        val = vision.analyze(inp)[key]
        return objects_text(val) if key == "Objects" else str(val)

    return VisualTool(name=name, description=DESCRIPTIONS.get(name, name), fn=fn, backend="azure",
                      version=vision.version,
                      check=lambda inp: inp.image_reachable())


def azure_configured(settings: Any) -> bool:
    """Whether an Azure AI Vision endpoint is set (in the settings or VISION_ENDPOINT)."""
    return bool(getattr(settings, "vision_endpoint", None) or os.environ.get("VISION_ENDPOINT"))


def vision_key(settings: Any, cache: ClueCache | None) -> tuple:
    """What a client is made of: the endpoint, its call settings and its clue cache's folder
    (:class:`i2cr.tools.factory.SharedBackends` keeps one client per key)."""
    endpoint = getattr(settings, "vision_endpoint", None) or os.environ.get("VISION_ENDPOINT")
    return (endpoint, getattr(settings, "vision_timeout", 30.0), getattr(settings, "vision_retries", 3),
            getattr(settings, "vision_backoff", 0.8), cache.directory if cache is not None else None)


def new_vision(key: tuple, cache: ClueCache | None) -> AzureVision:
    """A client for :func:`vision_key`'s ``key``."""
    endpoint, timeout, retries, backoff, _ = key
    return AzureVision(endpoint, timeout=timeout, retries=retries, backoff=backoff, cache=cache)
