"""Loading mention images from a local path or a URL, with clear reasons when that fails."""

from __future__ import annotations

import hashlib
import io
import socket
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

MAX_IMAGE_BYTES = 50 * 1024 * 1024  # the size cap of an image file or download
MAX_PIXELS = 80_000_000
DEFAULT_DEADLINE = 20.0  # seconds for a whole URL download (the image_timeout setting)


class ImageError(RuntimeError):
    """An image could not be used. ``kind`` is one of: missing, corrupt, unsupported, unreachable,
    timeout (a download that did not finish within its deadline)."""

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


def _short(ref: str, n: int = 160) -> str:
    return ref if len(ref) <= n else ref[: n - 20] + "…" + ref[-19:]


class _Deadline:
    """Cuts a download off at its deadline, whatever the server does: per-read timeouts never
    fire for a server that sends one byte a second, so a timer shuts the connection's sockets
    down (httpcore's ``trace`` hook hands them over as they are opened), which wakes a blocked
    read at once."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.expired = threading.Event()
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(seconds, 0.0), self._expire)
        self._timer.daemon = True

    def trace(self, name: str, info: dict) -> None:
        if not name.endswith((".connect_tcp.complete", ".start_tls.complete")):
            return
        stream = info.get("return_value")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if sock is not None:
            with self._lock:
                self._socks.append(sock)
            if self.expired.is_set():
                self._shut(sock)

    @staticmethod
    def _shut(sock: socket.socket) -> None:
        try:  # the plain socket call: SSLSocket.shutdown would drop its TLS state under a reader
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:
            pass

    def _expire(self) -> None:
        self.expired.set()
        with self._lock:
            socks = list(self._socks)
        for sock in socks:
            self._shut(sock)

    def error(self) -> ImageError:  # no URL in reasons: it may carry a signed token
        return ImageError("timeout", f"image URL did not finish downloading within "
                          f"{self.seconds:g} s (image_timeout)")

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()


def _fetch(ref: str, timeout: float, deadline: float) -> bytes:
    import httpx

    with _Deadline(deadline) as dl, httpx.Client(timeout=max(min(timeout, deadline), 0.001),
                                                 follow_redirects=True) as client:
        try:
            with client.stream("GET", ref, extensions={"trace": dl.trace}) as r:
                r.raise_for_status()
                length = r.headers.get("content-length", "")
                if length.isdigit() and int(length) > MAX_IMAGE_BYTES:
                    raise ImageError("unsupported", f"image at URL is {length} bytes, over "
                                     f"{MAX_IMAGE_BYTES}")
                chunks, n = [], 0
                for chunk in r.iter_bytes():
                    n += len(chunk)
                    if n > MAX_IMAGE_BYTES:
                        raise ImageError("unsupported",
                                         f"image at URL is over {MAX_IMAGE_BYTES} bytes")
                    if dl.expired.is_set():
                        raise dl.error()
                    chunks.append(chunk)
                if dl.expired.is_set():
                    raise dl.error()
                return b"".join(chunks)
        except httpx.HTTPError as e:
            if dl.expired.is_set():
                raise dl.error() from None
            raise ImageError("unreachable", f"cannot fetch image URL ({type(e).__name__})") from None


def _read_bytes(ref: str, timeout: float, deadline: float = DEFAULT_DEADLINE) -> bytes:
    if ref.startswith(("http://", "https://")):
        return _fetch(ref, timeout, deadline)
    p = Path(ref)
    try:
        if not p.exists():
            raise ImageError("missing", f"no image file at {_short(ref)}")
        if not p.is_file():
            raise ImageError("missing", f"{_short(ref)} is not a file")
        size = p.stat().st_size
        if size == 0:
            raise ImageError("corrupt", f"image file {_short(ref)} is empty (0 bytes)")
        if size > MAX_IMAGE_BYTES:
            raise ImageError("unsupported",
                             f"image file {_short(ref)} is {size} bytes, over {MAX_IMAGE_BYTES}")
        return p.read_bytes()
    except OSError as e:  # e.g. a path over the file system's name limit, or no permission
        raise ImageError("missing", f"cannot read image file {_short(ref)} "
                         f"({e.strerror or type(e).__name__})") from None


def decode_image(ref: str, data: bytes) -> LoadedImage:
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > MAX_PIXELS:
                raise ImageError("unsupported", f"image {_short(ref)} has "
                                 f"{im.width}x{im.height} pixels, "
                                 f"over {MAX_PIXELS}")
            im.load()
            rgb = im.convert("RGB")
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError("corrupt", f"cannot decode image {_short(ref)} "
                         f"({type(e).__name__}: {e})") from None
    return LoadedImage(ref=ref, data=data, image=rgb, sha256=hashlib.sha256(data).hexdigest())


class ImageLoader:
    """Loads and decodes images, keeping the last few in memory (tools and IAV share them)."""

    def __init__(self, capacity: int = 8, timeout: float = 15.0,
                 deadline: float = DEFAULT_DEADLINE):
        self.capacity, self.timeout, self.deadline = capacity, timeout, deadline
        self._cache: OrderedDict[str, LoadedImage | ImageError] = OrderedDict()
        self._lock = threading.Lock()

    def load(self, ref: str, *, deadline: float | None = None) -> LoadedImage:
        """The decoded image; a URL's download must finish within ``deadline`` seconds (the
        loader's own when None)."""
        with self._lock:
            hit = self._cache.get(ref)
            if hit is not None:
                self._cache.move_to_end(ref)
        if hit is None:
            try:
                limit = self.deadline if deadline is None else deadline
                hit = decode_image(ref, _read_bytes(ref, self.timeout, limit))
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
