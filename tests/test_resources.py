"""Resources per run: the models of a run live in its settings' Resources, not in the process."""

import pickle
from dataclasses import replace

import pytest
from conftest import JORDAN_CANDIDATES

from i2cr.embeddings import ModelUnavailable
from i2cr.graph import Context, context, graph, resources
from i2cr.graph.resources import Resources
from i2cr.linker import link


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


def test_an_image_that_failed_loads_in_the_next_run(tmp_path, image_file):
    from pathlib import Path

    late = tmp_path / "late.png"
    late.write_bytes(b"not a PNG yet")  # e.g. still being written when the first run read it
    kw = dict(iav_mode="caption", clue_cache="none")
    first = link("Jordan", "Jordan dunks.", JORDAN_CANDIDATES, image=str(late), **kw)
    assert first["image_status"] == "corrupt"
    late.write_bytes(Path(image_file).read_bytes())
    second = link("Jordan", "Jordan dunks.", JORDAN_CANDIDATES, image=str(late), **kw)
    assert second["image_status"] == "ok"
