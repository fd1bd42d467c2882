"""The hybrid TES's cost curve: LLM calls per mention against top-1 as ``hybrid_threshold`` varies.

    python -m i2cr.eval.hybrid DATA LABELS [--llm scripted:0.95|embedded|SPEC]
        [--thresholds 0.5,0.7,0.8,0.9,0.95,0.99] [--top-k 5] [--limit N] [--set name=value ...]
        --out curve.json

Every point runs the whole graph over the same mentions (candidates shuffled with seed 0, as
``i2cr eval`` does): the pure ranker (``tes_strategy=retrieval``, no LLM call), the hybrid at each
threshold, and the pure LLM (``tes_strategy=llm``: the paper's TES, and VIF asking the LLM for its
tools). The hybrid asks the LLM at most once per mention, about the answer that stands
(:mod:`i2cr.graph.review`). ``scripted:P`` is an LLM of known accuracy
(:class:`i2cr.eval.scripted.Oracle`: the gold with probability P when the prompt offers it, else a
random offered candidate; seeded), so that the user of a real backend can read the cost of each
point off the curve: calls per mention times the price of one call (the hybrid's prompts offer only
the ranker's top-k, so they are shorter; the prompt characters per call are reported too).

Writes the points to ``--out`` as JSON and prints them as a Markdown table. Exit code 1 when a
record errored or an LLM call failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..data import Mention, load_labels, load_mentions, shuffle_candidates
from ..graph import Context
from ..graph.events import is_llm_call
from ..linker import link_mention
from ..llm import BackendError, check_backend, shutdown
from .metrics import llm_failed
from .runner import check_items, run
from .scripted import Oracle

DEFAULT_THRESHOLDS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99)


def parse_llm(spec: str, prompt_profile: str = "i2cr") -> tuple[dict[str, Any], Oracle | None]:
    """``scripted:P`` -> (settings with the oracle's chat model, the oracle); else ``llm=spec``."""
    if spec.startswith("scripted:"):
        try:
            p = float(spec.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"--llm {spec!r}: scripted wants an accuracy, e.g. scripted:0.95") from None
        oracle = Oracle(p, prompt_profile=prompt_profile)
        return {"chat_model": oracle.chat_model()}, oracle
    return {"llm": spec}, None


def summarise(recs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Top-1, LLM calls, which path gave the hybrid's answer and the prompt size of one point's
    records."""
    n = len(recs)
    labelled = [r for r in recs if "correct" in r]
    calls = sum(r.get("llm_calls") or 0 for r in recs)
    paths = {"ranker": 0, "llm": 0}
    chars = tokens = prompts = 0
    for r in recs:
        for e in r.get("events") or []:
            if e.get("type") == "tes_hybrid" and e.get("node") == "review" and e["path"] in paths:
                paths[e["path"]] += 1
            if is_llm_call(e):
                prompts += 1
                chars += sum(len(m.get("content") or "") for m in e.get("prompt") or [])
                tokens += e.get("tokens") or 0
    return {
        "mentions": n,
        "top1": round(sum(bool(r["correct"]) for r in labelled) / len(labelled), 4)
        if labelled else None,
        "llm_calls_per_mention": round(calls / n, 4) if n else 0.0,
        "mentions_with_llm_call": round(sum((r.get("llm_calls") or 0) > 0 for r in recs) / n, 4)
        if n else 0.0,
        "answers_by_ranker": paths["ranker"], "answers_by_llm": paths["llm"],
        "prompt_chars_per_call": round(chars / prompts) if prompts else None,
        "tokens_per_mention": round(tokens / n, 1) if n and tokens else None,
        "errors": sum(r.get("error") is not None for r in recs),
        "llm_failed": sum(llm_failed(r) for r in recs),
    }


def curve(items: list, base: dict[str, Any], llm: str, thresholds: Sequence[float], *,
          top_k: int = 5, say: Callable[[str], None] | None = None,
          done: Callable[[list[dict[str, Any]]], None] | None = None) -> list[dict[str, Any]]:
    """The points: pure ranker, pure LLM, then the hybrid at each threshold (``done`` sees the
    points so far after each one, so that a long run keeps what it measured)."""
    more, oracle = parse_llm(llm, str(base.get("prompt_profile", "i2cr")))

    def linker(m: Mention, settings: Context) -> dict[str, Any]:
        if oracle is None:
            return link_mention(m, settings)
        with oracle.serving(m):
            return link_mention(m, settings)

    runs: list[tuple[str, dict[str, Any]]] = [("ranker", {"tes_strategy": "retrieval"}),
                                              ("llm", {"tes_strategy": "llm", **more})]
    runs += [(f"hybrid {t:g}", {"tes_strategy": "hybrid", "hybrid_threshold": t,
                                "hybrid_top_k": top_k, **more}) for t in thresholds]
    points = []
    for name, over in runs:
        settings = Context.from_overrides({**base, **over})
        t0 = time.perf_counter()
        recs = list(run(items, settings, progress=False, linker=linker, warn=None))
        point = {"point": name, "tes_strategy": settings.strategy,
                 "hybrid_threshold": settings.hybrid_threshold if name.startswith("hybrid") else None,
                 **summarise(recs), "seconds": round(time.perf_counter() - t0, 1)}
        points.append(point)
        if done is not None:
            done(points)
        if say is not None:
            say(f"{name}: top-1 {point['top1']}, {point['llm_calls_per_mention']} LLM calls/mention "
                f"({point['seconds']}s)")
    return points


def table(points: Sequence[dict[str, Any]]) -> str:
    rows = ["| point | LLM calls / mention | mentions with an LLM call | answers by the LLM "
            "| top-1 | prompt chars / call |", "|---|---|---|---|---|---|"]
    for p in points:
        both = p["answers_by_ranker"] + p["answers_by_llm"]
        share = f"{p['answers_by_llm'] / both:.1%}" if both else ("all" if p["tes_strategy"] == "llm"
                                                                  else "none")
        top1 = "—" if p["top1"] is None else f"{100 * p['top1']:.1f}%"
        rows.append(f"| {p['point']} | {p['llm_calls_per_mention']:.2f} | "
                    f"{p['mentions_with_llm_call']:.1%} | {share} | {top1} | "
                    f"{p['prompt_chars_per_call'] or '—'} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m i2cr.eval.hybrid", description=(
        "LLM calls per mention against top-1 for the pure ranker, the hybrid TES at each "
        "threshold and the pure LLM."))
    ap.add_argument("data")
    ap.add_argument("labels")
    ap.add_argument("--llm", default="scripted:0.95", metavar="SPEC",
                    help="scripted:P (an LLM right with probability P when the gold is offered; "
                    "default scripted:0.95), embedded, or any --llm spec")
    ap.add_argument("--thresholds", default=",".join(f"{t:g}" for t in DEFAULT_THRESHOLDS),
                    help="hybrid_threshold values, comma-separated")
    ap.add_argument("--top-k", type=int, default=5, help="hybrid_top_k (default 5)")
    ap.add_argument("--limit", type=int, default=None, metavar="N", help="the first N mentions")
    ap.add_argument("--shuffle-seed", type=int, default=0, help="seed of the candidate shuffle")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="more settings for every point")
    ap.add_argument("--out", required=True, metavar="curve.json")
    args = ap.parse_args(argv)

    def say(msg: str) -> None:
        print(f"i2cr: {msg}", file=sys.stderr, flush=True)

    try:
        thresholds = [float(t) for t in args.thresholds.split(",") if t.strip()]
        base: dict[str, Any] = {}
        for item in args.set:
            k, sep, v = item.partition("=")
            if not sep:
                raise ValueError(f"--set wants name=value, got {item!r}")
            base[k.strip()] = v
        for t in thresholds:  # every setting checked before the first point runs
            Context.from_overrides({**base, "tes_strategy": "hybrid", "hybrid_threshold": t,
                                    "hybrid_top_k": args.top_k})
        more, oracle = parse_llm(args.llm)
        gold = load_labels(args.labels)
        items = shuffle_candidates(load_mentions(args.data, gold, strict=False), args.shuffle_seed)
        items = check_items(items[: args.limit] if args.limit else items, gold)
        if oracle is None:  # a real backend: it must answer before the first point
            check_backend(Context.from_overrides({**base, **more, "tes_strategy": "llm"}))
    except (ValueError, BackendError) as e:  # DataError included
        print(f"i2cr: {e}", file=sys.stderr)
        return 2
    head = {"data": str(args.data), "labels": str(args.labels), "llm": args.llm,
            "top_k": args.top_k, "shuffle_seed": args.shuffle_seed, "settings": base,
            "command": "python -m i2cr.eval.hybrid " + " ".join(argv if argv is not None
                                                               else sys.argv[1:])}

    def save(points: list[dict[str, Any]]) -> None:
        tmp = Path(str(args.out) + ".tmp")
        tmp.write_text(json.dumps({**head, "points": points}, indent=2))
        tmp.replace(args.out)

    try:
        points = curve(items, base, args.llm, thresholds, top_k=args.top_k, say=say, done=save)
    finally:
        shutdown()
    print(table(points))
    bad = sum(p["errors"] + p["llm_failed"] for p in points)
    if bad:
        say(f"{bad} record(s) errored or had failed LLM calls (see the points' errors, llm_failed)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
