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
    """Every complete record of a results file, in file order. With ``repair``, a torn tail (from a
    crash mid-write) is truncated away."""
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


def prefetch(items: Iterable[Mention | DataError], settings: Context) -> int:
    """Embed, in large batches, the texts the mentions' rounds need: each distinct entity text once,
    and the queries of every round (the ranker's own list when it chooses: its entity and
    occupation texts, the context query, each round's query over the precomputed clues as the
    fixed tool order gathers them), and each caption-bridge text. Returns how many were encoded.

    VIF queries are batched even though a third or more of the mentions pass IAV in round 1: the
    graph runs nodes on worker threads, where one-text encodes of these long queries ran about 50%
    slower than in a batch, which cost more than encoding the unused ones."""
    from ..graph import resources
    from ..graph.iav import caption_text
    from ..graph.texts import clue_sequence
    from ..texts import entity_text, query_for

    emb = resources.embedder(settings)
    ranker = resources.ranker(settings) if settings.strategy == "retrieval" else None
    texts: list[str] = []
    queries: list[str] = []
    for m in items:
        if not isinstance(m, Mention):
            continue
        cands = [c.to_dict() for c in m.candidates]
        seq = clue_sequence(m.clues, settings.tool_names)
        rounds = [[]] + [seq[: i + 1] if settings.query_clues == "cumulative" else seq[i:i + 1]
                         for i in range(len(seq))]
        if ranker is not None:
            texts.extend(ranker.entity_texts(cands))
            queries.extend(ranker.queries(m.mention, m.context, rounds))
        else:
            texts.extend(entity_text(c) for c in cands)
            queries.extend(query_for(m.mention, m.context, r, settings) for r in rounds)
        cap = caption_text({"precomputed_clues": m.clues})
        if cap and settings.iav_mode in ("auto", "caption"):
            queries.append(cap)
    before = emb.encoded
    emb.warm(texts)
    emb.warm(queries, query=True)
    return emb.encoded - before


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
        linker: Callable[[Mention, Context], dict[str, Any]] = link_mention,
        concurrency: int = 1) -> Iterator[dict[str, Any]]:
    """Link every item, yielding result records (skipping those already in ``out`` on resume).

    With ``concurrency`` > 1, mentions run in a thread pool (for API backends, whose calls wait on
    the network); records are written by this thread as they complete, so the file stays whole.
    """
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    from tqdm.auto import tqdm

    items = list(items)
    writer = ResultWriter(out, resume=resume) if out else None
    todo = [it for it in items if not writer or _rid(it) not in writer.done]
    chunk = 512  # prefetch a chunk's texts in batches just before it runs: bounded memory

    def warm(i: int) -> None:
        if len(todo) > 1 and i % chunk == 0:
            try:
                prefetch(todo[i:i + chunk], settings)
            except Exception:  # noqa: BLE001 - an optimisation; the run itself reports errors
                pass
    bar = tqdm(total=len(todo), desc=desc, unit="mention", disable=not progress or len(todo) < 2,
               dynamic_ncols=True)

    def emit(rec: dict[str, Any]) -> dict[str, Any]:
        if writer:
            writer.write(rec)
        bar.update(1)
        return rec

    try:
        if concurrency <= 1:
            for i, it in enumerate(todo):
                warm(i)
                yield emit(run_one(it, settings, linker))
            return
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            pending = set()
            queue = iter(todo)
            try:
                for i, it in enumerate(queue):  # at most 2x concurrency in flight
                    warm(i)
                    pending.add(pool.submit(run_one, it, settings, linker))
                    if len(pending) >= 2 * concurrency:
                        done, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for f in done:
                            yield emit(f.result())
                while pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in done:
                        yield emit(f.result())
            finally:
                for f in pending:
                    f.cancel()
    finally:
        bar.close()
        if writer:
            writer.close()


def _rid(it: Mention | DataError) -> str:
    return it.id if isinstance(it, Mention) else (it.record or "?")
