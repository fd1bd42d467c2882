"""``--engine ray`` for ``i2cr link`` and ``i2cr eval``: the flags, and the commands' Ray paths.

Kept apart from :mod:`i2cr.cli`; the single-process commands never import Ray (the Ray engine
imports ``ray`` only inside the functions that run it, when ``--engine ray`` is given).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..data import DataError, load_labels
from .ray_engine import Job, RayStats, run_ray, summary


def add_flags(p: argparse.ArgumentParser, count: Any) -> None:
    """The engine flags of ``link`` and ``eval``."""
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: this process (default); ray: stream the input through Ray Data "
                   "and link it on a pool of actors (pip install 'i2cr[ray]')")
    p.add_argument("--ray-address", metavar="ADDR", help="with --engine ray: the cluster to use, "
                   "e.g. ray://head:10001 or 127.0.0.1:6379 (default: start a local Ray on "
                   "127.0.0.1)")
    p.add_argument("--workers", type=count, metavar="N", help="with --engine ray: actors, each "
                   "with its own models (default: the cluster's CPUs)")
    p.add_argument("--batch-size", type=count, default=32, metavar="N",
                   help="with --engine ray: mentions per batch (the unit of work and of "
                   "embedding prefetch; default 32)")


def _refuse(why: str) -> None:
    """Flags that cannot go together: unusable input, one line, exit code 2."""
    print(f"i2cr: {why}", file=sys.stderr)
    raise SystemExit(2)


def check_flags(args: argparse.Namespace) -> None:
    """Refuse what the Ray engine does not do, and Ray flags without it, in one line."""
    if args.engine != "ray":
        given = [f for f, v in (("--ray-address", args.ray_address), ("--workers", args.workers))
                 if v is not None]
        if given:
            _refuse(f"{', '.join(given)} need(s) --engine ray")
        return
    for flag in ("stream", "checkpoint", "sample"):
        if getattr(args, flag, None):
            _refuse(f"--{flag} is not available with --engine ray")
    if importlib.util.find_spec("ray") is None:  # not imported here: Ray reads its environment
        raise SystemExit("i2cr: --engine ray needs Ray: pip install 'i2cr[ray]'")  # on import


def _job(args: argparse.Namespace, settings: Any, *, labels: str | None, candidates: str,
         shuffle_seed: int | None, allow_nil: bool | None) -> Any:
    path = Path(args.file if hasattr(args, "file") else args.data)
    if not path.is_file():
        raise DataError("file not found" if not path.exists() else "is a folder, not a file",
                        source=str(path))
    if settings.kb and "://" not in settings.kb:  # the workers may run in another folder
        settings = replace(settings, kb=str(Path(settings.kb).resolve()))
    return Job(path=str(path), settings=settings, labels=labels,
               image_root=args.image_root or str(path.parent), allow_nil=allow_nil,
               candidates=candidates, shuffle_seed=shuffle_seed, limit=args.limit,
               concurrency=getattr(args, "concurrency", None) or 1)


def link_ray(args: argparse.Namespace, settings: Any) -> tuple[Any, Any, Callable[[], str]]:
    """``i2cr link --engine ray``: the records from the Ray engine (lazy), their stats and the
    closing line's function, which the CLI reports as it reports ``i2cr link``."""
    if args.labels:
        load_labels(args.labels)  # a bad label file is refused before Ray starts
    job = _job(args, settings, labels=args.labels, shuffle_seed=args.shuffle_seed,
               candidates="optional" if settings.kb else "required",
               allow_nil=True if args.allow_nil else None)
    stats = RayStats()
    records = run_ray(job, out=args.out, resume=args.resume, address=args.ray_address,
                      workers=args.workers, batch_size=args.batch_size,
                      progress=not args.no_progress, stats=stats)  # (lazy)
    return records, stats, lambda: summary(stats)


def eval_engine(args: argparse.Namespace, settings: Any) -> Any:
    """For ``i2cr eval --engine ray``: the function :func:`i2cr.eval.harness.evaluate` calls
    instead of loading and linking the dataset itself."""
    job = _job(args, settings, labels=args.labels,
               candidates="ignored" if settings.kb else "required",
               shuffle_seed=None if args.keep_order else args.shuffle_seed, allow_nil=None)

    def records(results_path: Path, resume: bool, stats: Any, progress: bool) -> Any:
        st = stats if isinstance(stats, RayStats) else RayStats()
        try:
            yield from run_ray(job, out=results_path, resume=resume, address=args.ray_address,
                               workers=args.workers, batch_size=args.batch_size,
                               progress=progress, stats=st)
        finally:
            if st is not stats:
                for k in ("mentions", "produced", "errors", "llm_failed", "wall_s", "link_s",
                          "labels_unmatched"):
                    setattr(stats, k, getattr(st, k))
            print(f"i2cr: {summary(st)}", file=sys.stderr)
    return records
