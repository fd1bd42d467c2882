"""An on-disk clue cache, keyed by image content hash + tool + backend + backend version.

A :class:`~i2cr.store.CheckedStore` (diskcache over SQLite, safe for several processes and threads
using the same folder at once): a second run over the same images reads clues from here instead of
calling a service again. Clues are stored as JSON under a checksum; a damaged entry is a miss (the
tool runs again and the entry is rewritten) and a damaged or unopenable folder is bypassed, each
reported once.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..store import CheckedStore

DEFAULT_DIR = os.path.join(os.path.expanduser("~"), ".cache", "i2cr", "clues")


class ClueCache:
    FORMAT = "v2"  # entries written before checksums (pickled values) are simply not read

    def __init__(self, directory: str | os.PathLike = DEFAULT_DIR, size_limit: int = 2 ** 30):
        self._store = CheckedStore(str(directory), "clue cache", size_limit=size_limit)
        self.directory = self._store.directory
        self.hits = 0
        self.misses = 0

    @property
    def damaged(self) -> int:
        return self._store.damaged

    @staticmethod
    def key(image_key: str, tool: str, backend: str, version: str) -> str:
        return f"{image_key}|{tool}|{backend}|{version}"

    def get(self, key: str) -> Any | None:
        payload = self._store.get(f"{self.FORMAT}|{key}")
        val = None
        if payload is not None:
            try:
                val = json.loads(payload.decode("utf-8"))
            except (UnicodeDecodeError, ValueError, RecursionError):
                self._store.report_damage()
        if val is None:
            self.misses += 1
        else:
            self.hits += 1
        return val

    def set(self, key: str, value: Any) -> None:
        payload = json.dumps(value, ensure_ascii=False).encode("utf-8")
        self._store.set(f"{self.FORMAT}|{key}", payload)

    def clear(self) -> None:
        self._store.clear()

    def close(self) -> None:
        self._store.close()

    def __len__(self) -> int:
        return len(self._store)


def cache_dir(directory: str | None) -> str | None:
    """The folder of a ``clue_cache`` setting, or None when it switches caching off (None, '',
    'none', 'off', 'false'). (:class:`i2cr.tools.factory.SharedBackends` opens one cache per
    folder for a run.)"""
    if not directory or str(directory).lower() in {"none", "off", "false"}:
        return None
    return str(Path(directory).expanduser())
