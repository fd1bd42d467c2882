"""Resources per run: the models of a run live in its settings' Resources, not in the process."""

import importlib.util
import json
import pickle
import shutil
import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import JORDAN_CANDIDATES, render_text_image

from i2cr.embeddings import ModelUnavailable
from i2cr.graph import Context, context, graph, resources
from i2cr.graph.resources import Resources
from i2cr.linker import link
from i2cr.llm import BackendError, check_backend
from i2cr.tools import ToolInput
from i2cr.tools.factory import Backends


@pytest.fixture(autouse=True)
def runs_of_their_own(monkeypatch):
    """Here a new Context is a new run, as outside the test suite (see conftest)."""
    monkeypatch.setattr(context, "new_resources", Resources)


def _clip_settings(tiny_clip_config):
    return dict(clip_model="i2cr-tiny-clip", clip_pretrained="", clip_model_config=tiny_clip_config,
                iav_mode="clip", tool_backend="precomputed", clue_cache="none")


def test_a_clip_that_failed_to_load_loads_in_the_next_run(monkeypatch, tiny_clip_config,
                                                          image_file):
    real, calls = resources.ClipScorer, []

    def flaky(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise ModelUnavailable("the weights are still being copied")
        return real(*args, **kwargs)

    monkeypatch.setattr(resources, "ClipScorer", flaky)
    kw = _clip_settings(tiny_clip_config)
    first = link("Jordan", "Jordan dunks.", JORDAN_CANDIDATES, image=image_file, **kw)
    assert first["scores"]["iav_mode"] is None
    why = [e["reason"] for e in first["events"] if e["type"] == "iav_mode"]
    assert why == ["CLIP unavailable: the weights are still being copied"]
    second = link("Jordan", "Jordan dunks.", JORDAN_CANDIDATES, image=image_file, **kw)  # next run
    assert second["scores"]["iav_mode"] == "clip" and second["scores"]["iav"] is not None
    assert len(calls) == 2


def test_a_broken_clip_checkpoint_is_read_once_per_run_each_mention_told_why(
        monkeypatch, tmp_path, tiny_clip_config, image_file):
    """A CLIP load that failed was not remembered: every mention with an image (prepare's
    clip_problem, the CLIP tools' reads and checks) loaded the checkpoint again, a large broken
    one read from disk each time. Now the run tries once; each mention gets the same reason;
    the file replaced is tried again, and the next run tries anew."""
    real, loads = resources.ClipScorer, []

    def counted(*args, **kwargs):
        loads.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(resources, "ClipScorer", counted)
    broken = tmp_path / "clip.bin"
    broken.write_bytes(b"not a checkpoint" * 1000)
    kw = {**_clip_settings(tiny_clip_config), "clip_pretrained": str(broken),
          "tool_backend": "caption=clip,tags=clip", "iav_mode": "auto"}
    run = Context(**kw)
    recs = [link("Jordan", "Jordan dunks.", JORDAN_CANDIDATES, image=image_file, settings=run)
            for _ in range(4)]
    why = [e["reason"] for r in recs for e in r["events"] if e["type"] == "iav_mode"]
    assert len(why) == 4 and len(set(why)) == 1 and why[0].startswith(
        "CLIP unavailable: cannot load CLIP 'i2cr-tiny-clip'"), why
    assert all(r["error"] is None for r in recs)
    assert len(loads) == 1  # (was one per mention, and more: the tools asked too)
    with pytest.raises(ModelUnavailable) as again:
        resources.clip(run)
    assert why[0].startswith(f"CLIP unavailable: {again.value}") and len(loads) == 1
    broken.write_bytes(b"still not a checkpoint")  # replaced: worth reading again
    with pytest.raises(ModelUnavailable):
        resources.clip(run)
    assert len(loads) == 2
    with pytest.raises(ModelUnavailable):
        resources.clip(Context(**kw))  # the next run
    assert len(loads) == 3


def test_a_hub_tags_weights_put_in_the_cache_after_a_failure_are_loaded(monkeypatch,
                                                                       clip_hub_tag):
    """CLIP named by a pretrained tag whose weights were in no cache: the failure was remembered
    for the Resources' life (no file named by the settings could change), so a server never
    loaded the weights put in the cache afterwards. The tag's cached weights now count among the
    files a load reads: unchanged, the failure is said without loading again; there, they load."""
    from safetensors.torch import load_file

    real, loads = resources.ClipScorer, []

    def counted(*args, **kwargs):
        loads.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(resources, "ClipScorer", counted)
    run = Context(**clip_hub_tag.settings)
    for _ in range(3):
        with pytest.raises(ModelUnavailable, match="are not on this machine"):
            resources.clip(run)
    assert len(loads) == 1  # a run still tries once
    snap = clip_hub_tag.put_weights()
    scorer = resources.clip(run)
    assert len(loads) == 2 and resources.clip(run) is scorer
    saved = load_file(str(snap / "open_clip_model.safetensors"))
    name = "text_projection"
    assert scorer.model.state_dict()[name].equal(saved[name])  # the weights put there


def test_each_run_has_its_own_resources_and_copies_share_them(tiny_clip_config, image_file):
    a, b = Context(), Context()
    assert isinstance(a.resources, Resources) and a.resources is not b.resources  # two runs
    assert replace(a, iav_threshold=20.0).resources is a.resources  # the same run's settings
    ctx = Context(**_clip_settings(tiny_clip_config))
    out = graph.invoke({"mention": "Jordan", "context": "Jordan dunks.", "image": image_file,
                        "candidates": [dict(c) for c in JORDAN_CANDIDATES]}, context=ctx)
    assert out["iav_mode"] == "clip"
    held = ctx.resources
    assert resources.embedder(ctx) is held.embedder(ctx) and resources.clip(ctx) is held.clip(ctx)
    assert "1 embedder(s), 1 CLIP" in repr(held)  # what the graph's nodes loaded
    assert "0 embedder(s), 0 CLIP" in repr(Context().resources)
    # models do not travel: settings sent to a worker arrive with an empty Resources of their own
    sent = pickle.loads(pickle.dumps(ctx))
    assert sent == ctx and sent.resources is not held and "0 embedder(s)" in repr(sent.resources)


def test_a_server_holds_one_resources_for_every_request():
    from i2cr.serve.config import ServerConfig

    cfg = ServerConfig(base=Context(iav_mode="off"))
    per_request = cfg.run_settings({"iav_threshold": 25.0, "tools": "ocr"})
    assert per_request.iav_threshold == 25.0 and per_request.resources is cfg.settings.resources


def test_resources_must_be_a_resources_object():
    with pytest.raises(ValueError, match="resources must be an i2cr.graph.resources.Resources"):
        Context(resources="shared")


def test_an_image_that_failed_loads_in_the_next_run(tmp_path, image_file, image_reading):
    from pathlib import Path

    late = tmp_path / "late.png"
    late.write_bytes(b"not a PNG yet")  # e.g. still being written when the first run read it
    kw = dict(clue_cache="none", **image_reading)
    first = link("Jordan", "Jordan dunks.", JORDAN_CANDIDATES, image=str(late), **kw)
    assert first["image_status"] == "corrupt"
    late.write_bytes(Path(image_file).read_bytes())
    second = link("Jordan", "Jordan dunks.", JORDAN_CANDIDATES, image=str(late), **kw)
    assert second["image_status"] == "ok"


# --- issue 13 item 1: what was a module global is the run's --------------------------------------

ROOT = Path(__file__).resolve().parent.parent


def test_ranker_weights_are_read_by_each_run(tmp_path):
    """A weights file rewritten between two runs of one process is read anew by the second (it
    was kept for the process, by path, however it changed), and kept by the first."""
    from i2cr.ranker import load_weights

    spec = load_weights().spec
    path = tmp_path / "weights.json"
    kw = dict(tes_strategy="retrieval", ranker_weights=str(path))
    for value in (0.41, 0.42):
        path.write_text(json.dumps({**spec, "icr_threshold": {
            "embedder": Context().embedder, "value": value}}))
        run = Context(**kw)
        assert run.alpha == value
        path.write_text(json.dumps({**spec, "icr_threshold": {}}))
        assert replace(run, icr_threshold=None).alpha == value  # the run keeps what it read


@pytest.mark.skipif(shutil.which("tesseract") is None, reason="tesseract not installed")
def test_a_clue_cache_that_could_not_be_opened_is_opened_again_by_the_next_run(tmp_path,
                                                                              monkeypatch):
    import pytesseract

    img = str(render_text_image(tmp_path / "t.png", "CACHED TEXT"))
    folder = tmp_path / "clues"
    folder.write_text("a file where the folder should be")  # unusable: this run runs without it
    first = Context(tool_backend="ocr=tesseract", clue_cache=str(folder))
    assert resources.tools(first)["ocr"].run(ToolInput(img, None, first)).text == "CACHED TEXT"
    folder.unlink()  # fixed between the runs
    second = Context(tool_backend="ocr=tesseract", clue_cache=str(folder))
    assert resources.tools(second)["ocr"].run(ToolInput(img, None, second)).text == "CACHED TEXT"
    monkeypatch.setattr(pytesseract, "image_to_string",
                        lambda *a, **k: pytest.fail("tesseract ran again: the run has no cache"))
    assert resources.tools(second)["ocr"].run(ToolInput(img, None, second)).text == "CACHED TEXT"
    assert folder.is_dir()


def test_each_run_has_its_own_azure_client_shared_by_its_tools(monkeypatch):
    monkeypatch.setenv("VISION_ENDPOINT", "http://127.0.0.1:9")
    first, second = Context(clue_cache="none"), Context(clue_cache="none")
    client = Backends(first).vision()
    assert Backends(first).vision() is client  # a plug-in's Backends shares its run's client
    assert Backends(replace(first, iav_threshold=20.0)).vision() is client
    assert Backends(second).vision() is not client  # nothing it analysed reaches the next run


def _models_server(asked: list[str] | None = None) -> ThreadingHTTPServer:
    """A local server answering ``GET /models`` as an OpenAI-compatible one does (each path
    asked kept in ``asked``); the caller shuts it down."""
    class Models(BaseHTTPRequestHandler):
        def do_GET(self):
            if asked is not None:
                asked.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"data": []}')

        def log_message(self, *args):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Models)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def test_a_backend_that_passed_its_check_is_checked_again_by_the_next_run():
    srv = _models_server()
    spec = f"openai-compat:m@http://127.0.0.1:{srv.server_address[1]}/v1"
    first = Context(llm=spec)
    try:
        check_backend(first)
    finally:
        srv.shutdown()
        srv.server_close()
    check_backend(first)  # the same run: checked once
    with pytest.raises(BackendError, match="cannot reach"):
        check_backend(Context(llm=spec))  # the next run asks again, and the server is gone


def test_the_openai_backend_check_asks_the_server_openai_base_url_names(monkeypatch):
    """``openai:<model>`` with ``OPENAI_BASE_URL`` (the llm module says it is honoured, and the
    OpenAI client uses it): the start-up check asked https://api.openai.com/v1/models instead,
    so a run against a working proxy was refused (and, online, the key went to OpenAI)."""
    asked: list[str] = []
    srv = _models_server(asked)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{srv.server_address[1]}/v1")
    monkeypatch.delenv("OPENAI_API_BASE", raising=False)
    try:
        check_backend(Context(llm="openai:gpt-4o"))
    finally:
        srv.shutdown()
        srv.server_close()
    assert asked == ["/v1/models"]


# --- issue 13 item 1: a server process holds one Resources --------------------------------------

def test_two_api_runs_in_one_server_process_share_one_resources(monkeypatch):
    """The graph langgraph.json serves, loaded as ``langgraph dev`` loads it (by path), given
    each run's context as a dict as the API does: one Resources is built for the process (and
    /link's settings hold the same one); the CLI's graph still builds one per run."""
    from i2cr.serve.config import ServerConfig

    made: list[Resources] = []
    monkeypatch.setattr(context, "new_resources", lambda: made.append(Resources()) or made[-1])
    path, _, attr = json.loads((ROOT / "langgraph.json").read_text())["graphs"]["i2cr"].partition(":")
    mod_spec = importlib.util.spec_from_file_location("lg_served", ROOT / path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    served = getattr(mod, attr)
    mention = {"mention": "Jordan", "context": "Jordan dunks in the 1991 finals.",
               "candidates": [dict(c) for c in JORDAN_CANDIDATES]}
    context.default_settings.cache_clear()
    try:
        for threshold in (0.3, 0.4):  # two API runs, each with its own settings
            out = served.invoke(mention, context={"tes_strategy": "retrieval", "iav_mode": "off",
                                                  "icr_threshold": threshold})
            assert out["answer"] == "Michael Jordan"
        assert len(made) == 1 and "1 embedder(s)" in repr(made[0])
        assert ServerConfig().settings.resources is made[0]  # /link: the same models
        graph.invoke(mention, context={"tes_strategy": "retrieval", "iav_mode": "off"})
        assert len(made) == 2  # the CLI's graph: a run of its own
    finally:
        context.default_settings.cache_clear()
