"""Run the linker over many mentions: one JSON line per mention, resumable, with progress.

Results are appended to a JSONL file and flushed line by line. On ``resume`` the file is read back:
a torn last line (from a crash mid-write) is cut off, a damaged line elsewhere is reported and
skipped (every valid record around it is kept), and every id already there is skipped, so a killed
run loses nothing and repeats nothing.

A run goes through three phases, each shown on its own progress line: loading the models,
embedding the texts the mentions need (in batches), and linking. Their times are kept in
:class:`RunStats`, so that throughput can be reported for the linking phase and for the whole run.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Container, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..data import DataError, LabelError, Mention, done_line, shown_id
from ..embeddings import ModelUnavailable
from ..graph import Context, resources
from ..graph.iav import caption_text
from ..graph.state import Clue
from ..graph.texts import clue_sequence
from ..linker import error_record, link_mention
from ..texts import entity_text, query_for
from .metrics import (
    add_failure,
    candidate_cut,
    image_failure,
    image_unused,
    linked_count,
    llm_failed,
    llm_refused,
    structured_fallback,
)
from .report import labels_line, unmatched_labels

Warn = Callable[[str], None]


def warn_stderr(msg: str) -> None:
    print(f"i2cr: warning: {msg}", file=sys.stderr, flush=True)


def read_results(path: str | Path, *, repair: bool = False,
                 warn: Warn | None = warn_stderr) -> list[dict[str, Any]]:
    """Every valid record of a results file, in file order.

    A line that is not a JSON record with an ``id`` is skipped and reported through ``warn`` with
    its line number; the records after it are kept. Only the last line may be torn (no newline, from
    a crash mid-write): with ``repair`` it is cut off (or, if it is a whole record that lost its
    newline, the newline is added)."""
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    out: list[dict[str, Any]] = []
    pos = 0
    lines = data.splitlines(keepends=True)
    for lineno, line in enumerate(lines, 1):
        start, pos = pos, pos + len(line)
        torn = not line.endswith((b"\n", b"\r"))  # only the last line can lack its newline
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            rec = None
        ok = isinstance(rec, dict) and "id" in rec
        if torn:
            if ok:
                out.append(rec)
            if repair:
                with path.open("r+b") as fh:
                    if ok:
                        fh.seek(0, os.SEEK_END)
                        fh.write(b"\n")
                    else:
                        fh.truncate(start)
            break
        if ok:
            out.append(rec)
        elif line.strip() and warn is not None:
            what = "not JSON" if rec is None else "not a record with an 'id'"
            warn(f"{path} line {lineno}: {what}; skipped (the records around it are kept)")
    return out


class Done(set[str]):
    """The ids already in a results file that a run resumes (:func:`done_ids`), and in
    ``errors`` those of its error records: read once, then given to the input checks and to the
    run's :class:`ResultWriter`."""

    def __init__(self, ids: Iterable[str] = (), errors: Iterable[str] = ()):
        super().__init__(ids)
        self.errors: set[str] = set(errors)


def done_ids(path: str | Path | None, resume: bool, *, warn: Warn | None = warn_stderr) -> Done:
    """What a run that ``resume``s from ``path`` skips (nothing without it): the records there,
    not linked or warned of again (:func:`check_items`, the input's warnings). The file is read
    here, once: a torn last line cut off, a damaged line reported through ``warn``; pass the
    result to :func:`run` (``done``)."""
    if not resume or path is None:
        return Done()
    recs = read_results(path, repair=True, warn=warn)
    return Done((r["id"] for r in recs), (r["id"] for r in recs if r.get("error") is not None))


def nulls_line(n: int, done: int = 0) -> str:
    """The warning of ``n`` records (of this run; ``done`` more skipped) with a null or empty
    id, in both engines' words."""
    return (f"{n} record(s) have a null or empty id; they are linked under the id 'None' "
            f"(repeats of it count as duplicates){done_line(done)}")


class ResultWriter:
    """The results JSONL, written record by record. With ``resume`` it goes on from the records
    there: ``done`` (:func:`done_ids`) when the run read them already, else read here."""

    def __init__(self, path: str | Path, *, resume: bool = False, warn: Warn | None = warn_stderr,
                 done: Done | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.errors_before: set[str] = set()  # ids of the error records already there (resume)
        if resume:
            was = done if done is not None else done_ids(self.path, True, warn=warn)
            self.done: set[str] = was
            self.errors_before = was.errors
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


MAX_NAMED = 20  # bad records (unreadable data, an unusable gold label; fitting's) named one line
# each; then a count


class Named:
    """Bad records named one line each through ``warn`` (``line`` of each), the first
    :data:`MAX_NAMED`; :meth:`end` then says ``total`` of how many there were, when it says
    anything. The one rule for such lines: the engines' bad records (:func:`bad_records`), the
    records fitting leaves out."""

    def __init__(self, warn: Warn | None, line: Callable[[Any], str],
                 total: Callable[[int], str | None]):
        self.warn, self.line, self.total, self.count = warn, line, total, 0

    def name(self, item: Any) -> None:
        self.count += 1
        if self.warn is not None and self.count <= MAX_NAMED:
            self.warn(self.line(item))

    def end(self) -> None:
        said = self.total(self.count) if self.count else None
        if self.warn is not None and said:
            self.warn(said)


def bad_record(err: DataError) -> tuple[str, bool]:
    """What :func:`bad_records` names of a record that is not linked (a :class:`DataError`): its
    error's text and whether it is scored (labelled, or its gold label is the error)."""
    return str(err), err.label is not None or isinstance(err, LabelError)


def bad_records(warn: Warn | None) -> Named:
    """Each record not linked because it is bad: its data is not a mention (malformed JSON, a
    field missing or of the wrong kind) or its gold label is unusable. Named in both engines'
    words and for both commands (``link``, ``eval``), from :func:`bad_record` (the Ray driver
    gets it from its workers), then the count of those not named."""
    return Named(warn, lambda it: f"{it[0]}; the record is not linked: an error record"
                                  + (", scored as a wrong answer" if it[1] else ""),
                 lambda n: f"{n - MAX_NAMED} more bad record(s) not linked (each an error "
                           f"record; {n} in all)" if n > MAX_NAMED else None)


SHOWN_REPEATS = 5  # the repeated ids the warning names


def repeats_line(count: int, repeated: Sequence[str]) -> str:
    """The warning of ``count`` records that repeat an id already used, naming the first
    :data:`SHOWN_REPEATS` of the ``repeated`` ids (distinct, in input order; one more says there
    are more), in both engines' words."""
    shown = ", ".join(shown_id(d) for d in repeated[:SHOWN_REPEATS])
    return (f"{count} record(s) repeat an id already used ({shown}"
            f"{', ...' if len(repeated) > SHOWN_REPEATS else ''}): the first is linked, each "
            "repeat becomes an error record '<id>#dup<k>' and counts as a wrong answer")


def label_ids(labels: Mapping[str, str] | None) -> list[str]:
    """Every id a labels file names: its usable labels' and its unusable ones'
    (:class:`~i2cr.data.Labels` ``errors``)."""
    if labels is None:
        return []
    return list(labels) + [k for k in getattr(labels, "errors", {}) if k not in labels]


def check_labels(labels: Mapping[str, str] | None, named: Callable[[str], bool],
                 warn: Warn | None = warn_stderr, use: str = "scored") -> dict[str, Any] | None:
    """Warn, in one line (:func:`~.report.labels_line`, in the words ``use`` names), of the
    labels that name no record of the data (``named``: whether an id is a record's), and return
    what metrics.json keeps of them (:func:`~.report.unmatched_labels`); None without labels.
    The first of :func:`check_input`'s checks; the Ray driver's, on the ids it streams."""
    ids = label_ids(labels)
    if not ids:
        return None
    found = unmatched_labels(ids, (i for i in ids if not named(i)))
    said = labels_line(found, use)
    if warn is not None and said:
        warn(said)
    return found


def check_items(items: Iterable[Mention | DataError], labels: Mapping[str, str] | None = None,
                *, warn: Warn | None = warn_stderr,
                done: Container[str] = frozenset()) -> list[Mention | DataError]:
    """Make every input record count once, under its own id.

    - A record that failed to load keeps its gold label (from ``labels``), so that it is scored
      as a wrong answer rather than left out of the accuracy.
    - A repeated id: the first record with it is linked; each later one becomes an error record
      ``<id>#dup<k>`` ("duplicate id"), scored as a wrong answer when the id is labelled.
    - A null or empty id (read as ``'None'`` or ``''``) is reported (of the records this run
      links: those in ``done`` are counted apart).
    - A bad record (its data unreadable, or its gold label unusable: a :class:`DataError` of the
      input) is named, one line each (after the first ``MAX_NAMED``, a count): it is an error
      record, scored as wrong when it is labelled (:func:`bad_records`).
    - A bad record or a repeat whose id is in ``done`` (already in the output a run resumes:
      :func:`done_ids`) is not named again: it is not run again, and the closing lines count the
      error records already there.
    """
    labels = labels or {}
    out: list[Mention | DataError] = []
    seen: dict[str, int] = {}
    dups: list[str] = []
    nulls = [0, 0]  # (of this run, done before)
    bad = bad_records(warn)
    for i, it in enumerate(items, 1):
        rid = record_id(it)
        null = rid in ("None", "", "null")
        if rid in seen:
            seen[rid] += 1
            new = f"{rid}#dup{seen[rid]}"
            nulls[new in done] += null
            err = DataError(f"duplicate id {shown_id(rid)} (record {i} of the input); not linked, "
                            "scored as an error", record=new)
            err.label = it.label if isinstance(it, Mention) else labels.get(rid)
            if new not in done:
                dups.append(rid)
            out.append(err)
            continue
        seen[rid] = 1
        nulls[rid in done] += null
        if isinstance(it, DataError):
            if it.label is None:
                it.label = labels.get(rid)
            if rid not in done:
                bad.name(bad_record(it))
        out.append(it)
    if warn is not None and dups:
        warn(repeats_line(len(dups), list(dict.fromkeys(dups))[:SHOWN_REPEATS + 1]))
    bad.end()
    if warn is not None and nulls[0]:
        warn(nulls_line(*nulls))
    return out


def check_input(items: Iterable[Mention | DataError], labels: Mapping[str, str] | None = None,
                *, pick: Callable[[list[Mention | DataError]], list[Mention | DataError]]
                | None = None, done: Container[str] = frozenset(),
                warn: Warn | None = warn_stderr, named: bool = True, use: str = "scored"
                ) -> tuple[list[Mention | DataError], dict[str, Any] | None]:
    """The input checks every driver runs on the records it loaded, in this order (one owner:
    ``link`` and ``eval`` in this process, calibrate's and crossval's fits, the SFT export; the
    Ray driver, which holds no records, runs the same rules as it streams them):

    1. the labels that name no record of the whole input, warned of in one line
       (:func:`check_labels`, in the words ``use`` names), before any selection;
    2. the selection ``pick`` makes (``--limit``, ``--sample``; None: every record);
    3. every record once under its own id (:func:`check_items`; ``done``: the ids of the output
       a resumed run goes on from), its bad records and repeats named through ``warn``, unless
       ``named`` is False: a driver that names them itself, in its own words (a fit leaves them
       out, an export skips them).

    Returns the records to run and what metrics.json keeps of the labels naming no record."""
    items = list(items)
    unmatched = check_labels(labels, named_ids(items).__contains__, warn=warn, use=use)
    if pick is not None:
        items = pick(items)
    return check_items(items, labels, warn=warn if named else None, done=done), unmatched


def to_link(items: Iterable[Mention | DataError]) -> bool:
    """Whether any item is a mention to link: a run of error records only (every record bad, or
    nothing left) builds no model and starts no LLM backend."""
    return any(isinstance(it, Mention) for it in items)


def prefetch(items: Iterable[Mention | DataError], settings: Context) -> int:
    """Embed, in large batches, the texts the mentions' rounds need: each distinct entity text once,
    and the queries of every round (the ranker's own list when it chooses: its entity and
    occupation texts, the context query, each round's query over the precomputed clues as the
    fixed tool order gathers them), and each caption-bridge text. Returns how many were encoded.

    VIF queries are batched even though a third or more of the mentions pass IAV in round 1: the
    graph runs nodes on worker threads, where one-text encodes of these long queries ran about 50%
    slower than in a batch, which cost more than encoding the unused ones."""
    items = list(items)
    if not to_link(items):
        return 0  # error records only: nothing to embed, no embedder to load
    emb = resources.embedder(settings)
    ranker = resources.ranker(settings) if settings.uses_ranker else None
    texts: list[str] = []
    queries: list[str] = []
    for m in items:
        if not isinstance(m, Mention):
            continue
        # the candidates the graph ranks (prepare keeps the first max_candidates), not the list
        cands = [c.to_dict() for c in m.candidates[: settings.max_candidates]]
        seq = clue_sequence(m.clues, settings.tool_names)
        rounds: list[list[Clue]] = [[]] + [
            seq[: i + 1] if settings.query_clues == "cumulative" else seq[i:i + 1]
            for i in range(len(seq))]
        if ranker is not None:
            texts.extend(ranker.entity_texts(cands))
            queries.extend(ranker.queries(m.mention, m.context, rounds, m.document))
        else:
            texts.extend(entity_text(c) for c in cands)
            queries.extend(query_for(m.mention, m.context, r, settings) for r in rounds)
        cap = caption_text({"precomputed_clues": m.clues})
        if cap and "caption" in settings.resolved.iav_modes:
            queries.append(cap)
    before = emb.encoded
    emb.warm(texts)
    emb.warm(queries, query=True)
    return emb.encoded - before


@dataclass
class RunStats:
    """What a run did and how long each phase took (filled in by :func:`run` as it goes)."""

    mentions: int = 0  # records to produce in this run (after resume skipped the done ones)
    produced: int = 0  # records produced so far, error records included
    errors: int = 0  # error records among them
    errors_before: int = 0  # error records already in the output (resume skipped, not retried)
    llm_failed: int = 0  # mentions with at least one failed LLM call (answered by a fallback)
    llm_calls: int = 0  # LLM calls made (a call refused after every retry counts as one)
    llm_refused: int = 0  # calls refused after every retry (each made its mention an error record)
    failed_by_cause: dict[str, dict[str, Any]] = field(default_factory=dict)  # metrics.add_failure
    structured_fallbacks: int = 0  # mentions with a TES answer asked structured, read as free text
    image_failures: dict[str, int] = field(default_factory=dict)  # unusable images, by status
    images_unused: int = 0  # images not loaded: no step of the run reads them
    candidate_cuts: dict[int, int] = field(default_factory=dict)  # lists cut, by max_candidates
    labels_unmatched: dict[str, Any] | None = None  # labels naming no record (check_labels)
    load_s: float = 0.0  # loading the models
    embedded_texts: int = 0  # texts run through the embedder ahead of the graph
    embed_s: float = 0.0  # embedding them
    link_s: float = 0.0  # the graph itself
    wall_s: float = 0.0  # the whole run, from the first phase to the last record

    def count(self, rec: dict[str, Any]) -> None:
        """Count one record produced: errors (those of the run by cause), LLM calls (refused ones
        too), failed LLM calls, free-text fallbacks, images that could not be used or were not
        loaded (nothing read them), candidate lists cut to ``max_candidates``."""
        self.produced += 1
        self.errors += rec.get("error") is not None
        add_failure(self.failed_by_cause, rec)
        self.llm_calls += rec.get("llm_calls") or 0
        self.llm_refused += llm_refused(rec)
        self.llm_failed += llm_failed(rec)
        self.structured_fallbacks += structured_fallback(rec)
        self.images_unused += image_unused(rec)
        why = image_failure(rec)
        if why is not None:
            self.image_failures[why] = self.image_failures.get(why, 0) + 1
        cap = candidate_cut(rec)
        if cap is not None:
            self.candidate_cuts[cap] = self.candidate_cuts.get(cap, 0) + 1

    @property
    def linked(self) -> int:
        """The mentions linked: the records produced less the error records
        (:func:`~.metrics.linked_count`)."""
        return linked_count(self.produced, self.errors)

    def rates(self) -> dict[str, float | None]:
        """Mentions linked per second, in the linking phase and over the whole run."""
        return {"linking_mentions_per_s": self.linked / self.link_s if self.link_s else None,
                "run_mentions_per_s": self.linked / self.wall_s if self.wall_s else None}

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "linked": self.linked, **self.rates()}


def run_one(item: Mention | DataError, settings: Context,
            linker: Callable[[Mention, Context], dict[str, Any]] = link_mention) -> dict[str, Any]:
    """One record's result; a bad record or a failure inside the graph becomes an error record
    (with its gold label when it has one, so that it is scored as a wrong answer)."""
    if isinstance(item, DataError):
        return error_record(item.record or "?", item, item.label)
    try:
        return linker(item, settings)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # noqa: BLE001 - one mention must not take the run down
        return error_record(item.id, e, item.label)


def _say(progress: bool, msg: str) -> None:
    if progress:
        print(f"i2cr: {msg}", file=sys.stderr, flush=True)


def load_models(items: list[Mention | DataError], settings: Context) -> list[str]:
    """Load the models the run will need before the first mention (the embedder, and CLIP when a
    mention has an image and IAV may use it), into the settings' resources, and open the run's
    clue cache: an unusable cache is said as it is opened (:mod:`i2cr.store`), so both caches
    are said here, before the first mention. Returns the models' names; a model that cannot load
    is left for the graph to report per mention."""

    names = []
    settings.resources.backends.clue_cache(settings.clue_cache)  # (the tools' cache)
    resources.embedder(settings)
    names.append(settings.embedder)
    if "clip" in settings.resolved.iav_modes and any(
            isinstance(m, Mention) and m.image for m in items):
        try:
            resources.clip(settings)
            names.append(settings.clip_model)
        except ModelUnavailable:
            pass  # each mention records why IAV did not use CLIP (tried once this run)
    return names


def run(items: Iterable[Mention | DataError], settings: Context, *, out: str | Path | None = None,
        resume: bool = False, progress: bool = True, desc: str = "linking",
        linker: Callable[[Mention, Context], dict[str, Any]] = link_mention,
        concurrency: int = 1, stats: RunStats | None = None,
        warn: Warn | None = warn_stderr, done: Done | None = None) -> Iterator[dict[str, Any]]:
    """Link every item, yielding result records (skipping those already in ``out`` on resume).

    With ``concurrency`` > 1, mentions run in a thread pool of that many workers (for API
    backends, whose calls wait on the network), so at most ``concurrency`` LLM calls are in flight
    (a mention's calls are sequential); records are yielded and written by this thread in the
    order they complete, each as soon as it is done, so the file stays whole and ``resume`` (by
    id) works as with one worker.
    ``stats`` (a :class:`RunStats`) is filled in as the run goes: counts and per-phase times.
    ``done``: what :func:`done_ids` read of ``out`` for the input checks (not read again).
    With ``progress``, each phase (loading models, embedding, linking) has its own progress line.
    """
    st = stats if stats is not None else RunStats()
    t_start = time.perf_counter()
    items = list(items)
    writer = ResultWriter(out, resume=resume, warn=warn, done=done) if out else None
    todo = [it for it in items if not writer or record_id(it) not in writer.done]
    st.mentions = len(todo)
    st.errors_before = sum(record_id(it) in writer.errors_before for it in items) if writer else 0
    if writer and len(todo) < len(items):
        _say(progress, f"resuming: {len(items) - len(todo)} of {len(items)} mention(s) already "
             f"in {out}, {len(todo)} to go")
    chunk = 512  # prefetch a chunk's texts in batches just before it runs: bounded memory
    sub = 128  # mentions per prefetch call, so that the embedding phase can show progress
    show = progress and len(todo) > 1
    bar = None

    def warm(i: int) -> None:
        if len(todo) < 2 or i % chunk != 0:
            return
        part = todo[i:i + chunk]
        t0 = time.perf_counter()
        ebar = tqdm(total=len(part), desc="embedding texts", unit="mention", disable=not show,
                    dynamic_ncols=True, leave=True)
        n0 = st.embedded_texts
        try:
            for k in range(0, len(part), sub):
                st.embedded_texts += prefetch(part[k:k + sub], settings)
                ebar.update(len(part[k:k + sub]))
                ebar.set_postfix_str(f"{st.embedded_texts - n0} texts encoded")
        except Exception:  # noqa: BLE001 - an optimisation; the run itself reports errors
            pass
        finally:
            ebar.close()
            st.embed_s += time.perf_counter() - t0

    def emit(rec: dict[str, Any]) -> dict[str, Any]:
        if writer:
            writer.write(rec)
        st.count(rec)
        if bar is not None:
            bar.update(1)
        return rec

    def tick() -> None:
        now = time.perf_counter()
        st.wall_s = now - t_start
        st.link_s = max(0.0, st.wall_s - st.load_s - st.embed_s)

    try:
        if to_link(todo):
            t0 = time.perf_counter()
            _say(show, "loading models ...")
            try:
                names = load_models(todo, settings)
                _say(show, f"loaded {', '.join(names)} in {time.perf_counter() - t0:.1f}s")
            except Exception as e:  # noqa: BLE001 - each mention then records the failure
                _say(show, f"a model did not load ({type(e).__name__}); the mentions will say why")
            st.load_s = time.perf_counter() - t0
        warm(0)
        bar = tqdm(total=len(todo), desc=desc, unit="mention", disable=not show, dynamic_ncols=True)
        if concurrency <= 1:
            for i, it in enumerate(todo):
                if i:
                    warm(i)
                rec = run_one(it, settings, linker)
                tick()
                yield emit(rec)
            return
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            pending = set()
            queue = iter(todo)
            try:
                for i, it in enumerate(queue):  # at most 2x concurrency in flight
                    if i:
                        warm(i)
                    pending.add(pool.submit(run_one, it, settings, linker))
                    if len(pending) >= 2 * concurrency:
                        finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for f in finished:
                            tick()
                            yield emit(f.result())
                while pending:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in finished:
                        tick()
                        yield emit(f.result())
            finally:
                for f in pending:
                    f.cancel()
    finally:
        tick()
        if bar is not None:
            bar.close()
        if writer:
            writer.close()


def record_id(it: Mention | DataError) -> str:
    """The id a record of the input is linked (or reported) under."""
    return it.id if isinstance(it, Mention) else (it.record or "?")


def named_ids(items: Iterable[Mention | DataError]) -> set[str]:
    """The ids a label may name a record of ``items`` by (:func:`check_labels`): each record's,
    and the id a line that cannot be read still gives (:func:`i2cr.data.readable_id`: the record
    is named by its place, and its label is counted with it, as a bad record)."""
    out = {record_id(it) for it in items}
    out.update(it.claimed_id for it in items if isinstance(it, DataError) and it.claimed_id)
    return out
