"""Sets of keys kept on disk (SQLite) while a KB is built, so that nothing per entity stays in
memory: the ids already in the KB's table, the keys a dataset source has already given.

A build skips an entity whose id the table already holds (a repeated id in the source, or a
resumed build). Asking the LanceDB table for every batch scans its whole ``id`` column (the time
and the memory of that grew with the table: quadratic build time, and RSS growing by ~0.4 MB per
1,000 entities), and a Python set of the ids grows with the KB. So the build keeps the ids in a
small SQLite file beside the table (``ids.sqlite``): lookups are B-tree probes, the page cache
is bounded, and nothing per entity stays in memory.

The table is the truth and the registry only a copy of its ids, stamped with the table version
it copies. The build adds a batch to the table first and to the registry after (the ids and the
new version in one transaction), so a build stopped between the two writes leaves a registry
stamped with an older version. Whenever the stamp or the count of ids disagrees with the table
(that, a file made another way, a file gone or unreadable), the registry is rebuilt from the
table's ``id`` column, streamed in batches: it never makes the build skip an entity the table
lacks, nor add one twice.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

FILE = "ids.sqlite"
_CHUNK = 500  # keys per lookup (under SQLite's oldest limit of 999 bound parameters)
_CACHE_KIB = 8192  # SQLite page cache, KiB
_READ_BATCH = 65_536  # ids per batch when the registry is rebuilt from the table


class KeySet:
    """A set of strings in an SQLite file at ``path`` (made if missing)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self._open()
            self._count()
        except sqlite3.DatabaseError:  # a damaged file: it is only a copy, start it again
            self.remove()
            self._open()

    def _open(self) -> None:
        self.db = sqlite3.connect(self.path)
        self.db.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS ids (id TEXT PRIMARY KEY) WITHOUT ROWID")
        self.db.execute("CREATE TABLE IF NOT EXISTS stamp (k TEXT PRIMARY KEY, v INTEGER)")
        self.db.commit()

    def _count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM ids").fetchone()[0])

    def __len__(self) -> int:
        return self._count()

    def __contains__(self, key: object) -> bool:
        return self.db.execute("SELECT 1 FROM ids WHERE id = ?", (key,)).fetchone() is not None

    def present(self, keys: Sequence[str]) -> set[str]:
        """Those of ``keys`` already in the set."""
        have: set[str] = set()
        for k in range(0, len(keys), _CHUNK):
            part = keys[k:k + _CHUNK]
            q = f"SELECT id FROM ids WHERE id IN ({', '.join('?' * len(part))})"
            have.update(r[0] for r in self.db.execute(q, part))
        return have

    def add(self, keys: Iterable[str], *, commit: bool = True) -> None:
        self.db.executemany("INSERT OR IGNORE INTO ids VALUES (?)", ((k,) for k in keys))
        if commit:
            self.db.commit()

    def close(self) -> None:
        try:
            self.db.close()
        except (AttributeError, sqlite3.Error):
            pass

    def remove(self) -> None:
        """Close and delete the file (and SQLite's write-ahead log beside it)."""
        self.close()
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(str(self.path) + suffix).unlink(missing_ok=True)


class FirstSeen:
    """Where each key was first seen (a source's ids and their lines), in an SQLite file at
    ``path``: a scratch file, so neither durable nor journalled."""

    def __init__(self, path: str | Path):
        self.db = sqlite3.connect(Path(path))
        self.db.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")
        self.db.execute("PRAGMA journal_mode=OFF")
        self.db.execute("PRAGMA synchronous=OFF")
        self.db.execute("CREATE TABLE IF NOT EXISTS seen (id TEXT PRIMARY KEY, at INTEGER) "
                        "WITHOUT ROWID")
        self._added = 0

    def first(self, key: str, at: int) -> int | None:
        """Where ``key`` was first seen, or None (and ``at`` is kept) when this is the first."""
        if self.db.execute("INSERT OR IGNORE INTO seen VALUES (?, ?)", (key, at)).rowcount:
            self._added += 1
            if not self._added % 4096:
                self.db.commit()
            return None
        return int(self.db.execute("SELECT at FROM seen WHERE id = ?", (key,)).fetchone()[0])

    def close(self) -> None:
        self.db.close()


class IdRegistry(KeySet):
    """The set of ids of a KB's table, on disk at ``kb_dir/ids.sqlite``, stamped with the table
    version it copies (see the module's doc)."""

    def __init__(self, kb_dir: str | Path, table: Any | None):
        super().__init__(Path(kb_dir) / FILE)
        self.rebuilt = False
        if table is None:
            if self._count() or self.version() is not None:
                self._rebuild(None)
        elif self.version() != table.version or self._count() != table.count_rows():
            self._rebuild(table)

    def version(self) -> int | None:
        """The table version the registry copies (None: none yet)."""
        row = self.db.execute("SELECT v FROM stamp WHERE k = 'version'").fetchone()
        return None if row is None else int(row[0])

    def _stamp(self, version: int | None) -> None:
        if version is None:
            self.db.execute("DELETE FROM stamp WHERE k = 'version'")
        else:
            self.db.execute("INSERT OR REPLACE INTO stamp VALUES ('version', ?)", (version,))

    def _rebuild(self, table: Any | None) -> None:
        self.rebuilt = True
        self.db.execute("DELETE FROM ids")
        version = None
        if table is not None:
            version = table.version
            for batch in table.search().select(["id"]).limit(None).to_batches(_READ_BATCH):
                col = batch.column(batch.schema.get_field_index("id"))
                self.db.executemany("INSERT OR IGNORE INTO ids VALUES (?)",
                                    ((i,) for i in col.to_pylist()))
        self._stamp(version)
        self.db.commit()

    def record(self, ids: Iterable[str], version: int) -> None:
        """Register ids the table now holds at ``version`` (one transaction: the ids and the
        stamp are written together or not at all)."""
        self.add(ids, commit=False)
        self._stamp(version)
        self.db.commit()
