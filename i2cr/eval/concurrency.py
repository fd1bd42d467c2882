"""Mentions in flight against an LLM that waits: a fake OpenAI server and the benchmark over it.

:class:`FakeOpenAI` is an OpenAI-format chat server on 127.0.0.1 (a free port, stopped when its
``with`` block ends; its threads are daemons, so it never outlives the process). Every chat call
waits ``delay`` seconds, as a remote LLM would; a share of calls (``rate_429``) is answered 429
with ``Retry-After``, or every call with ``status`` (e.g. 500). It keeps what a test checks: calls,
the most calls in flight at once, the schemas it was sent. Its answer is the first candidate of the
prompt (or of the schema's enum when the request carries one; a tool call to the first tool when
tools are bound).

    python -m i2cr.eval.concurrency [-m 96] [--levels 1,4,16] [--delay 0.2]

links ``m`` synthetic text-only mentions with the LLM path (TES and ICR) through the fake server
at each concurrency level and prints mentions/s of the linking phase and the speedup over N = 1,
then runs the top level again with 30% of calls answered 429 and counts the lost mentions (an
error record, or an answer that did not come from the LLM). The embedder's work is done before
the linking phase (the runner prefetches every text a mention needs), so the linking phase
measures the LLM-bound case; the graph's own CPU work per mention still runs on the machine's
cores and bounds the speedup at high N.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ..data import Candidate, Mention
from ..graph import Context
from .metrics import llm_failed
from .runner import RunStats, run

_CAND = re.compile(r"^\s*\d+\.\s+(.+?)(?::\s|$)", re.MULTILINE)


def first_candidate(body: dict[str, Any]) -> str:
    """The fake's answer: the first name of the schema's enum, else the prompt's first candidate."""
    schema = _schema_of(body)
    if schema is not None:
        return schema["properties"]["answer"]["enum"][0]
    for m in reversed(body.get("messages") or []):
        if m.get("role") == "user":
            found = _CAND.findall(str(m.get("content") or ""))
            if found:
                return found[0].strip()
    return "nil"


def _schema_of(body: dict[str, Any]) -> dict[str, Any] | None:
    rf = body.get("response_format") or {}
    if rf.get("type") == "json_schema":
        return (rf.get("json_schema") or {}).get("schema")
    if rf.get("type") == "json_object":
        return rf.get("schema")
    return None


class FakeOpenAI:
    """An OpenAI-format chat server for tests and benchmarks (see the module docstring).

    ``check(body)`` may return an error text: the call is then answered 400 with it, and the text
    is kept in ``problems`` (a test asserts there are none)."""

    def __init__(self, *, delay: float = 0.0, rate_429: float = 0.0, retry_after: str | None = "1",
                 status: int | None = None, seed: int = 0,
                 answer: Callable[[dict[str, Any]], str] = first_candidate,
                 check: Callable[[dict[str, Any]], str | None] | None = None,
                 schema_status: int | None = None, fail_first: int = 0, hold: int = 0):
        self.delay, self.rate_429, self.retry_after = delay, rate_429, retry_after
        self.fail_first = fail_first  # the first calls are answered 429 (then rate_429 applies)
        # the first ``hold`` calls wait until ``hold`` calls are in flight at once (at most 30 s):
        # a test of the in-flight cap then sees the cap reached without relying on timing
        self.hold = hold
        self._held = threading.Condition()
        self.status, self.answer, self.check = status, answer, check
        self.schema_status = schema_status  # answer requests that carry a schema with this status
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.calls = 0
        self.refused = 0  # answered 429 or ``status``
        self.in_flight = 0
        self.max_in_flight = 0
        self.bodies: list[dict[str, Any]] = []
        self.times: list[float] = []  # arrival time of each chat call (time.monotonic)
        self.problems: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # headers and body in one segment: no Nagle/delayed-ACK stall between two writes
            disable_nagle_algorithm = True
            wbufsize = -1

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _send(self, code: int, doc: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(doc).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                self._send(200, {"object": "list", "data": [{"id": "fake", "object": "model"}]})

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                code, doc, headers = fake._handle(body)
                self._send(code, doc, headers)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="i2cr-fake-openai")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handle(self, body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        with self._lock:
            self.calls += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.bodies.append(body)
            self.times.append(time.monotonic())
            refuse = self.status or (429 if self.calls <= self.fail_first
                                     or self._rng.random() < self.rate_429 else None)
            held = self.calls <= self.hold
        try:
            if held:
                with self._held:
                    self._held.notify_all()
                    self._held.wait_for(lambda: self.max_in_flight >= self.hold, timeout=30)
            if refuse:
                with self._lock:
                    self.refused += 1
                headers = {"Retry-After": self.retry_after} if refuse == 429 and self.retry_after else {}
                return refuse, {"error": {"message": f"fake: HTTP {refuse}", "type": "fake"}}, headers
            problem = self.check(body) if self.check else None
            if problem:
                with self._lock:
                    self.problems.append(problem)
                return 400, {"error": {"message": problem, "type": "invalid_request_error"}}, {}
            schema = _schema_of(body)
            if schema is not None and self.schema_status:
                return self.schema_status, {"error": {"message": "fake: response_format not "
                                                      "supported", "type": "invalid_request_error"}}, {}
            time.sleep(self.delay)
            message: dict[str, Any] = {"role": "assistant"}
            if body.get("tools"):
                name = body["tools"][0]["function"]["name"]
                message.update(content=None, tool_calls=[{
                    "id": "call_0", "type": "function",
                    "function": {"name": name, "arguments": "{}"}}])
            else:
                name = self.answer(body)
                message["content"] = (json.dumps({"answer": name}) if schema is not None
                                      else f"Answer: {name}")
            return 200, {"id": "chatcmpl-fake", "object": "chat.completion", "created": 0,
                         "model": body.get("model", "fake"),
                         "choices": [{"index": 0, "finish_reason": "stop", "message": message}],
                         "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}}, {}
        finally:
            # leave the count before answering: a client that sends its next call the moment it
            # reads this answer must not be counted twice
            with self._lock:
                self.in_flight -= 1


def synthetic_mentions(m: int, seed: int = 0) -> list[Any]:
    """``m`` text-only mentions, each with four candidates (the gold first, as the fake answers)."""
    rng = random.Random(seed)
    jobs = ["painter", "footballer", "chemist", "river", "novel", "city", "band", "senator"]
    out = []
    for i in range(m):
        name = f"Person{i} Example"
        gold_job, *others = rng.sample(jobs, 4)
        cands = [Candidate(name=f"{name} ({j})", desc=f"{name} is a {j}.") for j in [gold_job, *others]]
        out.append(Mention(id=f"s{i}", mention=name,
                           context=f"{name}, the {gold_job}, was in the news this week.",
                           candidates=cands, label=cands[0].name))
    return out


def lost(rec: dict[str, Any]) -> bool:
    """A mention the LLM did not answer: an error record, or a failed LLM call (fallback answer)."""
    return bool(rec.get("error")) or llm_failed(rec)


def measure(items: list[Any], base_url: str, concurrency: int, **settings: Any) -> dict[str, Any]:
    """Link ``items`` through the server at ``base_url`` with ``concurrency`` mentions in flight."""
    ctx = Context(llm=f"openai-compat:fake@{base_url}", **settings)
    st = RunStats()
    recs = list(run(items, ctx, progress=False, concurrency=concurrency, stats=st))
    return {"concurrency": concurrency, "mentions": len(recs), "link_s": round(st.link_s, 3),
            "mentions_per_s": round(len(recs) / st.link_s, 2) if st.link_s else None,
            "llm_calls": sum(r.get("llm_calls") or 0 for r in recs),
            "lost": sum(lost(r) for r in recs), "errors": st.errors}


def bench(m: int = 96, levels: tuple[int, ...] = (1, 4, 16), delay: float = 0.2,
          rate_429: float = 0.3, seed: int = 0) -> dict[str, Any]:
    items = synthetic_mentions(m, seed)
    # the embedder loads and encodes every text once, outside the timed runs
    settings = {"llm_backoff": 0.1, "embedding_cache": "none"}
    with FakeOpenAI(delay=0.0) as srv:
        measure(items[:2], srv.base_url, 1, **settings)
    rows = []
    for n in levels:
        with FakeOpenAI(delay=delay) as srv:
            row = measure(items, srv.base_url, n, **settings)
            row["max_in_flight"] = srv.max_in_flight
        rows.append(row)
    base = rows[0]["mentions_per_s"] or 0
    for r in rows:
        r["speedup"] = round(r["mentions_per_s"] / base, 2) if base and r["mentions_per_s"] else None
    top = max(levels)
    with FakeOpenAI(delay=delay, rate_429=rate_429, retry_after="1", seed=seed) as srv:
        storm = measure(items, srv.base_url, top, **settings)
        storm.update(rate_429=rate_429, answered_429=srv.refused, chat_calls=srv.calls,
                     max_in_flight=srv.max_in_flight)
    return {"m": m, "delay_s": delay, "rows": rows, "with_429": storm}


def table(result: dict[str, Any]) -> str:
    lines = ["| N in flight | mentions/s | speedup | LLM calls | max in flight (server) | lost |",
             "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['concurrency']} | {r['mentions_per_s']} | {r['speedup']}× | "
                     f"{r['llm_calls']} | {r['max_in_flight']} | {r['lost']} |")
    s = result["with_429"]
    lines.append(f"| {s['concurrency']}, {s['rate_429']:.0%} of calls 429 | {s['mentions_per_s']} | "
                 f"| {s['llm_calls']} ({s['answered_429']} of {s['chat_calls']} HTTP calls 429) | "
                 f"{s['max_in_flight']} | {s['lost']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m i2cr.eval.concurrency", description=(
        "Mentions/s with N mentions in flight against a local fake OpenAI server that waits "
        "DELAY per call, and the mentions lost when 30%% of calls are answered 429."))
    p.add_argument("-m", type=int, default=96, help="synthetic mentions (default 96)")
    p.add_argument("--levels", default="1,4,16", help="concurrency levels (default 1,4,16)")
    p.add_argument("--delay", type=float, default=0.2, help="seconds per LLM call (default 0.2)")
    p.add_argument("--rate-429", type=float, default=0.3, help="share of calls answered 429")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = p.parse_args(argv)
    levels = tuple(int(x) for x in args.levels.split(",") if x.strip())
    if args.m < 1 or not levels or min(levels) < 1:
        p.error("-m and every level must be 1 or more")
    res = bench(args.m, levels, args.delay, args.rate_429)
    print(json.dumps(res, indent=2) if args.json else table(res))
    return 0 if res["with_429"]["lost"] == 0 and all(r["lost"] == 0 for r in res["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
