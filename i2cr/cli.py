"""The ``i2cr`` command line.

    i2cr link FILE [--labels L] [--out results.jsonl] [--resume] [--limit N] [--llm SPEC]
                   [--set name=value ...]
    i2cr graph
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from .data import DataError


def _settings(args: argparse.Namespace):
    from .graph import Context

    overrides: dict[str, Any] = {}
    for item in args.set or []:
        k, sep, v = item.partition("=")
        if not sep:
            raise SystemExit(f"i2cr: --set wants name=value, got {item!r}")
        overrides[k.strip()] = v
    if getattr(args, "llm", None):
        overrides["llm"] = args.llm
    try:
        return Context.from_overrides(overrides)
    except (ValueError, TypeError) as e:
        raise SystemExit(f"i2cr: {e}") from None


def cmd_link(args: argparse.Namespace) -> int:
    from . import llm
    from .data import load_mentions, shuffle_candidates
    from .eval.runner import run

    settings = _settings(args)
    try:
        items = load_mentions(args.file, args.labels, image_root=args.image_root, strict=False,
                              allow_nil=True if args.allow_nil else None)
    except DataError as e:
        print(f"i2cr: {e}", file=sys.stderr)
        return 2
    if args.shuffle_seed is not None:
        items = shuffle_candidates(items, args.shuffle_seed)
    if args.limit is not None:
        items = items[: args.limit]
    single = len(items) == 1 and not args.out
    n = errors = correct = labelled = calls = 0
    linker = _linker(args)
    try:
        for rec in run(items, settings, out=args.out, resume=args.resume,
                       progress=not args.no_progress and not args.stream, linker=linker):
            n += 1
            errors += rec.get("error") is not None
            calls += rec.get("llm_calls") or 0
            if "correct" in rec:
                labelled += 1
                correct += bool(rec["correct"])
            if args.out and not args.print:
                continue
            if not args.events:
                rec = {k: v for k, v in rec.items() if k not in ("events", "trace")}
            print(json.dumps(rec, ensure_ascii=False, indent=2 if single else None, default=str),
                  flush=True)
    except KeyboardInterrupt:
        print("i2cr: interrupted; results so far are saved" + (f" in {args.out}; rerun with "
              "--resume to go on" if args.out else ""), file=sys.stderr)
        return 130
    finally:
        llm.shutdown()
    if n > 1 or args.out:
        summary = f"i2cr: {n} mention(s) linked, {errors} error(s), {calls / max(n, 1):.2f} LLM calls/mention"
        if labelled:
            summary += f", top-1 {correct / labelled:.1%} on {labelled} labelled"
        if args.out:
            summary += f"; results in {args.out}"
        print(summary, file=sys.stderr)
    return 0 if errors == 0 else 1


def _linker(args: argparse.Namespace):
    """link_mention, with live node events (--stream) and a SQLite checkpointer (--checkpoint)."""
    from .linker import link_mention

    show = _stream_printer if args.stream else None
    g = None
    if args.checkpoint:
        import sqlite3

        from langgraph.checkpoint.sqlite import SqliteSaver

        from .graph import compile_graph

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
    from .redact import scrub
    from .trace import printable

    mid = printable(mention_id)

    def out(line: str) -> None:
        print(f"[{mid}] {printable(scrub(line))}", file=sys.stderr, flush=True)

    def show(kind: str, ev: dict[str, Any]) -> None:
        if kind == "node":
            edge = ev.get("choice") or ev.get("answer") or ev.get("iav_mode") or ""
            out(f"· {ev['node']:<7} {edge}")
            for e in ev.get("events", []):
                brief = {k: v for k, v in e.items() if k in ("type", "choice", "score",
                         "threshold", "decision", "tool", "how", "mapped", "mode", "error")}
                if e.get("type") == "tool_call":
                    brief["clue"] = str(e.get("result") or "")[:200]
                out(f"    {json.dumps(brief, ensure_ascii=False, default=str)}")
        elif ev.get("type") == "llm_call":
            out(f"    llm[{ev.get('node')}]: {str(ev.get('raw') or ev.get('error'))[:100]!r}")
    return show


def cmd_trace(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .eval.runner import read_results
    from .trace import printable, render_html, render_mermaid, render_tree

    path = Path(args.run)
    if path.is_dir():
        path = path / "results.jsonl"
    if not path.exists():
        print(f"i2cr: no results file at {path}", file=sys.stderr)
        return 2
    recs = read_results(path)
    if args.html:
        root = args.image_root or _dataset_folder(path)
        if root is None:
            print("i2cr: local images are not embedded: give --image-root (only images under it "
                  "are)", file=sys.stderr)
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
        from .graph import graph

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
    from pathlib import Path

    try:
        info = json.loads((Path(results).parent / "run.json").read_text(encoding="utf-8"))["info"]
        return str(Path(info["dataset"]).resolve().parent)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def cmd_eval(args: argparse.Namespace) -> int:
    from . import llm
    from .eval.harness import evaluate
    from .eval.report import stage_rows

    settings = _settings(args)
    try:
        m = evaluate(args.data, args.labels, args.out_dir, settings=settings,
                     image_root=args.image_root, resume=args.resume, limit=args.limit,
                     sample=args.sample, seed=args.seed, keep_order=args.keep_order,
                     shuffle_seed=args.shuffle_seed, concurrency=args.concurrency,
                     progress=not args.no_progress, command="i2cr " + " ".join(sys.argv[1:]))
    except KeyboardInterrupt:
        print(f"i2cr: interrupted; rerun with --resume to go on ({args.out_dir})", file=sys.stderr)
        return 130
    finally:
        llm.shutdown()
    for label, v in stage_rows(m):
        print(f"{label:32s} {'—' if v is None else f'{100 * v:5.1f}%'}")
    c, s = m["cost"], m["speed"]
    print(f"LLM calls/mention {c['llm_calls_per_mention']:.2f}, tool calls/mention "
          f"{c['tool_calls_per_mention']:.2f}, {s['mentions_per_s'] or 0:.2f} mentions/s, "
          f"p50 {s['latency_p50_s'] or 0:.3f}s; report: {args.out_dir}/report.md")
    if c.get("llm_failed_calls"):
        print(f"warning: {c['llm_failed_calls']} LLM calls failed and TES fell back to the embedding "
              f"ranking {c.get('tes_fallbacks', 0)} times: these answers are not the LLM's "
              "(see the llm_error events in results.jsonl)", file=sys.stderr)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .eval.bench import bench

    r = bench(args.data, args.labels, n=args.n, settings=_settings(args), seed=args.seed)
    print(json.dumps(r, indent=2))
    return 0


def cmd_graph(args: argparse.Namespace) -> int:
    from .graph import graph

    print(graph.get_graph().draw_mermaid())
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="i2cr", description=(
        "Multimodal entity linking with the I2CR method as a LangGraph agent."))
    sub = p.add_subparsers(dest="command", required=True)

    pl = sub.add_parser("link", help="link the mentions of a file and print JSON results")
    pl.add_argument("file", help="I2CR/MELBench JSON (id -> sample), one sample as JSON, or JSONL")
    pl.add_argument("--labels", help="label file (id -> gold name or 'nil') to score the results")
    pl.add_argument("--image-root", help="folder that image paths are relative to "
                    "(default: the input file's folder)")
    pl.add_argument("--out", help="write results as JSONL here (with --resume, skip ids done)")
    pl.add_argument("--resume", action="store_true", help="go on from an earlier --out file")
    pl.add_argument("--limit", type=int, help="link only the first N mentions")
    pl.add_argument("--shuffle-seed", type=int, metavar="SEED",
                    help="shuffle each mention's candidates with this seed (for scoring on data "
                    "whose raw order leaks the gold)")
    pl.add_argument("--llm", help="LLM backend, e.g. embedded, openai:gpt-4o, azure:<deployment>, "
                    "openai-compat:<model>@<base_url>")
    pl.add_argument("--set", action="append", metavar="NAME=VALUE",
                    help="any setting of the context schema, e.g. --set icr_threshold=0.4")
    pl.add_argument("--allow-nil", action="store_true", help="let every mention be linked to NIL")
    pl.add_argument("--events", action="store_true", help="include the decision events in output")
    pl.add_argument("--print", action="store_true", help="print results even with --out")
    pl.add_argument("--no-progress", action="store_true", help="no progress bar")
    pl.add_argument("--stream", action="store_true", help="print node events as they happen")
    pl.add_argument("--checkpoint", metavar="DB.sqlite",
                    help="keep every state of every mention in SQLite (thread id = mention id)")
    pl.set_defaults(func=cmd_link)

    pt = sub.add_parser("trace", help="show the decisions of a run (tree, Mermaid, HTML)")
    pt.add_argument("run", help="results JSONL, or an eval --out-dir")
    pt.add_argument("mention_id", nargs="?", help="one mention (default: all)")
    pt.add_argument("--mermaid", action="store_true", help="the graph with this mention's path")
    pt.add_argument("--html", metavar="PAGE.html", help="write one self-contained page for the run")
    pt.add_argument("--image-root", help="folder of the run's images: --html embeds only images "
                    "under it (default: an eval run's dataset folder)")
    pt.add_argument("--remote-images", action="store_true",
                    help="let the --html page load the data's image URLs (off: nothing remote)")
    pt.set_defaults(func=cmd_trace)

    pe = sub.add_parser("eval", help="evaluate on a labelled dataset: accuracy by stage, cost, speed")
    pe.add_argument("data", help="dataset (I2CR/MELBench JSON or JSONL)")
    pe.add_argument("labels", help="label file: id -> gold name or 'nil'")
    pe.add_argument("--out-dir", default="runs/eval", help="results.jsonl, report.md, stages.png")
    pe.add_argument("--image-root")
    pe.add_argument("--resume", action="store_true", help="go on from a killed run in --out-dir")
    pe.add_argument("--limit", type=int)
    pe.add_argument("--sample", type=int, metavar="N", help="a random sample of N mentions")
    pe.add_argument("--seed", type=int, default=0, help="seed of --sample")
    pe.add_argument("--keep-order", action="store_true",
                    help="keep the file's candidate order (by default candidates are shuffled)")
    pe.add_argument("--shuffle-seed", type=int, default=0)
    pe.add_argument("--concurrency", type=int, default=1, help="mentions in flight (API backends)")
    pe.add_argument("--llm")
    pe.add_argument("--set", action="append", metavar="NAME=VALUE")
    pe.add_argument("--no-progress", action="store_true")
    pe.set_defaults(func=cmd_eval)

    pb = sub.add_parser("bench", help="time the offline pipeline against the raw model work")
    pb.add_argument("data")
    pb.add_argument("labels")
    pb.add_argument("-n", type=int, default=200, help="mentions")
    pb.add_argument("--seed", type=int, default=0)
    pb.add_argument("--llm")
    pb.add_argument("--set", action="append", metavar="NAME=VALUE")
    pb.set_defaults(func=cmd_bench)

    pg = sub.add_parser("graph", help="print the graph as Mermaid")
    pg.set_defaults(func=cmd_graph)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except DataError as e:
        print(f"i2cr: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
