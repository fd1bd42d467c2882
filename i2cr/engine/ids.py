"""The ids a Ray run's driver has seen and written, kept on disk so that its memory stays flat
however long the input.

Exact (the ids themselves, no hashes): SQLite's private temporary database (``connect("")``), a
file in the temporary folder that SQLite deletes when the run ends or the driver dies, with a
small page cache (``CACHE_KB``). About 40 bytes of disk per id.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

CACHE_KB = 4096  # SQLite's page cache: what the ids cost the driver's memory, whatever their number


class RunIds:
    """For each id: how often the input gave it in this run (the ``#dup<k>`` numbering),
    whether a record with it is in the output (each id written once), and whether a line that
    cannot be read gave it (``named``: the record is named by its place; a label for the id is
    that record's)."""

    def __init__(self) -> None:
        self.db = sqlite3.connect("", check_same_thread=False)  # one consumer at a time
        for pragma in ("journal_mode=OFF", "synchronous=OFF", f"cache_size=-{CACHE_KB}"):
            self.db.execute(f"PRAGMA {pragma}")
        self.db.execute("CREATE TABLE ids (id TEXT PRIMARY KEY, seen INTEGER NOT NULL DEFAULT 0, "
                        "written INTEGER NOT NULL DEFAULT 0, named INTEGER NOT NULL DEFAULT 0) "
                        "WITHOUT ROWID")

    def add_written(self, ids: Iterable[str]) -> None:
        """Ids already in the output (resume)."""
        self.db.executemany("INSERT INTO ids (id, written) VALUES (?, 1) ON CONFLICT (id) DO "
                            "UPDATE SET written = 1", ((i,) for i in ids))
        self.db.commit()

    def see(self, rid: str) -> int:
        """Count one more record of the input with this id; how many there were so far."""
        return int(self.db.execute("INSERT INTO ids (id, seen) VALUES (?, 1) ON CONFLICT (id) DO "
                                   "UPDATE SET seen = seen + 1 RETURNING seen", (rid,))
                   .fetchone()[0])

    def name(self, rid: str) -> None:
        """A line of the input that cannot be read gave this id (:func:`i2cr.data.readable_id`)."""
        self.db.execute("INSERT INTO ids (id, named) VALUES (?, 1) ON CONFLICT (id) DO UPDATE "
                        "SET named = 1", (rid,))

    def seen(self, rid: str) -> bool:
        """Whether a record of the input had this id, or a line that cannot be read gave it (so
        far): whether a label for it names a record (:func:`i2cr.eval.runner.check_labels`)."""
        return self.db.execute("SELECT 1 FROM ids WHERE id = ? AND (seen > 0 OR named > 0)",
                               (rid,)).fetchone() is not None

    def claim(self, rid: str) -> bool:
        """Mark this id written; False when it already was (the record is not written again)."""
        return self.db.execute("INSERT INTO ids (id, written) VALUES (?, 1) ON CONFLICT (id) DO "
                               "UPDATE SET written = 1 WHERE written = 0 RETURNING written",
                               (rid,)).fetchone() is not None

    def commit(self) -> None:
        self.db.commit()

    def close(self) -> None:
        self.db.close()  # SQLite deletes the file
