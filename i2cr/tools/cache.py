"""An on-disk clue cache, keyed by image content hash + tool + backend + backend version.

Built on diskcache (SQLite underneath), which is safe for several processes and threads using
the same folder at once. A second run over the same images reads clues from here instead of
calling a service again.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

DEFAULT_DIR = os.path.join(os.path.expanduser("~"), ".cache", "i2cr", "clues")


class ClueCache:
    def __init__(self, directory: str | os.PathLike = DEFAULT_DIR, size_limit: int = 2 ** 30):
        import diskcache

        self.directory = str(Path(directory).expanduser())
        self._cache = diskcache.Cache(self.directory, size_limit=size_limit)
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(image_key: str, tool: str, backend: str, version: str) -> str:
        return f"{image_key}|{tool}|{backend}|{version}"

    def get(self, key: str) -> Any | None:
        val = self._cache.get(key, default=None)
        if val is None:
            self.misses += 1
        else:
            self.hits += 1
        return val

    def set(self, key: str, value: Any) -> None:
        self._cache.set(key, value)

    def clear(self) -> None:
        self._cache.clear()

    def close(self) -> None:
        self._cache.close()

    def __len__(self) -> int:
        return len(self._cache)


_CACHES: dict[str, ClueCache] = {}
_LOCK = threading.Lock()


def clue_cache(directory: str | None) -> ClueCache | None:
    """The process-wide cache for a folder (None or '' or 'none' switches caching off)."""
    if not directory or str(directory).lower() in {"none", "off", "false"}:
        return None
    d = str(Path(directory).expanduser())
    with _LOCK:
        if d not in _CACHES:
            _CACHES[d] = ClueCache(d)
        return _CACHES[d]
