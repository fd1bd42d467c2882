"""No secret reaches output: one scrubbing place (i2cr.redact) for every error text, and an
OpenAI-compatible server that echoes the request's Authorization header cannot put the key into
results, stdout/stderr, --stream output or the SQLite checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import EXAMPLES, JORDAN_CANDIDATES, ROOT

from i2cr import redact
from i2cr.linker import error_record

KEY = "sk-compat-TOPSECRET-4f9a2c7e81d3"


def test_scrub_masks_configured_keys_token_settings_and_bearer_shapes(monkeypatch):
    monkeypatch.setenv("I2CR_LLM_API_KEY", "llm-key-123456")
    monkeypatch.setenv("VISION_KEY", "vision-key-abcdef")
    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok-0123456789")
    monkeypatch.setenv("SOME_PASSWORD", "hunter2hunter2")
    monkeypatch.setenv("DEBUG_KEY", "1")  # too short to be a secret: left alone
    text = ("got llm-key-123456 and vision-key-abcdef; tok-0123456789; hunter2hunter2; "
            "Authorization: Bearer unknown-token-xyz; api-key: abcdef12345; sk-abcdefghijklmnop12; "
            "DEBUG_KEY=1")
    out = redact.scrub(text)
    for s in ("llm-key-123456", "vision-key-abcdef", "tok-0123456789", "hunter2hunter2",
              "unknown-token-xyz", "abcdef12345", "sk-abcdefghijklmnop12"):
        assert s not in out
    assert "Bearer ***" in out and "DEBUG_KEY=1" in out and out.startswith("got *** and ***")
    assert redact.scrub(None) is None and redact.scrub("") == ""


def test_a_registered_key_is_scrubbed_and_exceptions_keep_their_type(monkeypatch):
    redact.register("code-given-key-777")
    err = ValueError("server said: code-given-key-777 is wrong")
    same = redact.scrub_exception(err)
    assert same is err and "code-given-key-777" not in str(err) and "***" in str(err)
    assert "code-given-key-777" not in error_record("r1", ValueError("bad code-given-key-777"))["error"]
    clean = ValueError("nothing to hide")
    assert redact.scrub_exception(clean) is clean and str(clean) == "nothing to hide"


def test_error_record_scrubs_the_error_text(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-SECRET-123")
    rec = error_record("m1", RuntimeError("401: key sk-openai-SECRET-123 rejected"), "gold")
    assert "SECRET" not in rec["error"] and rec["error"].startswith("RuntimeError: 401: key ***")


def test_azure_scrubbing_goes_through_the_shared_place(monkeypatch):
    """Azure's own key and every other configured secret are scrubbed from its errors."""
    from i2cr.tools import azure

    monkeypatch.setenv("I2CR_LLM_API_KEY", "other-llm-secret-42")
    out = azure._scrub("HTTP 401: key azure-own-key-9 and other-llm-secret-42, Bearer abcdefgh",
                       "azure-own-key-9")
    assert "azure-own-key-9" not in out and "other-llm-secret-42" not in out
    assert "abcdefgh" not in out
    # a key given to the client in code is scrubbed everywhere, not only by the client
    monkeypatch.setenv("VISION_ENDPOINT", "http://127.0.0.1:9")
    azure.AzureVision(key="explicit-vision-key-31")
    assert "explicit-vision-key-31" not in redact.scrub("echo explicit-vision-key-31")


class EchoingServer:
    """An OpenAI-compatible server that fails every linking prompt with an error body echoing
    the request's Authorization header (alternately 500 and 400); anything else gets a reply
    that echoes it."""

    def __init__(self):
        self.seen_keys: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, code, body):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send(200, {"object": "list", "data": [{"id": "m", "object": "model"}]})

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n)
                auth = self.headers.get("Authorization", "")
                outer.seen_keys.append(auth)
                if b"Candidates" not in body:  # not a linking prompt (e.g. a backend check): a
                    # reply, which echoes the key too
                    self._send(200, {"id": "c", "object": "chat.completion", "created": 0,
                                     "model": "m", "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": f"ok ({auth})"}}]})
                    return
                code = 500 if len(outer.seen_keys) % 2 else 400
                self._send(code, {"error": {"message": f"bad request; you sent Authorization: {auth}",
                                            "type": "invalid_request_error", "echo": auth}})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_chat_model_errors_and_replies_come_scrubbed(monkeypatch):
    from langchain_core.messages import HumanMessage

    from i2cr.llm import load_chat_model

    monkeypatch.setenv("I2CR_LLM_API_KEY", KEY)
    with EchoingServer() as srv:
        chat = load_chat_model(f"openai-compat:m@{srv.url}", max_tokens=8)
        reply = chat.invoke([HumanMessage("hello")])
        with pytest.raises(Exception) as err:
            chat.invoke([HumanMessage("Candidates: a, b")])
    assert srv.seen_keys and KEY in srv.seen_keys[0]
    assert KEY not in reply.content and reply.content == "ok (Bearer ***)"
    assert "Error" in type(err.value).__name__ and type(err.value).__name__ != "ScrubbedError"
    assert KEY not in str(err.value) and "Bearer ***" in str(err.value)


def test_an_echoing_llm_server_cannot_leak_the_key(tmp_path):
    out, db = tmp_path / "results.jsonl", tmp_path / "states.sqlite"
    env = {**os.environ, "I2CR_LLM_API_KEY": KEY, "PYTHONPATH": str(ROOT),
           "LANGSMITH_TRACING": "false"}
    with EchoingServer() as srv:
        p = subprocess.run(
            [sys.executable, "-m", "i2cr.cli", "link", str(EXAMPLES / "mentions.json"),
             "--llm", f"openai-compat:m@{srv.url}", "--limit", "2", "--out", str(out), "--print",
             "--events", "--stream", "--checkpoint", str(db), "--no-progress"],
            capture_output=True, text=True, env=env, timeout=900, cwd=tmp_path)
    # the key did go out, and the server did echo it back
    assert srv.seen_keys and all(KEY in k for k in srv.seen_keys)
    stored = out.read_text() if out.exists() else ""
    everything = {"results.jsonl": stored, "stdout": p.stdout, "stderr": p.stderr}
    for f in tmp_path.iterdir():
        if f.name.startswith("states.sqlite"):  # the database and its -wal / -shm files
            everything[f.name] = f.read_bytes().decode("latin-1")
    assert "states.sqlite" in everything
    for where, text in everything.items():
        assert KEY not in text, f"the key leaked into {where}"
        assert KEY[8:24] not in text, f"part of the key leaked into {where}"
    # the echoed error was recorded (scrubbed), not lost: the failure is visible
    assert "Bearer ***" in stored + p.stdout + p.stderr, p.stderr[-2000:]
    # --stream names the mention on each of its lines
    stream = [ln for ln in p.stderr.splitlines() if ln.startswith("[")]
    assert {ln.split("]")[0][1:] for ln in stream} >= {"jordan-nba", "obama-podium"}


def test_a_failing_tool_records_its_error_scrubbed(monkeypatch):
    """A plug-in tool that fails with a credential in its message: the tool_call event (and so
    the state and checkpoint) holds the scrubbed text."""
    from i2cr.tools.base import ToolInput, VisualTool

    monkeypatch.setenv("MY_VISION_TOKEN", "plugin-token-5551234")

    def fn(inp):
        raise RuntimeError("401 for token plugin-token-5551234 (Authorization: Bearer abcdefgh)")

    res = VisualTool(name="mine", description="d", fn=fn, needs_image=False).run(ToolInput(None))
    assert not res.ok and res.error.startswith("RuntimeError: 401 for token ***")
    assert "plugin-token-5551234" not in res.error and "abcdefgh" not in res.error


def test_a_chat_model_of_yours_failing_with_the_key_leaks_it_nowhere(settings, monkeypatch,
                                                                      capsys, image_file):
    """A chat model given in code (not built by i2cr) whose errors carry the key: the record,
    its trace and the --stream lines are scrubbed (by the trace builder and the printer)."""
    from fakes import ScriptedChatModel

    from i2cr.cli import _stream_printer
    from i2cr.data import Candidate, Mention
    from i2cr.linker import link_mention

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    boom = RuntimeError(f"Error code: 401 - invalid key, you sent Authorization: Bearer {KEY}")
    fake = ScriptedChatModel(script=[boom, boom])
    m = Mention(id="k1", mention="Jordan", context="Jordan dunks during the 1991 NBA Finals.",
                candidates=[Candidate(**c) for c in JORDAN_CANDIDATES])
    rec = link_mention(m, settings(fake, icr_threshold=-1, tes_retries=1),
                       on_event=_stream_printer(m.id))
    err = capsys.readouterr().err
    text = json.dumps(rec, default=str)
    assert "llm_error" in text and "Bearer ***" in text and "Bearer ***" in err
    assert KEY not in text and KEY not in err


def test_a_cause_line_keeps_urls_and_masks_local_paths_and_keys(monkeypatch):
    """What a closing line names once for many failed records (redact.cause_text)."""
    monkeypatch.setenv("I2CR_LLM_API_KEY", "cause-key-987654321")
    text = ("LLMCallFailed: HTTP 500 from http://127.0.0.1:8000/v1/chat/completions: crashed in "
            "/srv/app/serve.py (see ~/logs/x.log, ./run/y, C:\\app\\z.py) key cause-key-987654321"
            " for GET /models, HTTP 500/503, model org/name\nsecond line")
    assert redact.cause_text(text) == (
        "LLMCallFailed: HTTP 500 from http://127.0.0.1:8000/v1/chat/completions: crashed in "
        "<path> (see <path>, <path>, <path>) key *** for GET /models, HTTP 500/503, model org/name")
    assert len(redact.cause_text("x" * 1000)) == redact.MAX_CAUSE
