"""A local HTTP server on 127.0.0.1 that answers like Azure AI Vision's
``POST /computervision/imageanalysis:analyze`` (Image Analysis 4.0, api-version 2023-10-01).

Each request takes the next step of a script: ``"ok"``, ``("status", code[, retry_after])`` or
``("sleep", seconds)``; when the script runs out, the last step repeats. Requests are recorded.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

OK_BODY = {
    "modelVersion": "2023-10-01",
    "metadata": {"width": 520, "height": 140},
    "captionResult": {"text": "a white sign with black text", "confidence": 0.82},
    "denseCaptionsResult": {"values": [
        {"text": "a white sign with black text", "confidence": 0.8,
         "boundingBox": {"x": 0, "y": 0, "w": 520, "h": 140}},
        {"text": "black letters on a white background", "confidence": 0.7,
         "boundingBox": {"x": 20, "y": 40, "w": 400, "h": 50}}]},
    "tagsResult": {"values": [{"name": "text", "confidence": 0.99},
                              {"name": "font", "confidence": 0.93},
                              {"name": "sign", "confidence": 0.71}]},
    "objectsResult": {"values": [
        {"boundingBox": {"x": 10, "y": 20, "w": 30, "h": 40},
         "tags": [{"name": "person", "confidence": 0.81}]}]},
    "readResult": {"blocks": [{"lines": [
        {"text": "CHICAGO BULLS 23",
         "boundingPolygon": [{"x": 20, "y": 40}, {"x": 400, "y": 40}, {"x": 400, "y": 90},
                             {"x": 20, "y": 90}],
         "words": [{"text": "CHICAGO", "confidence": 0.99,
                    "boundingPolygon": [{"x": 20, "y": 40}, {"x": 150, "y": 40},
                                        {"x": 150, "y": 90}, {"x": 20, "y": 90}]}]}]}]},
}


class FakeAzureVision:
    def __init__(self, script=("ok",)):
        self.script = list(script)
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n)
                u = urlparse(self.path)
                outer.requests.append({"path": u.path, "query": parse_qs(u.query),
                                       "headers": dict(self.headers), "body_len": len(body),
                                       "body": body[:200], "t": time.monotonic()})
                step = outer.script.pop(0) if len(outer.script) > 1 else outer.script[0]
                if step == "ok":
                    return self._send(200, OK_BODY)
                kind, *rest = step
                if kind == "sleep":
                    time.sleep(rest[0])
                    try:
                        return self._send(200, OK_BODY)
                    except OSError:
                        return None
                code = rest[0]
                headers = {"Retry-After": str(rest[1])} if len(rest) > 1 else {}
                msg = {401: "Access denied due to invalid subscription key or wrong API endpoint.",
                       429: "Rate limit is exceeded.", 500: "Internal server error."}.get(code, "error")
                return self._send(code, {"error": {"code": str(code), "message": msg}}, headers)

            def _send(self, code, obj, headers=None):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
