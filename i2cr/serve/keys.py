"""The one API-key check, used by LangGraph's custom auth (:mod:`i2cr.serve.auth`) for its API
and by the custom routes (:mod:`i2cr.serve.app`). A key travels in ``x-api-key`` or as
``Authorization: Bearer <key>``; it is compared in constant time and never logged: the caller
is known by a short hash of its key."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

UNAUTHORIZED = "missing or invalid API key (send it in the x-api-key header)"


def _get(headers: Mapping[Any, Any], name: str) -> str | None:
    """A header from Starlette's ``Headers`` (str keys) or an ASGI scope's dict (bytes keys)."""
    v = headers.get(name)
    if v is None and isinstance(headers, dict):
        v = headers.get(name.encode())
    if v is None:
        return None
    return v.decode("latin-1") if isinstance(v, bytes) else str(v)


def presented_key(headers: Mapping[Any, Any]) -> str | None:
    key = _get(headers, "x-api-key")
    if key:
        return key.strip()
    auth = _get(headers, "authorization") or ""
    scheme, _, value = auth.strip().partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def identity(key: str) -> str:
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:12]


def verify(headers: Mapping[Any, Any], keys: tuple[str, ...]) -> str | None:
    """The caller's identity when its key is one of ``keys``, ``'anonymous'`` when no keys are
    configured (auth off), else None."""
    if not keys:
        return "anonymous"
    key = presented_key(headers)
    if not key:
        return None
    ok = False
    for k in keys:  # every key compared, in constant time
        ok |= hmac.compare_digest(key.encode(), k.encode())
    return identity(key) if ok else None
