"""The custom routes LangGraph's server mounts (``langgraph.json`` ``http.app``).

- ``POST /link``: one mention (an object with ``mention``, ``context``, ``candidates``, ``image``,
  ``clues``, ``allow_nil``, ``id``) or a batch (``{"mentions": [...]}``), with optional
  ``settings`` (run settings only, see :mod:`i2cr.serve.config`) and ``trace`` (keep each
  record's events and trace). The answer is the JSON result record of ``i2cr link --json`` (a
  batch: ``{"results": [...], "mentions": n, "errors": e}``; a bad record in a batch becomes an
  error record naming it, the rest still runs). Without candidates the server's KB
  (``I2CR_KB``) generates them.
- ``GET /health``: ``ok``, whether auth and a KB are on, how many mentions were linked, the
  process's resident memory, and the CLIP loads that failed (``clip_unavailable``: model, why,
  seconds until a request tries again; empty when none).
- ``POST /trace-card``: the per-mention trace card (as on ``i2cr trace --html``) of a run the
  playground streamed from the LangGraph API.
- ``GET /``: the playground page (static; it holds no data and asks for the key).
- ``/ui/...``: 404 (LangGraph's generative-UI route; this server declares no UI components).

With ``I2CR_API_KEYS`` set every route but the static page needs a key (the same check as the
LangGraph API's, :func:`i2cr.serve.keys.verify`); the check comes before the body is read.
Request bodies are capped (``I2CR_MAX_BODY_BYTES``, for the LangGraph API too); a bad request is
a 4xx with a one-line ``detail``, never a traceback. Starting the app installs the server's image
policy (:class:`i2cr.images.ImagePolicy`) for the process, and stopping it restores the old one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from i2cr.data import (
    DataError,
    MadeUpId,
    Mention,
    documents_of,
    own_ids_first,
    scattered_message,
)
from i2cr.eval.metrics import linked_count
from i2cr.eval.runner import check_items, run_one
from i2cr.images import using_policy
from i2cr.linker import result_record
from i2cr.redact import error_text
from i2cr.serve.config import DEFAULT_BODY_TIMEOUT_S, BadRequest, ServerConfig
from i2cr.serve.inputs import mention_from, record_id
from i2cr.serve.keys import UNAUTHORIZED, verify
from i2cr.serve.playground import page
from i2cr.trace import TraceBuilder
from i2cr.trace_page import mention_card

log = logging.getLogger("i2cr.serve")
MAX_TRACE_PARTS = 5000


class BodyCap:
    """ASGI middleware: a request body over ``cap`` bytes is refused with 413 before the route
    sees it (by its Content-Length, or as it streams in); a body whose next piece takes more than
    ``timeout`` seconds to arrive is cut off with 408 (a client that stalls mid-body would
    otherwise hold its request, and a worker, open for ever). Once the body is complete the route
    may wait on ``receive`` as long as it likes (a stream waits there for the disconnect)."""

    def __init__(self, app: ASGIApp, cap: int, timeout: float = DEFAULT_BODY_TIMEOUT_S):
        self.app, self.cap, self.timeout = app, cap, timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_big = _json(413, f"request body is over {self.cap} bytes (I2CR_MAX_BODY_BYTES)")
        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.cap:
            await too_big(scope, receive, send)
            return
        seen = 0
        over = False
        stalled = False
        body_done = False
        started = False

        async def capped_receive() -> Message:
            nonlocal seen, over, stalled, body_done
            if body_done or over or stalled:
                msg = await receive()
            else:
                try:
                    msg = await asyncio.wait_for(receive(), self.timeout)
                except asyncio.TimeoutError:
                    stalled = True
                    return {"type": "http.disconnect"}  # the route stops reading: no work done
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                body_done = not msg.get("more_body", False)
                if seen > self.cap:
                    over = True
                    return {"type": "http.disconnect"}
            return msg

        async def tracked_send(msg: Message) -> None:
            nonlocal started
            if (over or stalled) and not started:
                return  # the route's answer to a cut-off body is replaced by the 413 / 408
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, capped_receive, tracked_send)
        except ClientDisconnect:
            if not (over or stalled):
                raise
        if over and not started:
            await too_big(scope, receive, send)
        elif stalled and not started:
            await _json(408, f"request body stalled: nothing for {self.timeout:g} s "
                             "(I2CR_BODY_TIMEOUT_S)")(scope, receive, send)


def _json(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


def _rss_mb() -> float | None:
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
        return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except (OSError, ValueError, IndexError):
        return None


async def _read_json(request: Request, cap: int) -> Any:
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > cap:
                raise BadRequest(f"request body is over {cap} bytes (I2CR_MAX_BODY_BYTES)", 413)
    except ClientDisconnect:
        raise BadRequest(f"request body is over {cap} bytes (I2CR_MAX_BODY_BYTES)", 413) from None
    if not body.strip():
        raise BadRequest("request body is empty; send a JSON object")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise BadRequest(f"request body is not JSON ({type(e).__name__}: "
                         f"{str(e)[:120]})") from None


class Served:
    """The app's state: its configuration and what it has done."""

    def __init__(self, config: ServerConfig):
        self.config = config
        self.linked = 0
        self.errors = 0
        self._lock = threading.Lock()

    def authorized(self, request: Request) -> bool:
        return verify(request.headers, self.config.api_keys) is not None

    def link(self, body: Any) -> tuple[dict[str, Any], int]:
        """The /link answer and its status (runs in a worker thread)."""
        if not isinstance(body, dict):
            raise BadRequest(f"request body must be a JSON object, not {type(body).__name__}")
        settings = self.config.run_settings(body.get("settings"))
        keep_trace = bool(body.get("trace"))
        kb = bool(settings.kb)
        scattered = 0  # batch records not with their document (data.documents_of)
        if "mentions" in body:
            raws = body["mentions"]
            if not isinstance(raws, list) or not raws:
                raise BadRequest("'mentions' must be a non-empty list of mention objects")
            if len(raws) > self.config.max_batch:
                raise BadRequest(f"a batch holds at most {self.config.max_batch} mentions "
                                 f"(I2CR_MAX_BATCH), not {len(raws)}", 413)
            items: list[Mention | DataError] = []

            def pairs() -> Iterator[tuple[str, Any]]:  # a record without an id: its place
                return ((record_id(r, MadeUpId(i)), r) for i, r in enumerate(raws))

            # mentions of one document see each other, by the rule of a file (i2cr link)
            for rid, raw, apart in documents_of(own_ids_first(pairs(), pairs)):
                scattered += apart
                try:
                    items.append(mention_from(raw, rid, kb=kb))
                except DataError as e:
                    items.append(e)
            items = check_items(items, warn=None)
            single = False
        else:
            try:
                items = [mention_from(body, "0", kb=kb)]
            except DataError as e:
                raise BadRequest(str(e)) from None
            single = True
        recs = []
        for it in items:
            rec = run_one(it, settings)
            if not keep_trace:
                rec = {k: v for k, v in rec.items() if k not in ("events", "trace")}
            if isinstance(rec.get("image"), str) and rec["image"].startswith("data:"):
                head = rec["image"].partition(",")[0]  # not the caller's bytes echoed back
                rec["image"] = f"{head},… ({len(rec['image'])} characters)"
            recs.append(rec)
        errors = sum(r.get("error") is not None for r in recs)
        with self._lock:
            # an error record is not a mention linked (metrics.linked_count): a mention that
            # failed inside the graph is counted once, among the errors
            self.linked += linked_count(len(recs), errors)
            self.errors += errors
        if single:
            return recs[0], 200
        out = {"results": recs, "mentions": len(recs), "errors": errors}
        if scattered:  # what i2cr link warns of
            out["warnings"] = [scattered_message(scattered)]
        return out, 200

    def trace_card(self, body: Any) -> dict[str, Any]:
        """The result record and trace card of a streamed run (runs in a worker thread)."""
        if not isinstance(body, dict) or not isinstance(body.get("input"), dict):
            raise BadRequest("send {'input': the run's input, 'parts': its stream parts}")
        inp, parts = body["input"], body.get("parts")
        if not isinstance(parts, list) or len(parts) > MAX_TRACE_PARTS:
            raise BadRequest(f"'parts' must be a list of at most {MAX_TRACE_PARTS} stream parts")
        try:
            m = mention_from({**inp, "id": inp.get("sample_id") or "playground"}, "playground",
                             kb=True, check_image=False)
        except DataError as e:
            raise BadRequest(str(e)) from None
        tb = TraceBuilder(m.to_input())
        elapsed = body.get("elapsed_s")
        try:
            for p in parts:
                if not isinstance(p, dict) or not isinstance(p.get("data"), dict):
                    raise BadRequest("each part must be {'event': 'updates', 'data': {...}}")
                if p.get("event") == "updates":  # the events ride in them (other modes: ignored)
                    for node, upd in p["data"].items():
                        tb.add_update(str(node), upd if isinstance(upd, dict) else {})
            state, trace = tb.finish()
            rec = result_record(m, state,
                                float(elapsed) if isinstance(elapsed, (int, float)) else 0.0)
            rec["image"], rec["trace"] = m.image_ref(), trace
            card = mention_card(rec)
        except BadRequest:
            raise
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            raise BadRequest(f"'parts' are not the stream of an i2cr run ({type(e).__name__})"
                             ) from None
        rec.pop("trace")
        return {"record": rec,
                "html": card.replace("<details class='mention", "<details open class='mention", 1)}

    def health(self) -> dict[str, Any]:
        s = self.config.settings
        return {"ok": True, "auth": bool(self.config.api_keys), "kb": bool(s.kb),
                "linked": self.linked, "errors": self.errors, "rss_mb": _rss_mb(),
                "clip_unavailable": s.resources.clip_failures()}


Handler = Callable[[Request], Awaitable[Response]]


def _guarded(served: Served, fn: Callable[[Request], Awaitable[Response]]) -> Handler:
    """The route with the key check first and every failure as a one-line 4xx/5xx."""

    async def route(request: Request) -> Response:
        if not served.authorized(request):
            return _json(401, UNAUTHORIZED)
        try:
            return await fn(request)
        except BadRequest as e:
            return _json(e.status, str(e))
        except Exception as e:  # noqa: BLE001 - a bug must not answer with a traceback
            log.error("i2cr.serve: %s failed: %s", request.url.path, error_text(e))
            return _json(500, f"internal error ({type(e).__name__}); the server log has it")

    return route


def create_app(config: ServerConfig | None = None) -> Starlette:
    """The Starlette app of the custom routes, for ``config`` (default: the environment)."""
    cfg = config or ServerConfig.from_env()
    served = Served(cfg)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if cfg.settings.kb:  # a missing or mismatched KB stops the server at start, not per call
            cfg.settings.resources.kb(cfg.settings)
        with using_policy(cfg.image_policy()):
            yield

    async def link(request: Request) -> Response:
        body = await _read_json(request, cfg.max_body_bytes)
        out, status = await run_in_threadpool(served.link, body)
        return JSONResponse(out, status_code=status)

    async def trace_card(request: Request) -> Response:
        body = await _read_json(request, cfg.max_body_bytes)
        return JSONResponse(await run_in_threadpool(served.trace_card, body))

    async def health(request: Request) -> Response:
        return JSONResponse(served.health())

    async def playground(request: Request) -> Response:
        html, csp = page()
        return HTMLResponse(html, headers={"Content-Security-Policy": csp,
                                           "Referrer-Policy": "no-referrer",
                                           "X-Content-Type-Options": "nosniff"})

    async def no_ui(request: Request) -> Response:
        return _json(404, "this server has no UI components (langgraph.json declares none)")

    app = Starlette(routes=[
        Route("/", playground, methods=["GET"]),
        # LangGraph's generative-UI route answers a 500 with a traceback in its log when no UI
        # is declared; the custom routes come first, so this one answers instead
        Route("/ui/{rest:path}", _guarded(served, no_ui), methods=["GET", "POST"]),
        Route("/health", _guarded(served, health), methods=["GET"]),
        Route("/link", _guarded(served, link), methods=["POST"]),
        Route("/trace-card", _guarded(served, trace_card), methods=["POST"]),
    ], middleware=[Middleware(BodyCap, cap=cfg.max_body_bytes,
                                                       timeout=cfg.body_timeout_s)], lifespan=lifespan)
    app.state.served = served
    return app


app = create_app()
