"""Loading mention images from a local path or a URL, with clear reasons when that fails."""

from __future__ import annotations

import hashlib
import io
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

MAX_IMAGE_BYTES = 50 * 1024 * 1024
MAX_PIXELS = 80_000_000


class ImageError(RuntimeError):
    """An image could not be used. ``kind`` is one of: missing, corrupt, unsupported, unreachable."""

    def __init__(self, kind: str, reason: str):
        self.kind, self.reason = kind, reason
        super().__init__(f"{kind}: {reason}")


@dataclass(frozen=True)
class LoadedImage:
    ref: str
    data: bytes
    image: Image.Image  # RGB
    sha256: str

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size


def _read_bytes(ref: str, timeout: float) -> bytes:
    if ref.startswith(("http://", "https://")):
        import httpx

        try:
            with httpx.stream("GET", ref, timeout=timeout, follow_redirects=True) as r:
                r.raise_for_status()
                chunks, n = [], 0
                for chunk in r.iter_bytes():
                    n += len(chunk)
                    if n > MAX_IMAGE_BYTES:
                        raise ImageError("unsupported", f"image at URL is over {MAX_IMAGE_BYTES} bytes")
                    chunks.append(chunk)
                return b"".join(chunks)
        except httpx.HTTPError as e:
            raise ImageError("unreachable", f"cannot fetch image URL ({type(e).__name__})") from None
    p = Path(ref)
    if not p.exists():
        raise ImageError("missing", f"no image file at {ref}")
    if not p.is_file():
        raise ImageError("missing", f"{ref} is not a file")
    size = p.stat().st_size
    if size == 0:
        raise ImageError("corrupt", f"image file {ref} is empty (0 bytes)")
    if size > MAX_IMAGE_BYTES:
        raise ImageError("unsupported", f"image file {ref} is {size} bytes, over {MAX_IMAGE_BYTES}")
    return p.read_bytes()


def decode_image(ref: str, data: bytes) -> LoadedImage:
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > MAX_PIXELS:
                raise ImageError("unsupported", f"image {ref} has {im.width}x{im.height} pixels, "
                                 f"over {MAX_PIXELS}")
            im.load()
            rgb = im.convert("RGB")
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError("corrupt", f"cannot decode image {ref} ({type(e).__name__}: {e})") from None
    return LoadedImage(ref=ref, data=data, image=rgb, sha256=hashlib.sha256(data).hexdigest())


class ImageLoader:
    """Loads and decodes images, keeping the last few in memory (tools and IAV share them)."""

    def __init__(self, capacity: int = 8, timeout: float = 15.0):
        self.capacity, self.timeout = capacity, timeout
        self._cache: OrderedDict[str, LoadedImage | ImageError] = OrderedDict()
        self._lock = threading.Lock()

    def load(self, ref: str) -> LoadedImage:
        with self._lock:
            hit = self._cache.get(ref)
            if hit is not None:
                self._cache.move_to_end(ref)
        if hit is None:
            try:
                hit = decode_image(ref, _read_bytes(ref, self.timeout))
            except ImageError as e:
                hit = e
            with self._lock:
                self._cache[ref] = hit
                while len(self._cache) > self.capacity:
                    self._cache.popitem(last=False)
        if isinstance(hit, ImageError):
            raise hit
        return hit


IMAGES = ImageLoader()
