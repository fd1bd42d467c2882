"""The embedded llama.cpp server leaves no i2cr-llama-*.log in the temp folder, whether it stops
cleanly or fails to start (its log's end is then in the error). A stand-in ``llama_cpp.server``
module (a tiny HTTP server answering /v1/models) keeps the test free of the real model."""

from __future__ import annotations

import tempfile
import textwrap

import pytest

from i2cr import llm

FAKE_SERVER = textwrap.dedent('''
    import argparse, json, sys
    from http.server import BaseHTTPRequestHandler, HTTPServer

    p = argparse.ArgumentParser()
    p.add_argument("--model")
    p.add_argument("--port", type=int)
    args, _ = p.parse_known_args()
    print("fake llama.cpp server starting", flush=True)
    if open(args.model).read().startswith("BROKEN"):
        print("error: model file is broken; I2CR_LLM_API_KEY=" + "sk-" + "x" * 20, flush=True)
        sys.exit(3)

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            body = json.dumps({"object": "list", "data": []}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    HTTPServer(("127.0.0.1", args.port), H).serve_forever()
''')


@pytest.fixture
def fake_llama(tmp_path, monkeypatch):
    pkg = tmp_path / "fakepkgs"
    (pkg / "llama_cpp" / "server").mkdir(parents=True)
    (pkg / "llama_cpp" / "__init__.py").write_text("")
    (pkg / "llama_cpp" / "server" / "__init__.py").write_text("")
    (pkg / "llama_cpp" / "server" / "__main__.py").write_text(FAKE_SERVER)
    monkeypatch.syspath_prepend(str(pkg))       # found by this process's find_spec
    monkeypatch.setenv("PYTHONPATH", str(pkg))  # run by the child
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp


def test_log_file_is_gone_after_the_server_stops(fake_llama, tmp_path):
    model = tmp_path / "m.gguf"
    model.write_text("GGUF stand-in")
    srv = llm.EmbeddedServer(model, n_threads=1).start()
    try:
        assert srv.proc is not None and srv.proc.poll() is None
    finally:
        srv.stop()
    assert srv.proc is None
    assert list(fake_llama.glob("i2cr-llama-*")) == []
    assert list(fake_llama.iterdir()) == []


def test_a_server_that_fails_to_start_leaves_no_log_and_says_why(fake_llama, tmp_path):
    model = tmp_path / "broken.gguf"
    model.write_text("BROKEN")
    with pytest.raises(llm.BackendError) as err:
        llm.EmbeddedServer(model, n_threads=1).start()
    msg = str(err.value)
    assert "exited with code 3" in msg and "model file is broken" in msg
    assert "sk-xxxxxxxx" not in msg  # the log's end is scrubbed like any error text
    assert list(fake_llama.iterdir()) == []
