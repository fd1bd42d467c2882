"""Loading mention images from a local path, an ``http(s)`` URL or a ``data:`` URL, with clear
reasons when that fails.

What may be loaded is the process's :class:`ImagePolicy`. The default (the CLI, notebooks) reads
any local path and fetches any URL. A server (:mod:`i2cr.serve`) installs a strict one: local
paths only under its image root, and no URL that resolves to a loopback, private, link-local or
otherwise non-public address (every address of the host is checked before connecting, and the
address actually connected to again, so DNS rebinding cannot slip past) unless it allows private
URLs; redirects are followed one hop at a time, each hop checked.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import ipaddress
import re
import socket
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote_to_bytes, urljoin, urlsplit

import httpx
from PIL import Image, UnidentifiedImageError

MAX_IMAGE_BYTES = 50 * 1024 * 1024  # the size cap of an image file or download
MAX_PIXELS = 80_000_000
DEFAULT_DEADLINE = 20.0  # seconds for a whole URL download (the image_timeout setting)
MAX_DATA_URL_BYTES = 4 * 1024 * 1024  # the size cap of an image given inline as a data: URL
MAX_REDIRECTS = 5


class ImageError(RuntimeError):
    """An image could not be used. ``kind`` is one of: missing, corrupt, unsupported, unreachable,
    timeout (a download that did not finish within its deadline), refused (the process's
    :class:`ImagePolicy` does not allow it)."""

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
    if ref.startswith("data:"):  # never echo an inline image's bytes
        return ref.partition(",")[0] + ",…"
    return ref if len(ref) <= n else ref[: n - 20] + "…" + ref[-19:]


@dataclass(frozen=True)
class ImagePolicy:
    """What this process may load as a mention image.

    ``local_files``: read local paths at all; ``image_root``: when set, only paths that resolve
    (symlinks followed) to a regular file under it; ``allow_private_urls``: fetch URLs whose host
    resolves to a loopback, private, link-local, multicast, reserved or unspecified address;
    ``max_bytes``: the size cap of a file or download."""

    local_files: bool = True
    image_root: str | None = None
    allow_private_urls: bool = True
    max_bytes: int = MAX_IMAGE_BYTES

    @classmethod
    def server(cls, *, image_root: str | None = None, allow_private_urls: bool = False,
               max_bytes: int = MAX_IMAGE_BYTES) -> ImagePolicy:
        """A served linker's policy: local paths only under ``image_root`` (none without one),
        public URLs only unless ``allow_private_urls``."""
        return cls(local_files=bool(image_root), image_root=image_root,
                   allow_private_urls=allow_private_urls, max_bytes=max_bytes)

    @property
    def strict(self) -> bool:
        return not (self.local_files and self.image_root is None and self.allow_private_urls)


_POLICY = ImagePolicy()
_POLICY_LOCK = threading.Lock()


def policy() -> ImagePolicy:
    """The image policy in force in this process."""
    return _POLICY


def set_policy(new: ImagePolicy) -> ImagePolicy:
    """Install ``new`` for the whole process (a server does it once at start); returns the old
    one. Loaders forget what they loaded under the old policy, so none of it is served."""
    global _POLICY
    with _POLICY_LOCK:
        old, _POLICY = _POLICY, new
    return old


@contextmanager
def using_policy(new: ImagePolicy) -> Iterator[ImagePolicy]:
    """``new`` in force within the block (tests, in-process servers)."""
    old = set_policy(new)
    try:
        yield new
    finally:
        set_policy(old)


_resolve = socket.getaddrinfo  # one name, so that a test can play a rebinding DNS server


def _public(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_global and not addr.is_multicast


def check_url(ref: str, pol: ImagePolicy | None = None) -> None:
    """Refuse (:class:`ImageError` 'refused') a URL the policy does not allow: a scheme other than
    http(s), no host, or, unless private URLs are allowed, a host with any non-public address."""
    pol = pol or policy()
    try:
        parts = urlsplit(ref)
        host, port = parts.hostname, parts.port
    except ValueError:
        raise ImageError("refused", "image URL is malformed") from None
    if parts.scheme not in ("http", "https"):
        raise ImageError("refused", f"image URL scheme {parts.scheme!r} is not http or https")
    if not host:
        raise ImageError("refused", "image URL has no host")
    if pol.allow_private_urls:
        return
    try:
        infos = _resolve(host, port or (443 if parts.scheme == "https" else 80),
                                   type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise ImageError("unreachable", "cannot resolve the image URL's host") from None
    bad = sorted({str(i[4][0]) for i in infos if not _public(str(i[4][0]))})
    if bad or not infos:  # no host in the reason: it may be internal
        raise ImageError("refused", "image URL points at a loopback, private or link-local "
                         f"address ({', '.join(bad[:3])}); this server does not fetch those "
                         "(allow_private_urls)")


class _Deadline:
    """Cuts a download off at its deadline, whatever the server does: per-read timeouts never
    fire for a server that sends one byte a second, so a timer shuts the connection's sockets
    down (httpcore's ``trace`` hook hands them over as they are opened), which wakes a blocked
    read at once."""

    def __init__(self, seconds: float, check_peer: bool = False):
        self.seconds, self.check_peer = seconds, check_peer
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
        if sock is not None and self.check_peer:  # the address really connected to
            try:
                peer = str(sock.getpeername()[0])
            except OSError:
                peer = ""
            if not peer or not _public(peer):
                self._shut(sock)
                raise ImageError("refused", "image URL connected to a loopback, private or "
                                 "link-local address; this server does not fetch those "
                                 "(allow_private_urls)")
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


def _fetch(ref: str, timeout: float, deadline: float, pol: ImagePolicy | None = None) -> bytes:
    pol = pol or policy()
    cap = pol.max_bytes
    check_url(ref, pol)
    # ``timeout`` bounds the connect only: a server that connects and then stalls is the
    # deadline's (its 'timeout'), and a shorter per-read timeout would call it 'unreachable' first
    limits = httpx.Timeout(deadline + 1.0, connect=max(min(timeout, deadline), 0.001))
    with _Deadline(deadline, check_peer=not pol.allow_private_urls) as dl, \
            httpx.Client(timeout=limits, follow_redirects=False, trust_env=not pol.strict) as client:
        try:
            url = ref
            for _hop in range(MAX_REDIRECTS + 1):
                with client.stream("GET", url, extensions={"trace": dl.trace}) as r:
                    if r.is_redirect and r.headers.get("location"):
                        url = urljoin(url, r.headers["location"])
                        check_url(url, pol)  # every hop is held to the policy
                        continue
                    r.raise_for_status()
                    length = r.headers.get("content-length", "")
                    if length.isdigit() and int(length) > cap:
                        raise ImageError("unsupported", f"image at URL is {length} bytes, over "
                                         f"{cap}")
                    chunks, n = [], 0
                    for chunk in r.iter_bytes():
                        n += len(chunk)
                        if n > cap:
                            raise ImageError("unsupported", f"image at URL is over {cap} bytes")
                        if dl.expired.is_set():
                            raise dl.error()
                        chunks.append(chunk)
                    if dl.expired.is_set():
                        raise dl.error()
                    return b"".join(chunks)
            raise ImageError("unreachable", f"image URL redirects more than {MAX_REDIRECTS} times")
        except httpx.HTTPError as e:
            if dl.expired.is_set():
                raise dl.error() from None
            raise ImageError("unreachable", f"cannot fetch image URL ({type(e).__name__})") from None


def data_url_bytes(ref: str, cap: int = MAX_DATA_URL_BYTES) -> bytes:
    """The bytes of a ``data:`` URL (base64 or percent-encoded), at most ``cap`` of them."""
    head, sep, payload = ref.partition(",")
    if not sep:
        raise ImageError("corrupt", "data: URL has no ',' before its data")
    b64 = head.endswith(";base64")
    if len(payload) > ((cap * 4) // 3 + 8 if b64 else 3 * cap):  # before decoding anything
        raise ImageError("unsupported", f"inline image (data: URL) is over {cap} bytes")
    try:
        data = base64.b64decode(payload, validate=True) if b64 else unquote_to_bytes(payload)
    except (binascii.Error, ValueError):
        raise ImageError("corrupt", "data: URL is not valid base64") from None
    if len(data) > cap:
        raise ImageError("unsupported", f"inline image (data: URL) is over {cap} bytes")
    if not data:
        raise ImageError("corrupt", "data: URL is empty")
    return data


def _local_path(ref: str, pol: ImagePolicy) -> Path:
    """The path to read for ``ref`` under the policy (resolved under the image root when there
    is one), or :class:`ImageError` 'refused'."""
    if not pol.local_files:
        raise ImageError("refused", "local image paths are not accepted here; send the image as "
                         "an http(s) URL or a data: URL")
    if pol.image_root is None:
        return Path(ref)
    try:
        root = Path(pol.image_root).resolve(strict=True)
        p = Path(ref)
        real = (p if p.is_absolute() else root / p).resolve(strict=True)
    except (OSError, RuntimeError):
        raise ImageError("missing", f"no image file at {_short(ref)} under the image root") from None
    if not real.is_relative_to(root):
        raise ImageError("refused", f"image path {_short(ref)} is outside the image root")
    return real


def check_ref(ref: str, pol: ImagePolicy | None = None) -> None:
    """Refuse (:class:`ImageError` 'refused') an image reference the policy does not allow,
    without reading it: the URL rules for http(s), the scheme and image-root rules otherwise."""
    pol = pol or policy()
    if ref.startswith("data:"):
        return
    if ref.startswith(("http://", "https://")):
        check_url(ref, pol)
        return
    scheme = urlsplit(ref).scheme if ":" in ref else ""
    if pol.strict and len(scheme) > 1:
        raise ImageError("refused", f"image URL scheme {scheme!r} is not http, https or data")
    if pol.strict:
        _local_path(ref, pol)


def _read_bytes(ref: str, timeout: float, deadline: float = DEFAULT_DEADLINE,
                pol: ImagePolicy | None = None) -> bytes:
    pol = pol or policy()
    if ref.startswith("data:"):
        return data_url_bytes(ref, min(MAX_DATA_URL_BYTES, pol.max_bytes))
    if ref.startswith(("http://", "https://")):
        return _fetch(ref, timeout, deadline, pol)
    scheme = urlsplit(ref).scheme if ":" in ref else ""
    if pol.strict and len(scheme) > 1:  # file:, ftp:, gopher: ... (one letter: a Windows drive)
        raise ImageError("refused", f"image URL scheme {scheme!r} is not http, https or data")
    p = _local_path(ref, pol)
    try:
        if not p.exists():
            raise ImageError("missing", f"no image file at {_short(ref)}")
        if not p.is_file():
            raise ImageError("missing", f"{_short(ref)} is not a file")
        size = p.stat().st_size
        if size == 0:
            raise ImageError("corrupt", f"image file {_short(ref)} is empty (0 bytes)")
        if size > pol.max_bytes:
            raise ImageError("unsupported",
                             f"image file {_short(ref)} is {size} bytes, over {pol.max_bytes}")
        return p.read_bytes()
    except OSError as e:  # e.g. a path over the file system's name limit, or no permission
        raise ImageError("missing", f"cannot read image file {_short(ref)} "
                         f"({e.strerror or type(e).__name__})") from None


_ADDRESS = re.compile(r" ?<[^<>]* at 0x[0-9a-fA-F]+>")


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
        # (PIL names the buffer it read, "<_io.BytesIO object at 0x7f..>": an address that
        # changes every run, so the reason, and the result file, would not be reproducible)
        why = _ADDRESS.sub("", str(e))
        raise ImageError("corrupt", f"cannot decode image {_short(ref)} "
                         f"({type(e).__name__}: {why})") from None
    return LoadedImage(ref=ref, data=data, image=rgb, sha256=hashlib.sha256(data).hexdigest())


class ImageLoader:
    """Loads and decodes images, keeping the last few in memory (a run's tools and IAV share them:
    one loader per :class:`i2cr.graph.resources.Resources`). An image that failed stays failed
    for the run that asked (it is not fetched again per node), not beyond it; everything is
    forgotten when the process's image policy changes."""

    def __init__(self, capacity: int = 8, timeout: float = 15.0,
                 deadline: float = DEFAULT_DEADLINE):
        self.capacity, self.timeout, self.deadline = capacity, timeout, deadline
        self._cache: OrderedDict[str, LoadedImage | ImageError] = OrderedDict()
        self._lock = threading.Lock()
        self._policy = policy()

    def load(self, ref: str, *, deadline: float | None = None) -> LoadedImage:
        """The decoded image; a URL's download must finish within ``deadline`` seconds (the
        loader's own when None)."""
        with self._lock:
            if self._policy is not policy():  # nothing loaded under another policy is served
                self._cache.clear()
                self._policy = policy()
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

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()

