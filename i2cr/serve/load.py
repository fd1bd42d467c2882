"""Load benchmark for a running server: ``n`` POST /link requests, ``c`` at a time.

    python -m i2cr.serve.load --url http://127.0.0.1:2024 -n 300 -c 8

It talks to 127.0.0.1 (or localhost) only and stops by itself after its requests (each has a
timeout). The key, when the server wants one, is read from ``I2CR_API_KEY`` (never from the
command line, where ``ps`` would show it). It reports errors, p50/p95 latency, requests/s and the
server's resident memory (``/health``) after a warm-up and at the end; the exit code is 1 when any
request failed or memory grew by ``--max-rss-growth-mb`` (50) or more.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import httpx

from ..envvars import LOAD_API_KEY

MENTION: dict[str, Any] = {
    "mention": "Jordan",
    "context": "Jordan dunks during the 1991 NBA Finals.",
    "candidates": [
        {"name": "Michael Jordan", "desc": "Name: Michael Jordan. Occupation: basketball player. "
         "Team: Chicago Bulls."},
        {"name": "Jordan Peele", "desc": "Name: Jordan Peele. Occupation: film director, comedian."},
        {"name": "Jordan", "desc": "Jordan is a country in Western Asia. Its capital is Amman."},
        {"name": "Michael B. Jordan", "desc": "Name: Michael B. Jordan. Occupation: actor."},
    ],
    "clues": {"OCR text": "CHICAGO BULLS 23", "Caption": "a basketball player dunking",
              "Tags": "basketball; sport; player; arena"},
}


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    k = max(0, min(len(xs) - 1, round(q / 100 * (len(xs) - 1))))
    return xs[k]


def run(url: str, n: int, c: int, key: str | None = None, timeout: float = 120.0,
        warmup: int | None = None) -> dict[str, Any]:
    """The figures of one load run (see the module docstring)."""
    host = urlsplit(url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"the load test talks to 127.0.0.1 only, not {host!r}")
    headers = {"x-api-key": key} if key else {}
    base = url.rstrip("/")
    errors: list[str] = []
    lock = threading.Lock()
    with httpx.Client(timeout=timeout, headers=headers,
                      limits=httpx.Limits(max_connections=c)) as client:
        def health() -> dict[str, Any]:
            r = client.get(f"{base}/health")
            r.raise_for_status()
            return r.json()

        def one(i: int) -> float:
            t0 = time.perf_counter()
            try:
                # a new context each time: the query is embedded afresh, as with real traffic
                ctx = f"{MENTION['context']} Game {i}, {abs(i) * 7 % 48} minutes in."
                r = client.post(f"{base}/link", json={**MENTION, "id": f"load-{i}",
                                                      "context": ctx})
                ok = r.status_code == 200 and r.json().get("error") is None
                why = f"{r.status_code} {r.text[:200]}"
            except httpx.HTTPError as e:
                ok, why = False, type(e).__name__
            dt = time.perf_counter() - t0
            if not ok:
                with lock:
                    errors.append(f"request {i}: {why}")
            return dt

        with ThreadPoolExecutor(max_workers=c) as pool:  # warm-up: models loaded, pools full
            list(pool.map(one, range(-(warmup if warmup is not None else 2 * c), 0)))
        errors.clear()
        rss0 = health().get("rss_mb")
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=c) as pool:
            lat = list(pool.map(one, range(n)))
        wall = time.perf_counter() - t0
        rss1 = health().get("rss_mb")
    return {
        "requests": n, "concurrency": c, "errors": len(errors), "first_errors": errors[:5],
        "p50_ms": round(1000 * statistics.median(lat), 1),
        "p95_ms": round(1000 * percentile(lat, 95), 1),
        "requests_per_s": round(n / wall, 2), "wall_s": round(wall, 2),
        "rss_mb_after_warmup": rss0, "rss_mb_after": rss1,
        "rss_growth_mb": None if rss0 is None or rss1 is None else round(rss1 - rss0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m i2cr.serve.load", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True, help="the server, e.g. http://127.0.0.1:2024")
    ap.add_argument("-n", type=int, default=300, help="requests (default 300)")
    ap.add_argument("-c", type=int, default=8, help="requests in flight at once (default 8)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    ap.add_argument("--max-rss-growth-mb", type=float, default=50.0)
    args = ap.parse_args(argv)
    if args.n < 1 or args.c < 1:
        ap.error("-n and -c must be >= 1")
    try:
        out = run(args.url, args.n, args.c, os.environ.get(LOAD_API_KEY) or None, args.timeout)
    except Exception as e:  # noqa: BLE001 - one line, not a traceback
        print(f"i2cr.serve.load: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=2))
    growth = out["rss_growth_mb"]
    bad = out["errors"] > 0 or (growth is not None and growth >= args.max_rss_growth_mb)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
