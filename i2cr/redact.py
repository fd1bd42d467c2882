"""Secrets never reach output: the one place that scrubs them from error texts.

A secret is the value of a configured credential: the LLM keys (``I2CR_LLM_API_KEY``,
``OPENAI_API_KEY``, ``AZURE_OPENAI_API_KEY``), the Azure AI Vision key (``VISION_KEY``), any
environment variable named ``*_KEY``, ``*_TOKEN``, ``*_SECRET`` or ``*_PASSWORD`` whose value is
long enough to be one, and any key handed to i2cr in code (:func:`register`). Credentials that
travel in headers are also caught by shape (``Bearer …``, ``api-key: …``, ``sk-…``), so a server
that echoes the request's ``Authorization`` header is scrubbed even for a key i2cr never saw.

Every error text goes through :func:`scrub` (or :func:`error_text`) before it is stored (results,
events, checkpoint) or printed; exceptions from chat models are scrubbed where they are raised
(:func:`scrub_exception`), so what a node records is already clean.
"""

from __future__ import annotations

import os
import re
import threading
from typing import Any

from .envvars import LLM_API_KEY

MASK = "***"
KNOWN_NAMES = (LLM_API_KEY, "OPENAI_API_KEY", "AZURE_OPENAI_API_KEY", "VISION_KEY")
_SECRET_NAME = re.compile(r"(?:^|_)(?:API_?KEY|KEY|TOKEN|SECRET|PASSWORD|PASSWD)$", re.I)
MIN_KNOWN = 4   # a configured key of this length or more is masked wherever it appears
MIN_OTHER = 8   # a *_KEY/*_TOKEN variable's value shorter than this is not taken for a secret

_SHAPES = [
    # Authorization: Bearer <token> / Basic <credentials>
    (re.compile(r"(?i)\b(bearer|basic)(\s+)[A-Za-z0-9._~+/=\-]{4,}"), r"\1\2" + MASK),
    # api-key: <key>, "x-api-key": "<key>", Ocp-Apim-Subscription-Key=<key>, token: <t> ...
    (re.compile(r"(?i)((?:api[-_]?key|subscription[-_]key|access[-_]?token|auth[-_]?token|"
                r"password|secret)[\"']?\s*[:=]\s*[\"']?)(?!(?:bearer|basic)\s)"
                r"[^\s\"',;}\]]{4,}"), r"\1" + MASK),
    # OpenAI-style keys
    (re.compile(r"\bsk-(?:proj-)?[A-Za-z0-9_\-]{12,}"), "sk-" + MASK),
]

_extra: set[str] = set()
_extra_lock = threading.Lock()


def register(value: str | None) -> None:
    """Treat ``value`` as a secret from now on (a key given in code rather than the environment)."""
    if value and len(value) >= MIN_KNOWN:
        with _extra_lock:
            _extra.add(value)


def secret_values(extra: tuple[str | None, ...] | list[str | None] = ()) -> list[str]:
    """Every secret in force now, longest first (so a key containing another is masked whole)."""
    found: set[str] = set()
    for name, value in os.environ.items():
        if not value:
            continue
        if name.upper() in KNOWN_NAMES:
            if len(value) >= MIN_KNOWN:
                found.add(value)
        elif len(value) >= MIN_OTHER and _SECRET_NAME.search(name):
            found.add(value)
    with _extra_lock:
        found |= _extra
    found.update(v for v in extra if v and len(v) >= MIN_KNOWN)
    return sorted(found, key=len, reverse=True)


def scrub(text: Any, extra: tuple[str | None, ...] | list[str | None] = ()) -> Any:
    """``text`` with every secret and credential-shaped string masked (non-strings pass through)."""
    if not isinstance(text, str) or not text:
        return text
    for s in secret_values(extra):
        if s in text:
            text = text.replace(s, MASK)
    for pat, repl in _SHAPES:
        text = pat.sub(repl, text)
    return text


# a local path: absolute (/a/b, C:\\a), from home (~/a) or relative (./a, ../a); not the path of
# a URL (http://host/v1/models: after a host name, a port or another '/'), not '/v1' on its own
_PATH = re.compile(r"(?<![\w.:/\\~-])(?:(?:~|\.{1,2})/[^\s'\"(),;]+|/[^\s/'\"(),;]+/[^\s'\"(),;]*|"
                   r"[A-Za-z]:\\[^\s'\"(),;]*)")
PATH_MASK = "<path>"
MAX_CAUSE = 200  # characters of a cause line's error text


def without_paths(text: str) -> str:
    """``text`` with every local path masked (``<path>``): for a line that names a failure's cause
    once for many records (a server's error body may name its own files; an exception the
    machine's), where the records' own error fields keep the full text."""
    return _PATH.sub(PATH_MASK, text)


def cause_text(text: Any) -> str:
    """An error text as a closing line names a cause: its first line, scrubbed of secrets and
    local paths, cut to :data:`MAX_CAUSE` characters."""
    line = (str(text).strip().splitlines() or [""])[0]
    line = without_paths(scrub(line))
    return line if len(line) <= MAX_CAUSE else line[: MAX_CAUSE - 1] + "…"


def error_text(err: BaseException) -> str:
    """``Type: message`` of an exception, scrubbed: the form errors are recorded in."""
    return scrub(f"{type(err).__name__}: {err}")


def scrub_data(obj: Any) -> Any:
    """A copy of ``obj`` (dicts, lists, strings) with every string scrubbed."""
    if isinstance(obj, str):
        return scrub(obj)
    if isinstance(obj, dict):
        return {k: scrub_data(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(scrub_data(v) for v in obj)
    return obj


class ScrubbedError(RuntimeError):
    """An exception whose text could not be cleaned in place, re-raised with a clean text."""


def scrub_exception(err: BaseException) -> BaseException:
    """``err`` with its message scrubbed in place (same type, so callers still see e.g.
    ``BadRequestError``); when its text still shows a secret, a :class:`ScrubbedError`."""
    try:
        text = str(err)
    except Exception:  # noqa: BLE001 - an exception that cannot even print itself
        return ScrubbedError(type(err).__name__)
    if scrub(text) == text:
        return err
    try:
        err.args = tuple(scrub_data(a) for a in err.args)
        for k, v in list(vars(err).items()):
            if isinstance(v, (str, dict, list)):
                setattr(err, k, scrub_data(v))
    except Exception:  # noqa: BLE001 - read-only attributes: fall back to a clean copy below
        pass
    try:
        text = str(err)
    except Exception:  # noqa: BLE001
        text = ""
    if scrub(text) != text or not text:
        return ScrubbedError(scrub(f"{type(err).__name__}: {text}"))
    return err
