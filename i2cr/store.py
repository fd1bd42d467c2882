"""A checked on-disk key-value store: the one rule for every persistent cache (entity embeddings,
tool clues). A cache is an optimisation only, so damage never reaches a mention:

- every value is framed with a checksum over its key and bytes, and a read that does not check
  out (garbage, a truncated or swapped value, random bytes of the right length) is a miss, which
  the caller recomputes and writes back (so damaged entries are rebuilt one by one);
- a store that cannot be opened or read (a damaged database, a file where the folder should be,
  no permission) is bypassed for the rest of the process;
- either is reported once per folder, as a warning on the ``i2cr.cache`` logger (on stderr when
  logging is not configured), never silently, and kept for :func:`problems`, which the CLI's
  closing lines and exit code read: a run over a failing cache answers, and says it failed;
  damaged entries are counted (the warning gives those found when it is said, the closing
  line those of the run). Another process's failures (a Ray worker's: :func:`failures` there)
  are kept here too with :func:`adopt`, so the driver's closing lines say them.

diskcache (SQLite underneath) keeps it safe for several processes and threads at once.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import diskcache

from .redact import error_text

LOG = logging.getLogger("i2cr.cache")
MAGIC = b"i2c1"
_DIGEST = 16
_WARNED_LOCK = threading.Lock()
# (what, folder) -> (when it last went wrong, on a counter; what went wrong, None for damaged
# entries): bounded by the number of caches; a cache is warned about when it first enters; a run
# reads what happened since its own start (:func:`mark`)
_FAILED: dict[tuple[str, str], tuple[int, str | None]] = {}
_DAMAGED: dict[tuple[str, str], int] = {}  # damaged entries found in this process, per cache
_CLOCK = itertools.count(1)
_NOW = 0


@dataclass(frozen=True)
class Mark:
    """A point in time to read :func:`problems` from: the failure clock and the damaged
    entries counted by then."""

    clock: int = 0
    damaged: dict[tuple[str, str], int] = field(default_factory=dict)


def mark() -> Mark:
    """A point to read :func:`problems` from (a run takes one when it starts)."""
    with _WARNED_LOCK:
        return Mark(_NOW, dict(_DAMAGED))


def damaged_entries(n: int) -> str:
    """What is said of a cache in which ``n`` damaged entries were found (its warning, and the
    closing lines through :func:`problems`)."""
    return (f"has damaged entries ({n} found; they failed their checksum); they are recomputed "
            "and rewritten, never used.")


@dataclass(frozen=True)
class Failure:
    """What went wrong with one cache (``what`` at ``directory``) in a span of time: why it is
    bypassed (``reason``), or None: ``damaged`` damaged entries were found."""

    what: str
    directory: str
    reason: str | None
    damaged: int = 0

    def phrase(self) -> str:
        """As :func:`problems` says it (no path)."""
        said = self.reason if self.reason is not None else damaged_entries(self.damaged)
        return f"{self.what}: {said}"


def _since(since: Mark | int) -> list[Failure]:
    clock, before = (since.clock, since.damaged) if isinstance(since, Mark) else (since, {})
    return [Failure(key[0], key[1], reason, _DAMAGED.get(key, 0) - before.get(key, 0))
            for key, (t, reason) in _FAILED.items() if t > clock]


def failures(since: Mark | int = 0) -> list[Failure]:
    """What went wrong with a cache after ``since`` (:func:`mark`; a bare clock value counts
    every damaged entry found), one per cache."""
    with _WARNED_LOCK:
        return _since(since)


def problems(since: Mark | int = 0) -> list[str]:
    """What went wrong with a cache after ``since`` (:func:`mark`), one phrase per cache (no
    paths: the warnings named them), e.g. 'embedding cache: has damaged entries (3 found; ...'."""
    return [f.phrase() for f in failures(since)]


def report(since: Mark) -> tuple[list[Failure], Mark]:
    """:func:`failures` after ``since`` and the mark to read the next ones from, at one instant
    (a Ray worker sends the driver each batch's, since the batch before: :func:`adopt`)."""
    with _WARNED_LOCK:
        return _since(since), Mark(_NOW, dict(_DAMAGED))


def _keep(key: tuple[str, str], reason: str | None, damaged: int) -> tuple[bool, str]:
    """Keep a failure of the cache ``key`` as the latest (a reason, or None: ``damaged`` more
    damaged entries); (whether the cache had failed before, what is said of it now). Under the
    lock."""
    global _NOW
    seen = key in _FAILED
    _NOW = next(_CLOCK)
    _FAILED[key] = (_NOW, reason)
    if damaged:
        _DAMAGED[key] = _DAMAGED.get(key, 0) + damaged
    return seen, reason if reason is not None else damaged_entries(_DAMAGED.get(key, 0))


def adopt(found: Iterable[Failure]) -> None:
    """Keep failures found in another process (a Ray worker, which warned of them on its own
    stderr) as this process's, for :func:`problems`: not warned again; the damaged entries of
    one cache are added up, one phrase per cache as in one process."""
    with _WARNED_LOCK:
        for f in found:
            _keep((f.what, f.directory), f.reason, f.damaged)


def _digest(key: str, payload: bytes) -> bytes:
    return hashlib.blake2b(key.encode("utf-8") + payload, digest_size=_DIGEST).digest()


def frame(key: str, payload: bytes) -> bytes:
    """``payload`` as stored under ``key``: a magic tag, its checksum, the bytes."""
    return MAGIC + _digest(key, payload) + payload


def unframe(key: str, raw: object) -> bytes | None:
    """The payload, or None when ``raw`` is not a value this store wrote under ``key``."""
    if not isinstance(raw, bytes) or len(raw) < len(MAGIC) + _DIGEST or not raw.startswith(MAGIC):
        return None
    digest, payload = raw[len(MAGIC): len(MAGIC) + _DIGEST], raw[len(MAGIC) + _DIGEST:]
    return payload if _digest(key, payload) == digest else None


class CheckedStore:
    """``get``/``set`` of bytes under string keys in a diskcache folder, checked as above.
    ``what`` names the cache in warnings (e.g. 'embedding cache')."""

    def __init__(self, directory: str, what: str, size_limit: int):
        self.directory = str(Path(directory).expanduser())
        self.what = what
        self.damaged = 0  # entries that failed their check (each was a miss)
        self.failure: str | None = None  # why the store is bypassed, once it is
        self._db = None
        try:
            self._db = diskcache.Cache(self.directory, size_limit=size_limit)
        except Exception as e:  # noqa: BLE001 - any failure to open means: run without it
            self._bypass(e)

    @property
    def usable(self) -> bool:
        return self._db is not None

    def _warn(self, reason: str | None, damaged: int = 0) -> None:
        """Keep what went wrong (``reason``; None: ``damaged`` more damaged entries were found)
        and warn, the first time for this cache."""
        with _WARNED_LOCK:
            seen, said = _keep((self.what, self.directory), reason, damaged)
            if seen:
                return
        LOG.warning("i2cr: %s at %s %s", self.what, self.directory, said)

    def _bypass(self, e: BaseException) -> None:
        self.failure = error_text(e)  # (scrubbed: it reaches stderr, report.md, metrics.json)
        self._db = None
        self._warn(f"is unusable ({self.failure}); running without it (remove it to have it "
                   "rebuilt).")

    def report_damage(self, n: int = 1) -> None:
        """``n`` damaged entries were found (each a miss, recomputed and rewritten)."""
        if n < 1:
            return
        self.damaged += n
        self._warn(None, n)

    def _read(self, key: str) -> tuple[bytes | None, bool]:
        """(the payload or None, whether a value was there that did not check out)."""
        db = self._db
        if db is None:
            return None, False
        try:
            raw = db.get(key, default=None)
        except Exception as e:  # noqa: BLE001
            self._bypass(e)
            return None, False
        if raw is None:
            return None, False
        payload = unframe(key, raw)
        return payload, payload is None

    def get(self, key: str) -> bytes | None:
        payload, bad = self._read(key)
        self.report_damage(bad)
        return payload

    def get_many(self, keys: Iterable[str]) -> tuple[list[bytes | None], int]:
        """The payloads of ``keys`` (None: a miss) and how many were damaged, not yet reported
        (the caller adds those it finds itself and calls :meth:`report_damage` once)."""
        out, bad = [], 0
        for key in keys:
            payload, damaged = self._read(key)
            out.append(payload)
            bad += damaged
        return out, bad

    def set_many(self, items: Iterable[tuple[str, bytes]]) -> None:
        db = self._db
        if db is None:
            return
        try:
            with db.transact():
                for key, payload in items:
                    db.set(key, frame(key, payload))
        except Exception as e:  # noqa: BLE001
            self._bypass(e)

    def set(self, key: str, payload: bytes) -> None:
        self.set_many([(key, payload)])

    def clear(self) -> None:
        if self._db is not None:
            try:
                self._db.clear()
            except Exception as e:  # noqa: BLE001
                self._bypass(e)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()

    def __len__(self) -> int:
        try:
            return len(self._db) if self._db is not None else 0
        except Exception:  # noqa: BLE001
            return 0
