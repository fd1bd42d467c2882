"""The real azure-ai-vision-imageanalysis SDK over real HTTP, against a local server on 127.0.0.1
that answers in Azure's REST format."""

from __future__ import annotations

import logging

import pytest
from azure_server import FakeAzureVision
from conftest import render_text_image
from fakes import ScriptedChatModel, tool_call
from langchain_core.messages import AIMessage

from i2cr.graph import Context, graph
from i2cr.tools import ToolInput, azure as az
from i2cr.tools.cache import ClueCache
from i2cr.tools.factory import build_tools

KEY = "sk-vision-7f3e9a1c-secret"


@pytest.fixture
def img(tmp_path):
    return str(render_text_image(tmp_path / "sign.png", "CHICAGO BULLS 23"))


def vision(srv, cache=None, **kw):
    opts = dict(timeout=5.0, retries=2, backoff=0.01)
    opts.update(kw)
    return az.AzureVision(srv.endpoint, KEY, cache=cache, **opts)


def run_tools(v, image):
    out = {}
    for name in ("ocr", "caption", "dense_captions", "tags", "objects"):
        out[name] = az.azure_tool(name, v).run(ToolInput(image))
    return out


def test_success_one_request_per_image_and_cache_hit(img, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    cache = ClueCache(tmp_path / "clues")
    with FakeAzureVision(["ok"]) as srv:
        res = run_tools(vision(srv, cache), img)
        assert len(srv.requests) == 1  # five tools, one HTTP call
        req = srv.requests[0]
        assert req["path"] == "/computervision/imageanalysis:analyze"
        assert req["query"]["api-version"] == ["2023-10-01"]
        assert set(req["query"]["features"][0].split(",")) == {
            "read", "caption", "denseCaptions", "tags", "objects"}
        assert req["headers"]["Ocp-Apim-Subscription-Key"] == KEY
        assert req["body"].startswith(b"\x89PNG")  # local files are uploaded (analyze)
        assert res["ocr"].text == "CHICAGO BULLS 23"
        assert res["caption"].text == "a white sign with black text"
        assert res["dense_captions"].text.startswith("a white sign with black text; black letters")
        assert res["tags"].text == "text; font; sign"
        assert res["objects"].text == "person (0.81)"
        assert all(r.ok and r.backend == "azure" for r in res.values())
        # a second run (new client, same disk cache) makes no Azure call
        again = run_tools(vision(srv, ClueCache(tmp_path / "clues")), img)
        assert len(srv.requests) == 1
        assert again["ocr"].text == "CHICAGO BULLS 23"
    assert KEY not in caplog.text and KEY not in repr(res) and KEY not in repr(vision(srv))


def test_urls_go_through_analyze_from_url():
    with FakeAzureVision(["ok"]) as srv:
        r = az.azure_tool("caption", vision(srv)).run(ToolInput("https://img.example/a.jpg"))
        assert r.ok and srv.requests[0]["body"].startswith(b'{"url"')


def test_429_then_success_honours_retry_after(img):
    with FakeAzureVision([("status", 429, 1), "ok"]) as srv:
        r = az.azure_tool("ocr", vision(srv)).run(ToolInput(img))
        assert r.ok and r.text == "CHICAGO BULLS 23"
        assert len(srv.requests) == 2
        assert srv.requests[1]["t"] - srv.requests[0]["t"] >= 0.9  # waited Retry-After: 1


def test_persistent_500_becomes_a_failed_observation(img):
    with FakeAzureVision([("status", 500)]) as srv:
        r = az.azure_tool("caption", vision(srv, retries=2)).run(ToolInput(img))
        assert not r.ok and "500" in r.error and KEY not in r.error
        assert len(srv.requests) == 3  # first try + 2 retries


def test_401_is_not_retried_and_leaks_no_key(img):
    with FakeAzureVision([("status", 401)]) as srv:
        r = az.azure_tool("tags", vision(srv)).run(ToolInput(img))
        assert not r.ok and "401" in r.error and KEY not in r.error
        assert len(srv.requests) == 1


def test_timeout_becomes_a_failed_observation(img):
    with FakeAzureVision([("sleep", 3)]) as srv:
        r = az.azure_tool("ocr", vision(srv, timeout=0.5, retries=1)).run(ToolInput(img))
        assert not r.ok and KEY not in r.error
        assert "Azure AI Vision failed after 2 tries" in r.error
        assert len(srv.requests) == 2


def test_too_small_image_is_refused_before_any_call(tmp_path):
    from PIL import Image

    p = tmp_path / "tiny.png"
    Image.new("RGB", (40, 30), "white").save(p)
    with FakeAzureVision(["ok"]) as srv:
        r = az.azure_tool("ocr", vision(srv)).run(ToolInput(str(p)))
        assert not r.ok and "40x30" in r.error and "at least 50x50" in r.error
        assert srv.requests == []


def test_oversized_image_is_shrunk_under_the_limit(monkeypatch, tmp_path):
    import io
    import os

    from PIL import Image

    monkeypatch.setattr(az, "AZURE_MAX_BYTES", 20_000)
    buf = io.BytesIO()
    Image.frombytes("RGB", (400, 400), os.urandom(400 * 400 * 3)).save(buf, format="PNG")
    data = buf.getvalue()
    assert len(data) > 20_000
    out = az.fit_for_azure(data, (400, 400), "noise.png")
    assert len(out) <= 20_000
    assert min(Image.open(io.BytesIO(out)).size) >= 50


def test_failed_azure_tool_lets_vif_go_on_and_the_mention_is_linked(img, tmp_path, monkeypatch):
    from conftest import JORDAN_CANDIDATES

    monkeypatch.setenv("VISION_KEY", KEY)
    with FakeAzureVision([("status", 500)]) as srv:
        fake = ScriptedChatModel(script=[
            "Answer: Michael Jordan",
            AIMessage("", tool_calls=[tool_call("ocr")]),  # fails (500) -> next tool, no TES round
            AIMessage("", tool_calls=[tool_call("caption")]),
        ])
        ctx = Context(chat_model=fake, iav_mode="caption", icr_threshold=-1, caption_threshold=1e9,
                      tool_backend="ocr=azure,caption=precomputed", tools="ocr,caption",
                      vision_endpoint=srv.endpoint, vision_retries=0, vision_backoff=0.01,
                      clue_cache=str(tmp_path / "c"))
        out = graph.invoke({"mention": "Jordan", "context": "Jordan dunks.", "image": img,
                            "candidates": JORDAN_CANDIDATES,
                            "precomputed_clues": {"Caption": "a basketball player dunking"}},
                           context=ctx)
    calls = [e for e in out["events"] if e["type"] == "tool_call"]
    assert [c["tool"] for c in calls] == ["ocr", "caption"]
    assert calls[0]["ok"] is False and "500" in calls[0]["error"]
    assert out["answer"] == "Michael Jordan" and out["path"][-1] == "final"
    assert KEY not in str(out)


def test_azure_backend_is_chosen_per_tool(tmp_path, monkeypatch):
    monkeypatch.setenv("VISION_ENDPOINT", "http://127.0.0.1:9")
    tools = build_tools(Context(tool_backend="ocr=tesseract,caption=azure,tags=azure,"
                                "dense_captions=precomputed", clue_cache=str(tmp_path / "c")))
    assert {n: t.backend for n, t in tools.items()} == {
        "ocr": "tesseract", "caption": "azure", "dense_captions": "precomputed", "tags": "azure"}
