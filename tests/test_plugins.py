"""Plug-in tools as the README documents them: its own example code as entry-point plug-ins, a
broken plug-in named once while the rest still links, and a LangChain tool as a visual tool."""

from __future__ import annotations

import importlib.metadata as md
import re
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any

import pytest
from conftest import CLUES, JORDAN_CANDIDATES, ROOT
from fakes import ScriptedChatModel, tool_call
from langchain_core.messages import AIMessage
from langchain_core.tools import BaseTool, InjectedToolArg, tool
from langchain_core.utils.function_calling import convert_to_openai_tool
from PIL import Image

from i2cr.graph import Context, graph
from i2cr.tools import ToolInput, base, load_entry_points, register_tool, registered_tools
from i2cr.tools.base import PluginWarning, plugin_errors


def readme_plugin_section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("**Plug-in tools.**")
    return text[start:text.index("\n## ", start)]


def write_readme_plugins(root: Path) -> dict[str, str]:
    """Write the README's plug-in modules (the python blocks that start with ``# path.py``) under
    ``root`` and return its entry points (name -> "module:attr") from its toml block."""
    blocks = re.findall(r"```(\w+)\n(.*?)```", readme_plugin_section(), re.S)
    written = []
    for lang, code in blocks:
        first = code.splitlines()[0]
        m = re.fullmatch(r"# (\S+\.py)", first)
        if lang == "python" and m:
            path = root / m[1]
            path.parent.mkdir(parents=True, exist_ok=True)
            (path.parent / "__init__.py").touch()
            path.write_text(code, encoding="utf-8")
            written.append(m[1])
    eps = {}
    for lang, code in blocks:
        if lang == "toml":
            for line in code.splitlines():
                m = re.match(r'\s*([\w-]+)\s*=\s*"([\w.]+:[\w.]+)"', line)
                if m:
                    eps[m[1]] = m[2]
    assert written and eps, "the README's plug-in section lost its example"
    return eps


@pytest.fixture
def plugins(monkeypatch, tmp_path):
    """Simulated installed plug-ins: ``install(name=value, ...)`` adds entry points (to the real
    ones) and makes ``tmp_path`` importable; the registry and modules are restored afterwards."""
    saved = (dict(base._REGISTRY), base._ENTRY_POINTS_LOADED, dict(base._LOAD_ERRORS))
    modules = set(sys.modules)
    monkeypatch.syspath_prepend(str(tmp_path))
    real = md.entry_points

    def install(eps: dict[str, str]) -> None:
        extra = [md.EntryPoint(name=n, value=v, group=base.ENTRY_POINT_GROUP) for n, v in eps.items()]

        def entry_points(**kw):
            got = real(**kw)
            if kw.get("group") == base.ENTRY_POINT_GROUP:
                return md.EntryPoints([*got, *extra])
            return got

        monkeypatch.setattr(md, "entry_points", entry_points)
        base._ENTRY_POINTS_LOADED = False  # as in a fresh process

    yield install
    with base._LOCK:
        base._REGISTRY.clear()
        base._REGISTRY.update(saved[0])
    base._ENTRY_POINTS_LOADED = saved[1]
    base._LOAD_ERRORS.clear()
    base._LOAD_ERRORS.update(saved[2])
    for name in set(sys.modules) - modules:
        if name.split(".")[0] in {"mypkg", "brokenpkg"}:
            del sys.modules[name]


def retrieval_settings(tiny_clip_config, **kw) -> Context:
    """No LLM; IAV never passes, so VIF runs every offered tool in order."""
    base_kw = dict(tes_strategy="retrieval", clip_model="i2cr-tiny-clip", clip_pretrained="",
                   clip_model_config=tiny_clip_config, iav_mode="clip", iav_threshold=1e9,
                   clue_cache="none")
    return Context(**{**base_kw, **kw})


def jordan_input(image: str | None, **kw) -> dict[str, Any]:
    return {"mention": "Jordan", "context": "Jordan dunks during the 1991 NBA Finals.",
            "image": image, "candidates": JORDAN_CANDIDATES, **kw}


def test_readme_plugin_example_works_as_an_entry_point_plugin(plugins, tmp_path, tiny_clip_config,
                                                                image_file):
    eps = write_readme_plugins(tmp_path)
    plugins(eps)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginWarning)
        loaded = load_entry_points()
    assert set(eps) <= set(loaded) and plugin_errors() == {}
    tools = registered_tools()
    assert "objects" in tools  # the package's own plug-in is still there
    for name in eps:
        assert tools[name].name == name and tools[name].description

    ctx = retrieval_settings(tiny_clip_config, tools=",".join(eps))
    out = graph.invoke(jordan_input(image_file), context=ctx)
    assert out["answer"] == "Michael Jordan"
    assert out["tools_used"] == list(eps)
    got = {c["tool"]: c["text"] for c in out["clues"]}
    assert all(c["ok"] for c in out["clues"]), out["clues"]
    # the sign is black text on white, 520x140 pixels
    assert got["colour"] == "a black-and-white image of 520x140 pixels"
    assert got["brightness"] == "a bright image"

    red = tmp_path / "red.png"
    Image.new("RGB", (60, 50), (200, 10, 10)).save(red)
    assert tools["colour"].run(ToolInput(str(red))).text == "a colour image of 60x50 pixels"
    assert tools["brightness"].run(ToolInput(str(red))).text == "a dark image"
    assert not tools["colour"].available(ToolInput(None))  # no image: not offered


BROKEN = '''
def hello(inp):  # the README trap: a plain function, not a tool
    return "hello"
'''


def test_a_broken_plugin_names_itself_once_and_other_mentions_still_link(plugins, tmp_path,
                                                                        tiny_clip_config, image_file):
    eps = write_readme_plugins(tmp_path)
    (tmp_path / "brokenpkg").mkdir()
    (tmp_path / "brokenpkg" / "__init__.py").write_text(BROKEN)
    plugins({"hello": "brokenpkg:hello", "gone": "brokenpkg.nowhere:tool", **eps})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # settings validation already loads the plug-ins: the warnings come from there, once
        ctx = retrieval_settings(tiny_clip_config, tools="hello,gone,colour")
        outs = [graph.invoke(jordan_input(image_file, sample_id=str(i)), context=ctx)
                for i in range(3)]
        registered_tools()
    said = [str(w.message) for w in caught if issubclass(w.category, PluginWarning)]
    assert len(said) == 2, said  # once per broken plug-in, not once per mention
    hello = next(s for s in said if "'hello'" in s)
    assert "brokenpkg:hello" in hello and "@register_tool" in hello
    gone = next(s for s in said if "'gone'" in s)
    assert "brokenpkg.nowhere:tool" in gone and "ModuleNotFoundError" in gone
    assert set(plugin_errors()) == {"hello", "gone"}
    for out in outs:  # the other tools keep working
        assert out["answer"] == "Michael Jordan" and out["error"] is None
        assert out["tools_available"] == ["colour"] and out["tools_used"] == ["colour"]
    assert "colour" in registered_tools() and "objects" in registered_tools()


def test_a_langchain_tool_is_a_visual_tool_through_the_graph(plugins, settings, image_file):
    seen = []

    @tool
    def jersey(image: Annotated[Any, InjectedToolArg]) -> str:
        """Read the number on a player's jersey."""
        seen.append(image)
        return "number 23 of the Chicago Bulls"

    plugins({})
    vt = register_tool(jersey)
    offered = convert_to_openai_tool(vt.as_langchain_tool())["function"]
    assert offered["name"] == "jersey" and offered["description"] == jersey.description
    assert not offered["parameters"].get("properties")  # the LLM is never asked for the image
    fake = ScriptedChatModel(script=[
        "Answer: Jordan Peele",
        AIMessage("", tool_calls=[tool_call("jersey")]),
        "Answer: Michael Jordan",
    ])
    ctx = settings(fake, icr_threshold=-1, iav_threshold=1e9, max_vif_rounds=1,
                   tools="ocr,caption,jersey")
    out = graph.invoke(jordan_input(image_file, precomputed_clues=dict(CLUES)), context=ctx)
    assert fake.calls[1]["tools"] == ["ocr", "caption", "jersey"]
    assert out["tools_used"] == ["jersey"]
    assert out["clues"] == [{"tool": "jersey", "text": "number 23 of the Chicago Bulls", "ok": True}]
    assert len(seen) == 1 and isinstance(seen[0], Image.Image)
    assert seen[0].size == Image.open(image_file).size  # the graph's image, not an LLM argument
    assert "number 23 of the Chicago Bulls" in fake.calls[2]["messages"][-1]
    # without an image it is not offered
    out = graph.invoke(jordan_input(None, precomputed_clues=dict(CLUES)),
                       context=settings(ScriptedChatModel(script=["Answer: Michael Jordan"] * 20),
                                        tools="ocr,jersey"))
    assert "jersey" not in out["tools_available"]


class FileSize(BaseTool):
    name: str = "file_size"
    description: str = "The size of the image file."

    def _run(self, image_ref: Annotated[str, InjectedToolArg]) -> str:
        return f"{Path(image_ref).stat().st_size} bytes"


def test_a_basetool_gets_the_image_reference_and_llm_arguments_are_refused(plugins, image_file):
    plugins({})
    vt = register_tool(FileSize())
    assert vt.run(ToolInput(image_file)).text == f"{Path(image_file).stat().st_size} bytes"
    assert not vt.available(ToolInput(None))

    @tool
    def search(query: str, image: Annotated[Any, InjectedToolArg]) -> str:
        """Search the web."""
        return query

    with pytest.raises(TypeError, match="'search' has required argument\\(s\\) query"):
        register_tool(search)


def test_register_tool_as_a_decorator_gives_a_tool_that_is_still_the_function(plugins, tmp_path):
    plugins({})

    @register_tool
    def size(inp):
        """The image's size."""
        return "{}x{}".format(*inp.image().size)

    assert isinstance(size, base.VisualTool) and registered_tools()["size"] is size
    assert size.description == "The image's size."
    Image.new("RGB", (70, 55)).save(tmp_path / "a.png")
    inp = ToolInput(str(tmp_path / "a.png"))
    assert size(inp) == "70x55" and size.run(inp).text == "70x55"
