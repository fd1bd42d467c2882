"""Run the linker over many mentions: one JSON line per mention, resumable, with a progress bar.

Results are appended to a JSONL file and flushed line by line. On ``resume`` the file is read back,
a torn last line (from a crash mid-write) is cut off, and every id already there is skipped, so a
killed run loses nothing and repeats nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from ..data import DataError, Mention
from ..graph import Context
from ..linker import error_record, link_mention


def read_results(path: str | Path, *, repair: bool = False) -> list[dict[str, Any]]:
    """Every complete record of a results file. With ``repair``, a torn tail is truncated away."""
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    out: list[dict[str, Any]] = []
    good_end = 0
    pos = 0
    for line in data.splitlines(keepends=True):
        pos += len(line)
        if not line.endswith(b"\n"):
            break  # torn last line
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            break
        if isinstance(rec, dict) and "id" in rec:
            out.append(rec)
        good_end = pos
    if repair and good_end < len(data):
        with path.open("r+b") as fh:
            fh.truncate(good_end)
    return out


class ResultWriter:
    def __init__(self, path: str | Path, *, resume: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume:
            self.done = {r["id"] for r in read_results(self.path, repair=True)}
        else:
            self.done = set()
            self.path.write_text("")
        self.fh = self.path.open("a", encoding="utf-8")

    def write(self, rec: dict[str, Any]) -> None:
        self.fh.write(json.dumps(rec, ensure_ascii=False, default=str) + "\n")
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.done.add(rec["id"])

    def close(self) -> None:
        self.fh.close()


def run_one(item: Mention | DataError, settings: Context,
            linker: Callable[[Mention, Context], dict[str, Any]] = link_mention) -> dict[str, Any]:
    """One record's result; a bad record or a failure inside the graph becomes an error record."""
    if isinstance(item, DataError):
        return error_record(item.record or "?", item)
    try:
        return linker(item, settings)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # noqa: BLE001 - one mention must not take the run down
        return error_record(item.id, e, item.label)


def run(items: Iterable[Mention | DataError], settings: Context, *, out: str | Path | None = None,
        resume: bool = False, progress: bool = True, desc: str = "linking",
        linker: Callable[[Mention, Context], dict[str, Any]] = link_mention
        ) -> Iterator[dict[str, Any]]:
    """Link every item, yielding result records (skipping those already in ``out`` on resume)."""
    from tqdm.auto import tqdm

    items = list(items)
    writer = ResultWriter(out, resume=resume) if out else None
    todo = [it for it in items if not writer or _rid(it) not in writer.done]
    bar = tqdm(total=len(todo), desc=desc, unit="mention", disable=not progress or len(todo) < 2,
               dynamic_ncols=True)
    try:
        for it in todo:
            rec = run_one(it, settings, linker)
            if writer:
                writer.write(rec)
            bar.update(1)
            yield rec
    finally:
        bar.close()
        if writer:
            writer.close()


def _rid(it: Mention | DataError) -> str:
    return it.id if isinstance(it, Mention) else (it.record or "?")
