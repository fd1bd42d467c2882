"""Plug-in tools, local CLIP zero-shot tools and the clue cache."""

from __future__ import annotations

import multiprocessing as mp
import shutil

import pytest
from conftest import CLUES, JORDAN_CANDIDATES, render_text_image
from fakes import ScriptedChatModel, tool_call
from langchain_core.messages import AIMessage

from i2cr.graph import Context, graph, resources
from i2cr.tools import ToolInput, load_entry_points, register_tool, registered_tools, unregister_tool
from i2cr.tools.cache import ClueCache
from i2cr.tools.factory import build_tools


def test_entry_point_plugin_is_installed_and_loaded():
    load_entry_points(force=True)
    tool = registered_tools()["objects"]  # from this package's own entry point
    assert tool.backend == "plugin:objects"
    inp = ToolInput(None, {"Objects": [{"object_name": "person", "confidence": 0.79}]})
    assert tool.available(inp) and tool.run(inp).text == "person (0.79)"
    assert not tool.available(ToolInput(None, {}, Context()))  # no clue, no Azure: not offered


def test_registered_plugin_is_offered_to_the_llm_and_runs_in_the_graph(settings, image_file):
    seen = []

    @register_tool(name="jersey_number", description="Read the number on a player's jersey.")
    def jersey_number(inp):
        seen.append(inp.image().sha256)  # the image comes from the graph state
        return "number 23 of the Chicago Bulls"

    try:
        fake = ScriptedChatModel(script=[
            "Answer: Jordan Peele",
            AIMessage("", tool_calls=[tool_call("jersey_number")]),
            "Answer: Michael Jordan",
        ])
        ctx = settings(fake, icr_threshold=-1, iav_threshold=1e9, max_vif_rounds=1,
                       tools="ocr,caption,jersey_number")
        out = graph.invoke({"mention": "Jordan", "context": "Jordan dunks.", "image": image_file,
                            "candidates": JORDAN_CANDIDATES, "precomputed_clues": dict(CLUES)},
                           context=ctx)
    finally:
        unregister_tool("jersey_number")
    assert fake.calls[1]["tools"] == ["ocr", "caption", "jersey_number"]
    assert out["tools_used"] == ["jersey_number"] and len(seen) == 1
    assert "number 23 of the Chicago Bulls" in fake.calls[2]["messages"][-1]


def test_clip_zero_shot_tools_need_clip_weights(tiny_clip_config, image_file):
    with_clip = Context(tool_backend="caption=clip,tags=clip", clip_model="i2cr-tiny-clip",
                        clip_pretrained="", clip_model_config=tiny_clip_config, clue_cache="none")
    tools = resources.tools(with_clip)
    inp = ToolInput(image_file, None, with_clip)
    assert tools["tags"].available(inp) and tools["caption"].available(inp)
    tags = tools["tags"].run(inp).text.split("; ")
    assert len(tags) == 8 and len(set(tags)) == 8
    assert tools["caption"].run(inp).text.startswith("a photo of ")
    no_clip = Context(tool_backend="caption=clip,tags=clip", clue_cache="none")  # bigG not on disk
    tools = resources.tools(no_clip)
    assert not tools["tags"].available(ToolInput(image_file, None, no_clip))
    res = tools["tags"].run(ToolInput(image_file, None, no_clip))
    assert not res.ok and "CLIP not configured" in res.error


@pytest.mark.skipif(shutil.which("tesseract") is None, reason="tesseract not installed")
def test_live_clues_are_cached_on_disk(tmp_path, monkeypatch):
    img = str(render_text_image(tmp_path / "t.png", "CACHED TEXT"))
    ctx = Context(tool_backend="ocr=tesseract", clue_cache=str(tmp_path / "cache"))
    ocr = build_tools(ctx)["ocr"]
    assert ocr.run(ToolInput(img, None, ctx)).text == "CACHED TEXT"
    import pytesseract

    monkeypatch.setattr(pytesseract, "image_to_string",
                        lambda *a, **k: pytest.fail("tesseract ran again"))
    assert build_tools(ctx)["ocr"].run(ToolInput(img, None, ctx)).text == "CACHED TEXT"


def _writer(directory, start, n):
    c = ClueCache(directory)
    for i in range(start, start + n):
        c.set(f"k{i}", f"v{i}")
        assert c.get(f"k{i}") == f"v{i}"


def test_clue_cache_is_safe_across_processes(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), i * 100, 100)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    c = ClueCache(tmp_path)
    assert len(c) == 400 and c.get("k399") == "v399"
