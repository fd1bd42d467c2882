"""The ``i2cr`` command line.

    i2cr link FILE [--labels L] [--out results.jsonl] [--resume] [--limit N] [--llm SPEC]
                   [--concurrency N] [--set name=value ...] [--json]
    i2cr eval DATA LABELS [--out-dir DIR] ...
    i2cr trace RUN [MENTION_ID] [--html PAGE]
    i2cr bench DATA LABELS [-n N]
    i2cr graph
    i2cr kb build SOURCE --out KBDIR
    i2cr sft export DATA LABELS --out train.jsonl [--format openai|sharegpt|alpaca]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from langgraph.checkpoint.sqlite import SqliteSaver

from . import llm
from .data import DataError, load_labels, load_mentions, shuffle_candidates
from .embeddings import ModelUnavailable, store_folder
from .engine import commands as engine
from .envvars import warn_unknown
from .eval.bench import bench, bench_ray
from .eval.harness import evaluate
from .eval.metrics import failed_downloads
from .eval.report import (
    candidates_line,
    counted,
    failed_lines,
    failures,
    image_line,
    refused_line,
    stage_rows,
    unused_line,
)
from .eval.runner import (
    RunStats,
    check_input,
    done_ids,
    read_results,
    run,
    to_link,
    warn_stderr,
)
from .graph import Context, compile_graph, graph, resources
from .graph.context import server_only_settings
from .graph.events import is_llm_call
from .kb import build, open_kb
from .kb.report import kb_lines
from .linker import is_result, link_mention
from .llm import BackendError, check_backend
from .redact import scrub
from .sft import export
from .store import mark, problems
from .trace import printable, render_html, render_mermaid, render_tree
from .trace_page import NO_ROOT, embeddable_image


def _settings(args: argparse.Namespace, *, embeds: bool = True):
    """The run's settings from --set, --llm and --kb, or exit 2 naming the bad one; ``embeds``:
    the command embeds texts, so its embedding cache must be a folder it can make."""
    overrides: dict[str, Any] = {}
    for item in args.set or []:
        k, sep, v = item.partition("=")
        if not sep:
            print(f"i2cr: --set wants name=value, got {item!r}", file=sys.stderr)
            raise SystemExit(2)
        overrides[k.strip()] = v
    if getattr(args, "llm", None):
        overrides["llm"] = args.llm
    if getattr(args, "kb", None):
        overrides["kb"] = args.kb
    try:
        settings = Context.from_overrides(overrides)
        for k in sorted(server_only_settings() & set(overrides)):  # taken, and not used here
            print(f"i2cr: warning: --set {k}: a setting of the served linker only (i2cr.serve); "
                  "this command ignores it", file=sys.stderr)
        if embeds:
            _check_cache_folder(settings.embedding_cache, "embedding_cache")
        if settings.ranker_weights:  # missing or damaged: a bad setting, not an error per mention
            settings.resources.weights(settings.ranker_weights)
        return settings
    except (ValueError, TypeError) as e:  # unusable input, as a bad path is: exit code 2
        print(f"i2cr: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def _check_cache_folder(folder: str | None, setting: str) -> None:
    """ValueError naming the path when a cache folder can neither be found nor made: a path
    under a file, or where nothing may be written (e.g. /proc/x). That is a bad setting, refused
    before the run; a cache that exists but is damaged (a file in the folder's place, a broken
    database) is the run's failure: bypassed, reported and exit code 1 (:mod:`i2cr.store`)."""
    folder = store_folder(folder)
    if folder is None:  # switched off
        return
    path = Path(folder).expanduser()
    near = path
    while not near.exists() and near != near.parent:
        near = near.parent
    if not near.is_dir():
        if near == path:
            return
        raise ValueError(f"setting {setting!r}: cannot make the folder {path}: {near} is a file")
    try:  # made and removed at once: the run makes the folder itself
        os.rmdir(tempfile.mkdtemp(prefix=".i2cr-probe-", dir=near))
    except OSError as e:
        raise ValueError(f"setting {setting!r}: cannot make the folder {path}: nothing can be "
                         f"written in {near} ({e.strerror or type(e).__name__})") from None


def _folder(text: str) -> str:
    """argparse type: an existing folder (for --image-root: a wrong one would turn every image
    into 'missing' and the run text-only)."""
    if not Path(text).is_dir():
        what = "is not a folder" if Path(text).exists() else "does not exist"
        raise argparse.ArgumentTypeError(f"{text!r} {what}")
    return text


def _count(text: str) -> int:
    """argparse type: a whole number >= 1 (for --limit, --sample, -n, --concurrency)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {v}")
    return v


_CTRL = {c: "?" for c in (*range(32), *range(127, 160))}


def _cell(v: Any, width: int | None = None) -> str:
    """A table cell: one line, control characters (terminal escapes) neutralised, cut to width."""
    s = ("" if v is None else str(v)).replace("\t", " ").translate(_CTRL)
    if width is not None and len(s) > width:
        s = s[: width - 1] + "…"
    return s if width is None else s.ljust(width)


TABLE = (("id", 16), ("mention", 16), ("answer", 26), ("gold", 26), ("correct", 7), ("route", None))


def table_header() -> str:
    return "  ".join(_cell(name, w) for name, w in TABLE).rstrip()


def table_row(rec: dict[str, Any]) -> str:
    """One result as a row of the terminal table (mention, answer, gold, correct, route)."""
    err = rec.get("error")
    ok = "" if "correct" not in rec else ("yes" if rec["correct"] else "no")
    vals = {"id": rec.get("id"), "mention": rec.get("mention", ""),
            "answer": "(error)" if err else rec.get("answer"), "gold": rec.get("gold", "—"),
            "correct": ok, "route": f"error: {err}" if err else rec.get("final_reason")}
    return "  ".join(_cell(vals[name], w) for name, w in TABLE).rstrip()


def _speed(st) -> str:
    r = st.rates()
    parts = []
    if r["linking_mentions_per_s"]:
        parts.append(f"linking {r['linking_mentions_per_s']:.1f} mentions/s")
    if r["run_mentions_per_s"]:
        parts.append(f"whole run {r['run_mentions_per_s']:.1f} mentions/s (loading "
                     f"{st.load_s:.1f}s, embedding {st.embedded_texts:,} texts {st.embed_s:.1f}s, "
                     f"linking {st.link_s:.1f}s)")
    return "; ".join(parts)


def _check_llm(settings, progress: bool) -> None:
    """Check the LLM backend before the first mention, saying so when it takes a while."""
    if settings.chat_model is None and settings.uses_llm and progress:
        t0 = time.perf_counter()
        print("i2cr: checking the LLM backend ...", file=sys.stderr, flush=True)
        check_backend(settings)
        print(f"i2cr: LLM backend ready ({time.perf_counter() - t0:.1f}s)", file=sys.stderr,
              flush=True)
    else:
        check_backend(settings)


def _writable_file(path: str | None, flag: str) -> None:
    if path and Path(path).is_dir():
        raise DataError(f"{flag} names a folder; give a file path", source=path)


def cmd_link(args: argparse.Namespace) -> int:
    if args.resume and not args.out:
        print("i2cr: --resume goes on from an --out file; give --out", file=sys.stderr)
        return 2
    settings = _settings(args)
    engine.check_flags(args)
    if not str(args.out or "").endswith(".parquet"):
        _writable_file(args.out, "--out")
    if settings.kb:
        open_kb(settings.kb, settings.embedder)  # missing or mismatched: refused up front
    if args.engine == "ray":
        records, ray_stats, extra = engine.link_ray(args, settings)
        progress = not args.no_progress
        return report_link(args, records, ray_stats, extra=extra,
                           start=lambda: _check_llm(settings, progress))
    gold = load_labels(args.labels) if args.labels else {}
    done = done_ids(args.out, args.resume)  # (read once: the warnings and the run skip them)
    items = load_mentions(args.file, gold, image_root=args.image_root, strict=False,
                          allow_nil=True if args.allow_nil else None,
                          candidates="optional" if settings.kb else "required", warn=warn_stderr,
                          done=done)
    if not items:
        print(f"i2cr: no mentions to link in {args.file}", file=sys.stderr)
        return 2
    if args.shuffle_seed is not None:
        items = shuffle_candidates(items, args.shuffle_seed)
    limit = args.limit
    items, _ = check_input(items, gold, pick=None if limit is None else lambda its: its[:limit],
                           done=done)
    single = len(items) == 1 and not args.out
    linker = _linker(args)
    stats = RunStats()
    progress = not args.no_progress and not args.stream
    records = run(items, settings, out=args.out, resume=args.resume, progress=progress,
                  linker=linker, stats=stats, concurrency=args.concurrency, done=done)  # (lazy)
    return report_link(args, records, stats, single=single, total=len(items),
                       start=(lambda: _check_llm(settings, progress)) if to_link(items) else None)


def report_link(args: argparse.Namespace, records: Any, stats: Any, *, single: bool = False,
                total: int | None = None, extra: Any = None, start: Any = None) -> int:
    """Print the records of ``i2cr link`` as they come (a table, or JSON), then the closing
    lines; the exit code: 1 when a record errored, an LLM call failed, a structured answer
    came back as free text, an image download failed or a cache failed. One owner for both
    engines (``stats``: a RunStats or RayStats; ``extra``: a function giving one more closing
    line, after the run; ``start``: run first, inside the same Ctrl-C handling, e.g. starting
    the LLM backend)."""
    show = args.print or not args.out
    args.json = args.json or args.events  # events only exist in the JSON records
    n = correct = labelled = calls = 0
    try:
        if start is not None:
            start()
        for rec in records:
            n += 1
            if rec.get("error") is None:  # (an error record's calls: stats.llm_calls, refused)
                calls += rec.get("llm_calls") or 0
            if "correct" in rec:
                labelled += 1
                correct += bool(rec["correct"])
            if not show:
                continue
            if args.json:
                if not args.events:
                    rec = {k: v for k, v in rec.items() if k not in ("events", "trace")}
                print(json.dumps(rec, ensure_ascii=False, indent=2 if single else None,
                                 default=str), flush=True)
            else:
                if n == 1:
                    print(table_header(), flush=True)
                print(table_row(rec), flush=True)
    except KeyboardInterrupt:
        print("i2cr: interrupted; results so far are saved" + (f" in {args.out}; rerun with "
              "--resume to go on" if args.out else ""), file=sys.stderr)
        return 130
    finally:
        llm.shutdown()
    errors, failed = stats.errors, stats.llm_failed
    structured = stats.structured_fallbacks
    if n == 0 and args.out:
        where = f"all {total} mention(s) are" if total is not None else "every mention is"
        print(f"i2cr: nothing left to link: {where} already in {args.out}", file=sys.stderr)
    if n > 1 or args.out or errors or failed:
        # an error record is not a mention linked (stats.linked: the records produced less the
        # errors): the calls per mention are the linked mentions'; those of the error records
        # (a call refused after every retry ended each) are said in all
        linked = stats.linked
        summary = (f"i2cr: {linked} mention(s) linked, {errors} error(s), "
                   f"{calls / max(linked, 1):.2f} LLM calls/mention")
        if stats.llm_calls > calls:
            summary += f" linked, {stats.llm_calls} LLM call(s) made in all"
        if labelled:
            summary += f", top-1 {correct / labelled:.1%} on {labelled} labelled (errors count as wrong)"
        if args.out:
            summary += f"; results in {args.out}"
        print(summary, file=sys.stderr)
        if extra is not None:
            print(f"i2cr: {extra()}", file=sys.stderr)
        if n > 1 and _speed(stats):
            print(f"i2cr: {_speed(stats)}", file=sys.stderr)
    earlier = getattr(stats, "errors_before", 0)
    if earlier:
        print(f"i2cr: {earlier} error record(s) already in {args.out} (not retried: --resume "
              "skips every id there; rerun without --resume to link them again): the exit "
              "code is 1", file=sys.stderr)
    for said in ([refused_line(stats.llm_refused, stats.llm_calls)]
                 + failed_lines(stats.failed_by_cause)):  # (eval's words: i2cr.eval.report)
        if said:
            print(f"i2cr: {said}", file=sys.stderr)
    if failed:
        print(f"i2cr: {failed} mention(s) had failed LLM calls; their answers came from the "
              "fallback ranker, not the LLM (see the llm_error events)", file=sys.stderr)
    images = getattr(stats, "image_failures", None) or {}
    if image_line(images):
        print(f"i2cr: {image_line(images)}", file=sys.stderr)
    if unused_line(getattr(stats, "images_unused", 0)):
        print(f"i2cr: {unused_line(stats.images_unused)}", file=sys.stderr)
    cut = candidates_line(getattr(stats, "candidate_cuts", None) or {})
    if cut:  # the input's, as a field cut to its cap: reported, not a failure
        print(f"i2cr: {cut}", file=sys.stderr)
    downloads = failed_downloads(images)  # the other kinds are the input's
    if downloads:
        print(f"i2cr: {sum(downloads.values())} image download(s) failed ({counted(downloads)}): "
              "the exit code is 1", file=sys.stderr)
    if structured:
        print(f"i2cr: {structured} mention(s) asked for structured answers got "
              "free text (the backend took no JSON schema or answered outside it; see "
              "structured_error in the tes_answer events)", file=sys.stderr)
    caches = cache_problems(args)
    ok = not (errors or earlier or failed or structured or downloads or caches)
    return 0 if ok else 1


def cache_problems(args: argparse.Namespace) -> list[str]:
    """Print what went wrong with a cache in this run (since ``main`` began it: the answers were
    recomputed without it, but the run failed to use it, and the exit code says so); return the
    phrases."""
    out = problems(getattr(args, "cache_mark", 0))
    for p in out:
        print(f"i2cr: cache failure, {p}", file=sys.stderr)
    return out


def _linker(args: argparse.Namespace):
    """link_mention, with live node events (--stream) and a SQLite checkpointer (--checkpoint)."""
    show = _stream_printer if args.stream else None
    g = None
    if args.checkpoint:
        conn = sqlite3.connect(args.checkpoint, check_same_thread=False)
        g = compile_graph(checkpointer=SqliteSaver(conn))
    if show is None and g is None:
        return link_mention

    def linker(m, settings, **more):
        kw: dict[str, Any] = {}
        if show is not None:
            kw["on_event"] = show(m.id)
        if g is not None:
            kw.update(graph=g, config={"configurable": {"thread_id": m.id}})
        return link_mention(m, settings, **kw, **more)
    return linker


def _stream_printer(mention_id: str):
    """--stream: one line per node visit, decision event and LLM reply, each naming the mention;
    tool events carry their clue (cut). Data is made terminal-safe and scrubbed of secrets."""
    mid = printable(mention_id)

    def out(line: str) -> None:
        print(f"[{mid}] {printable(scrub(line))}", file=sys.stderr, flush=True)

    def show(kind: str, ev: dict[str, Any]) -> None:
        if kind == "node":
            edge = ev.get("choice") or ev.get("answer") or ev.get("iav_mode") or ""
            out(f"· {ev['node']:<7} {edge}")
            for e in ev.get("events", []):
                brief = {k: v for k, v in e.items() if k in ("type", "choice", "score",
                         "threshold", "decision", "tool", "how", "mapped", "method", "nil_reason",
                         "mode", "reason", "error")}
                if e.get("type") == "tool_call":
                    brief["clue"] = str(e.get("result") or "")[:200]
                out(f"    {json.dumps(brief, ensure_ascii=False, default=str)}")
                if is_llm_call(e):
                    out(f"    llm[{ev['node']}]: {str(e.get('raw') or e.get('error'))[:100]!r}")
    return show


def cmd_trace(args: argparse.Namespace) -> int:
    path = Path(args.run)
    if path.is_dir():
        path = path / "results.jsonl"
    if not path.exists():
        print(f"i2cr: no results file at {path}", file=sys.stderr)
        return 2
    skipped: list[str] = []
    recs = read_results(path, warn=skipped.append)
    if not any(is_result(r) for r in recs):  # e.g. the input file given instead of its results
        print(f"i2cr: {path} holds no trace records (the results of `i2cr link --out` or of "
              "`i2cr eval`: one JSON record per line with id, answer and error)", file=sys.stderr)
        return 2
    for w in skipped:
        warn_stderr(w)
    if args.html:
        root = args.image_root or _dataset_folder(path)
        local = sum(embeddable_image(r.get("image"), None)[1] == NO_ROOT for r in recs)
        if root is None and local:
            print(f"i2cr: {local} local image(s) are not embedded: give --image-root (only images "
                  "under it are)", file=sys.stderr)
        Path(args.html).write_text(render_html(recs, title=f"i2cr run: {path}", image_root=root,
                                               remote_images=args.remote_images), encoding="utf-8")
        print(f"wrote {args.html} ({len(recs)} mentions)", file=sys.stderr)
        return 0
    if args.mention_id:
        recs = [r for r in recs if str(r["id"]) == args.mention_id]
        if not recs:
            print(f"i2cr: no mention {args.mention_id!r} in {path}", file=sys.stderr)
            return 2
    if args.mermaid:
        for r in recs[:1]:
            print(render_mermaid(r, graph))
        return 0
    for r in recs:
        if "trace" not in r:
            print(printable(f"{r['id']}: no trace (error: {r.get('error')})"))
            continue
        print(render_tree(r))
        print()
    return 0


def _dataset_folder(results: Any) -> str | None:
    """The folder of the dataset an eval run read (from its run.json), where its images are by
    default; None for a run without one."""
    try:
        info = json.loads((Path(results).parent / "run.json").read_text(encoding="utf-8"))["info"]
        return str(Path(info["dataset"]).resolve().parent)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def cmd_eval(args: argparse.Namespace) -> int:
    settings = _settings(args)
    engine.check_flags(args)
    out_dir = args.out_dir
    if out_dir is None:
        out_dir = "runs/eval"
        print(f"i2cr: no --out-dir given: writing to {out_dir}/", file=sys.stderr)
    try:
        m = evaluate(args.data, args.labels, out_dir, settings=settings,
                     image_root=args.image_root, resume=args.resume, limit=args.limit,
                     sample=args.sample, seed=args.seed, keep_order=args.keep_order,
                     shuffle_seed=args.shuffle_seed, concurrency=args.concurrency,
                     progress=not args.no_progress, command="i2cr " + " ".join(sys.argv[1:]),
                     engine=engine.eval_engine(args, settings) if args.engine == "ray" else None,
                     cache_mark=getattr(args, "cache_mark", None))
    except KeyboardInterrupt:
        print(f"i2cr: interrupted; rerun with --resume to go on ({out_dir})", file=sys.stderr)
        return 130
    finally:
        llm.shutdown()
    for label, v in stage_rows(m):
        print(f"{label:32s} {'—' if v is None else f'{100 * v:5.1f}%'}")
    c, s = m["cost"], m["speed"]
    seg = s.get("segment") or {}
    print(f"LLM calls/mention {c['llm_calls_per_mention']:.2f}, tool calls/mention "
          f"{c['tool_calls_per_mention']:.2f}, p50 {s['latency_p50_s'] or 0:.3f}s")
    print(f"speed: linking {s['mentions_per_s'] or 0:.2f} mentions/s, whole run "
          f"{s.get('run_mentions_per_s') or 0:.2f} mentions/s ({seg.get('linked', 0)} linked now: "
          f"loading {seg.get('load_s', 0):.1f}s, embedding {seg.get('embedded_texts', 0):,} texts "
          f"{seg.get('embed_s', 0):.1f}s, linking {seg.get('link_s', 0):.1f}s)")
    print(f"{m['mentions']} mention(s), {m['labelled']} labelled, {m['errors']} error(s); "
          f"report: {out_dir}/report.md")
    bad = failures(m)
    if image_line(m.get("image_failures") or {}):
        print(f"i2cr: {image_line(m['image_failures'])}", file=sys.stderr)
    if unused_line(m.get("images_unused") or 0):
        print(f"i2cr: {unused_line(m['images_unused'])}", file=sys.stderr)
    cut = candidates_line(m.get("candidate_cuts") or {})
    if cut:
        print(f"i2cr: {cut}", file=sys.stderr)
    if "kb" in m:
        print("\n".join(kb_lines(m["kb"])))
    for b in bad:  # (the caches that failed last, as link's closing lines say them)
        print(f"i2cr: {b}", file=sys.stderr)
    return 1 if bad else 0


def cmd_bench(args: argparse.Namespace) -> int:
    settings = _settings(args)
    check_backend(settings)
    if args.engine == "ray":
        engine.check_flags(args)
        r = bench_ray(args.data, args.labels, n=args.n, settings=settings, seed=args.seed,
                      workers=args.workers, stream_mentions=args.stream_mentions)
        print(json.dumps(r, indent=2))
        return 0
    r = bench(args.data, args.labels, n=args.n, settings=settings, seed=args.seed)
    print(json.dumps(r, indent=2))
    return 0


def cmd_kb_build(args: argparse.Namespace) -> int:
    settings = _settings(args)
    emb = resources.embedder(settings)
    meta = build(args.source, args.out, embedder=settings.embedder, encode=emb.raw_encode,
                 dtype=emb.dtype,
                 kind=args.format, batch_size=args.batch_size, progress=not args.no_progress)
    print(json.dumps({k: meta.get(k) for k in ("entities", "bad", "repeated", "embedder", "dim",
                                               "build_s", "size_bytes", "ann")}))
    return 1 if meta.get("bad") else 0


def cmd_sft_export(args: argparse.Namespace) -> int:
    if args.prompt_profile:
        args.set = [*(args.set or []), f"prompt_profile={args.prompt_profile}"]
    settings = _settings(args, embeds=False)
    st = export(args.data, args.labels, args.out, fmt=args.format, settings=settings,
                seed=args.seed, warn=lambda e: print(f"i2cr: {e}", file=sys.stderr))
    forms = ", ".join(f"{k} {v}" for k, v in sorted(st.forms.items()))
    print(f"i2cr: {st.examples} example(s) ({forms or 'none'}) from {st.exported} of "
          f"{st.records} record(s) in {args.out}, format {args.format}, prompt profile "
          f"{settings.prompt_profile}, seed {args.seed}; {len(st.skipped)} skipped (gold not among "
          f"the candidates{': ' + ', '.join(st.skipped[:5]) if st.skipped else ''}"
          f"{', ...' if len(st.skipped) > 5 else ''}); {st.failed} bad record(s)", file=sys.stderr)
    return 1 if st.failed else 0


def cmd_graph(args: argparse.Namespace) -> int:
    print(graph.get_graph().draw_mermaid())
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="i2cr", description=(
        "Multimodal entity linking with the I2CR method as a LangGraph agent."))
    sub = p.add_subparsers(dest="command", required=True)

    pl = sub.add_parser("link", help="link the mentions of a file and print a table of results",
                        description="Link the mentions of a file. Prints one table row per mention "
                        "(mention, answer, gold, correct, route); --json prints the JSON records "
                        "instead, --out writes them to a JSONL file.")
    pl.add_argument("file", help="I2CR/MELBench JSON (id -> sample), one sample as JSON, or JSONL")
    pl.add_argument("--labels", help="label file (id -> gold name or 'nil') to score the results")
    pl.add_argument("--image-root", type=_folder, help="folder that image paths are relative to "
                    "(default: the input file's folder)")
    pl.add_argument("--out", help="write results as JSONL here (with --resume, skip ids done)")
    pl.add_argument("--resume", action="store_true", help="go on from an earlier --out file")
    pl.add_argument("--limit", type=_count, metavar="N", help="link only the first N mentions")
    pl.add_argument("--shuffle-seed", type=int, metavar="SEED",
                    help="shuffle each mention's candidates with this seed (for scoring on data "
                    "whose raw order leaks the gold)")
    pl.add_argument("--llm", help="LLM backend, e.g. embedded, openai:gpt-4o, azure:<deployment>, "
                    "openai-compat:<model>@<base_url>")
    pl.add_argument("--set", action="append", metavar="NAME=VALUE",
                    help="any setting of the context schema, e.g. --set icr_threshold=0.4")
    pl.add_argument("--allow-nil", action="store_true", help="let every mention be linked to NIL")
    pl.add_argument("--kb", metavar="KBDIR", help="knowledge base (i2cr kb build) that generates "
                    "the candidates of mentions given without any")
    pl.add_argument("--json", action="store_true",
                    help="print each result as a JSON record instead of a table row")
    pl.add_argument("--events", action="store_true",
                    help="print JSON records with the decision events and the trace")
    pl.add_argument("--print", action="store_true", help="print results even with --out")
    pl.add_argument("--no-progress", action="store_true", help="no progress bar")
    pl.add_argument("--stream", action="store_true", help="print node events as they happen")
    pl.add_argument("--concurrency", type=_count, default=1, metavar="N",
                    help="mentions in flight (API backends; at most N LLM calls at once; "
                    "records come in the order they finish)")
    pl.add_argument("--checkpoint", metavar="DB.sqlite",
                    help="keep every state of every mention in SQLite (thread id = mention id)")
    engine.add_flags(pl, _count)
    pl.set_defaults(func=cmd_link)

    pt = sub.add_parser("trace", help="show the decisions of a run (tree, Mermaid, HTML)")
    pt.add_argument("run", help="results JSONL, or an eval --out-dir")
    pt.add_argument("mention_id", nargs="?", help="one mention (default: all)")
    pt.add_argument("--mermaid", action="store_true", help="the graph with this mention's path")
    pt.add_argument("--html", metavar="PAGE.html", help="write one self-contained page for the run")
    pt.add_argument("--image-root", type=_folder,
                    help="folder of the run's images: --html embeds only images under it "
                    "(default: an eval run's dataset folder)")
    pt.add_argument("--remote-images", action="store_true",
                    help="let the --html page load the data's image URLs (off: nothing remote)")
    pt.set_defaults(func=cmd_trace)

    pe = sub.add_parser("eval", help="evaluate on a labelled dataset: accuracy by stage, cost, speed",
                        description="Link every mention of a labelled dataset and write "
                        "results.jsonl, metrics.json, report.md and stages.png to --out-dir. "
                        "Exits 1 when a record errored, an LLM call or an image download failed "
                        "(each is reported, as are images that could not be used).")
    pe.add_argument("data", help="dataset (I2CR/MELBench JSON or JSONL)")
    pe.add_argument("labels", help="label file: id -> gold name or 'nil'")
    pe.add_argument("--out-dir", default=None, metavar="DIR",
                    help="folder for results.jsonl, metrics.json, report.md, stages.png "
                    "(default: runs/eval)")
    pe.add_argument("--image-root", metavar="DIR", type=_folder,
                    help="folder that image paths are relative to (default: the data file's folder)")
    pe.add_argument("--resume", action="store_true", help="go on from a killed run in --out-dir")
    pe.add_argument("--limit", type=_count, metavar="N",
                    help="evaluate only the first N mentions (after --sample)")
    pe.add_argument("--sample", type=_count, metavar="N", help="a random sample of N mentions")
    pe.add_argument("--seed", type=int, default=0, help="seed of --sample")
    pe.add_argument("--keep-order", action="store_true",
                    help="keep the file's candidate order (by default candidates are shuffled)")
    pe.add_argument("--shuffle-seed", type=int, default=0, metavar="SEED",
                    help="seed of the candidate shuffle (default 0; the report names it)")
    pe.add_argument("--concurrency", type=_count, default=1, metavar="N",
                    help="mentions in flight (API backends)")
    pe.add_argument("--llm", metavar="SPEC", help="LLM backend, e.g. embedded, openai:gpt-4o, "
                    "azure:<deployment>, openai-compat:<model>@<base_url> (default: none, TES by "
                    "retrieval)")
    pe.add_argument("--set", action="append", metavar="NAME=VALUE",
                    help="any setting of the context schema, e.g. --set icr_threshold=0.4")
    pe.add_argument("--no-progress", action="store_true",
                    help="no progress lines (loading, embedding, linking)")
    pe.add_argument("--kb", metavar="KBDIR", help="ignore the dataset's candidate lists: generate "
                    "candidates from this knowledge base and report the generator's recall")
    engine.add_flags(pe, _count)
    pe.set_defaults(func=cmd_eval)

    pb = sub.add_parser("bench", help="time the offline pipeline against the raw model work",
                        description="Time the pipeline on a random sample against the embedder "
                        "alone, cold (empty entity-embedding store) and warm; prints JSON.")
    pb.add_argument("data", help="dataset (I2CR/MELBench JSON or JSONL)")
    pb.add_argument("labels", help="label file: id -> gold name or 'nil'")
    pb.add_argument("-n", type=_count, default=200, metavar="N", help="mentions (default 200)")
    pb.add_argument("--seed", type=int, default=0, help="seed of the sample")
    pb.add_argument("--llm", metavar="SPEC", help="LLM backend (as for eval; default none)")
    pb.add_argument("--set", action="append", metavar="NAME=VALUE",
                    help="any setting of the context schema")
    pb.add_argument("--engine", choices=("local", "ray"), default="local",
                    help="ray: this process against Ray on the same sample, then the driver's "
                    "memory while a large generated JSONL streams through Ray")
    pb.add_argument("--workers", type=_count, metavar="N", help="Ray actors (default: the CPUs)")
    pb.add_argument("--stream-mentions", type=_count, default=500_000, metavar="N",
                    help="mentions of the generated JSONL streamed with --engine ray")
    pb.set_defaults(func=cmd_bench, ray_address=None)

    pk = sub.add_parser("kb", help="knowledge bases to link against (no candidate lists needed)")
    ksub = pk.add_subparsers(dest="kb_command", required=True)
    pkb = ksub.add_parser("build", help="build (or resume building) a KB index",
                          description="Build a LanceDB entity index from a JSONL of entities "
                          "({id, name, aliases?, desc?, prior?, image?}) or from the candidate "
                          "lists of an I2CR/MELBench dataset. Rerun with the same --out to resume. "
                          "Bad lines are reported and skipped; the exit code is 1 when any were.")
    pkb.add_argument("source", help="entities JSONL, or a dataset (JSON or JSONL of mentions)")
    pkb.add_argument("--out", required=True, metavar="KBDIR", help="folder of the KB")
    pkb.add_argument("--format", choices=("auto", "entities", "dataset"), default="auto",
                     help="what SOURCE is (default: guessed)")
    pkb.add_argument("--batch-size", type=_count, default=1024, metavar="N",
                     help="entities embedded and written per batch (default 1024)")
    pkb.add_argument("--set", action="append", metavar="NAME=VALUE",
                     help="settings, e.g. --set embedder=... (the KB records its embedder)")
    pkb.add_argument("--no-progress", action="store_true", help="no progress lines")
    pkb.set_defaults(func=cmd_kb_build)

    ps = sub.add_parser("sft", help="fine-tuning data for the LLM's TES calls")
    ssub = ps.add_subparsers(dest="sft_command", required=True)
    pse = ssub.add_parser("export", help="write TES training examples as JSONL",
                          description="Write TES training examples: the prompts the graph sends "
                          "(round 1, one per visual clue, a re-choice after an exclusion, NIL "
                          "where the record allows it) with the gold as the answer, candidates "
                          "shuffled with --seed. Bad records are reported and skipped; the exit "
                          "code is 1 when any were.")
    pse.add_argument("data", help="dataset (I2CR/MELBench JSON or JSONL)")
    pse.add_argument("labels", help="label file: id -> gold name or 'nil'")
    pse.add_argument("--out", required=True, metavar="FILE.jsonl", help="examples go here")
    pse.add_argument("--format", choices=("openai", "sharegpt", "alpaca"), default="openai",
                     help="openai chat messages, sharegpt or alpaca as LLaMA-Factory reads them "
                     "(default openai)")
    pse.add_argument("--prompt-profile", choices=("i2cr", "paper"), default=None,
                     help="prompt layout (default: the prompt_profile setting, i2cr)")
    pse.add_argument("--seed", type=int, default=0, help="seed of the candidate shuffles")
    pse.add_argument("--set", action="append", metavar="NAME=VALUE",
                     help="settings the prompts follow, e.g. desc_chars, tools, clue_mode")
    pse.set_defaults(func=cmd_sft_export)

    pg = sub.add_parser("graph", help="print the graph as Mermaid")
    pg.set_defaults(func=cmd_graph)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    warn_unknown(os.environ)  # a misspelt I2CR_* variable is named, not silently ignored
    args.cache_mark = mark()  # this run reports the cache failures that happen from here on
    try:
        return args.func(args)
    except (DataError, BackendError, ModelUnavailable) as e:
        print(f"i2cr: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a path that cannot be read or written: one line, no traceback
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        print(f"i2cr: {e.strerror or type(e).__name__}{where}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
