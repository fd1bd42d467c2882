"""Each graph node called alone, with fake resources (a scripted chat model, and an embedder, a
ranker, a CLIP and visual tools as small classes): what it writes, with no model loaded."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from langchain_core.messages import AIMessage
from langgraph.runtime import Runtime
from PIL import Image

from i2cr.embeddings import ModelUnavailable
from i2cr.eval.metrics import answer_after_vif
from i2cr.eval.scripted import ScriptedChatModel, tool_call
from i2cr.graph import Context
from i2cr.graph.final import final, settle, standing
from i2cr.graph.iav import iav
from i2cr.graph.icr import icr
from i2cr.graph.prepare import available_tools, choose_iav_mode, first_round, prepare
from i2cr.graph.resources import Resources
from i2cr.graph.review import review
from i2cr.graph.state import Prepared
from i2cr.graph.tes import tes, tes_algorithm, tes_hybrid, tes_llm, tes_llm_strategy, tes_retrieval
from i2cr.graph.vif import read_tool_calls, vif
from i2cr.prompts import profile
from i2cr.ranker.model import Ranking
from i2cr.texts import icr_query
from i2cr.tools import VisualTool
from i2cr.tools.base import tesseract_available

NAMES = ["Alpha", "Beta", "Gamma"]
CANDS = [{"name": n, "desc": f"about {n.lower()}"} for n in NAMES]
CLUES = {"Caption": "a gamma ray", "Tags": "physics"}


# --- the fakes ----------------------------------------------------------------------------------

def name_of(text: str) -> str:
    """The candidate an entity text is about (``entity_text``: 'Name. desc')."""
    return text.split(".")[0]


class FakeEmbedder:
    """Similarity of a query with entity texts: a fixed score per candidate name."""

    def __init__(self, sims: dict[str, float]):
        self.sims, self.queries = sims, []

    def similarity(self, query: str, texts: list[str]) -> list[float]:
        self.queries.append(query)
        return [self.sims[name_of(t)] for t in texts]


class FakeRanker:
    """A ranking from a fixed score per candidate name (softmax probabilities)."""

    def __init__(self, scores: dict[str, float], p_link: float = 0.9, nil_threshold: float = 0.5):
        self.scores, self.p_link, self.nil_threshold = scores, p_link, nil_threshold
        self.calls: list[dict] = []

    def rank(self, mention, context, clues, candidates, document=(), rule_names=None):
        cands = [dict(c) for c in candidates]
        self.calls.append({"offered": [c["name"] for c in cands], "clues": list(clues)})
        s = np.array([self.scores[c["name"]] for c in cands], dtype=float)
        p = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
        return Ranking(cands, s, p, np.zeros((len(cands), 1)), "no_prior", self.p_link,
                       self.nil_threshold, icr_query(mention, context, clues))


class FakeClip:
    def __init__(self, score: float):
        self.score_value, self.calls = score, 0

    def score(self, image, texts, *, image_key=None):
        self.calls += 1
        return [self.score_value for _ in texts]


class FakeResources(Resources):
    """Every model a node may ask for, faked; CLIP fails with ``clip_error`` when given."""

    def __init__(self, *, sims=None, scores=None, clip_score=31.0, clip_error=None, tools=None):
        super().__init__()
        self.emb = FakeEmbedder(sims or {n: 0.5 for n in NAMES})
        self.rk = FakeRanker(scores or {n: 0.0 for n in NAMES})
        self.clip_model, self.clip_error, self.clip_asked = FakeClip(clip_score), clip_error, 0
        self.tool_set = tools if tools is not None else {}

    def embedder(self, ctx):
        return self.emb

    def ranker(self, ctx):
        return self.rk

    def clip(self, ctx):
        self.clip_asked += 1
        if self.clip_error:
            raise ModelUnavailable(self.clip_error)
        return self.clip_model

    def chat_model(self, ctx):
        if ctx.chat_model is None:
            raise AssertionError("no chat model in these settings")
        return ctx.chat_model

    def tools(self, ctx):
        return self.tool_set


def text_tool(name: str, text: str) -> VisualTool:
    return VisualTool(name, f"the {name} tool", fn=lambda inp: text, backend="fake",
                      needs_image=False)


def settings(res: FakeResources | None = None, **kw) -> Context:
    base = {"icr_threshold": 0.4, "iav_mode": "caption", "caption_threshold": 40.0,
            "tool_backend": "precomputed"}
    return Context(resources=res or FakeResources(), **{**base, **kw})


def run(node, state, ctx):
    return node(state, Runtime(context=ctx))


def prepared(**kw) -> dict:
    """A state as ``prepare`` leaves it for a mention with candidates and caption clues."""
    s = {"sample_id": "s1", "mention": "alpha", "context": "the alpha context",
         "candidates": [dict(c) for c in CANDS], "image": None, "precomputed_clues": dict(CLUES),
         "allow_nil": False, **first_round(), "image_status": "absent",
         "image_reason": "the mention has no image", "iav_mode": "caption",
         "visual_available": True, "tools_available": ["ocr", "caption"]}
    s.update(kw)
    return s


def types(update) -> list[str]:
    return [e["type"] for e in update["events"]]


# --- prepare ------------------------------------------------------------------------------------

def test_prepare_writes_every_key_later_nodes_read_without_a_default():
    up = run(prepare, {"mention": "alpha"}, settings())
    assert set(Prepared.__annotations__) <= set(up)
    assert (up["candidates"], up["context"], up["round"], up["llm_calls"]) == ([], "", 1, 0)
    assert (up["image_status"], up["iav_mode"], up["visual_available"]) == ("absent", None, False)
    assert types(up) == ["no_candidates", "iav_mode"]


def test_prepare_caps_the_input_and_prunes_to_the_rankers_top_k():
    res = FakeResources(scores={"Alpha": 0.1, "Beta": 2.0, "Gamma": 1.0, "Delta": 3.0})
    cands = [*CANDS, {"name": "Delta", "desc": "about delta"}, {"name": "Eps", "desc": "x"}]
    up = run(prepare, {"mention": "alpha", "context": "c" * 50, "candidates": cands,
                       "precomputed_clues": CLUES},
             settings(res, max_candidates=4, prune_k=2, max_context_chars=20))
    assert [c["name"] for c in up["candidates"]] == ["Beta", "Delta"]  # top 2, in list order
    assert up["context"] == "c" * 20
    assert res.rk.calls == [{"offered": ["Alpha", "Beta", "Gamma", "Delta"], "clues": []}]
    assert types(up) == ["candidates_truncated", "candidates_pruned", "context_truncated"]
    assert up["iav_mode"] == "caption" and res.clip_asked == 0  # no image: CLIP never asked


@pytest.mark.parametrize("modes, image_ok, problem, clues, expected", [
    ((), True, None, CLUES, (None, "IAV switched off")),
    (("clip", "caption"), True, None, None, ("clip", None)),
    (("clip", "caption"), True, "no weights", CLUES, ("caption", "CLIP unavailable: no weights")),
    (("clip", "caption"), False, None, CLUES, ("caption", "no usable image for CLIP")),
    (("clip",), False, None, CLUES, (None, "no usable image for CLIP")),
    (("caption",), True, None, {"Caption": " "},
     (None, "no caption or tags for the caption bridge")),
    (("clip", "caption"), True, "no weights", None,
     (None, "CLIP unavailable: no weights; no caption or tags for the caption bridge")),
])
def test_the_iav_mode_is_a_pure_function_of_what_was_resolved(modes, image_ok, problem, clues,
                                                              expected):
    assert choose_iav_mode(modes, image_ok, problem, clues) == expected


def image_tool(name: str = "ocr") -> VisualTool:
    """A visual tool that reads the image (as Tesseract or Azure do)."""
    return VisualTool(name, f"the {name} tool", fn=lambda inp: inp.image().sha256, backend="fake")


def test_prepare_asks_for_clip_before_loading_the_image_it_may_read(tmp_path):
    """CLIP is asked once the mention has an image (whether CLIP loads decides whether IAV would
    read it); the image then loads when a step reads it: CLIP, or a tool that is no precomputed
    clue."""
    img = tmp_path / "i.png"
    Image.new("RGB", (8, 8), (9, 9, 9)).save(img)
    inp = {"mention": "alpha", "candidates": CANDS, "precomputed_clues": CLUES}
    failing = FakeResources(clip_error="no weights", tools={"ocr": image_tool()})
    up = run(prepare, {**inp, "image": str(img)}, settings(failing, iav_mode="auto"))
    assert (up["image_status"], up["iav_mode"], failing.clip_asked) == ("ok", "caption", 1)
    assert up["events"][-1] == {"type": "iav_mode", "mode": "caption",
                                "reason": "CLIP unavailable: no weights"}
    assert up["tools_available"] == ["ocr"]
    ok = FakeResources()
    up = run(prepare, {**inp, "image": str(img)}, settings(ok, iav_mode="auto"))
    assert (up["iav_mode"], up["visual_available"], ok.clip_asked) == ("clip", True, 1)
    missing = FakeResources()
    up = run(prepare, {**inp, "image": str(tmp_path / "nope.png")}, settings(missing, iav_mode="auto"))
    assert (up["image_status"], up["iav_mode"], missing.clip_asked) == ("missing", "caption", 1)
    assert types(up) == ["image_unusable", "iav_mode"]
    absent = FakeResources()
    up = run(prepare, inp, settings(absent, iav_mode="auto"))
    assert (up["image_status"], up["iav_mode"], absent.clip_asked) == ("absent", "caption", 0)


@pytest.mark.parametrize("kw, tools, clues, why", [
    ({"iav_mode": "off"}, {"ocr": "reads"}, CLUES, "IAV switched off"),
    ({"iav_mode": "auto", "clip": "no weights"}, {"ocr": "reads"}, None,
     "CLIP unavailable: see the iav_mode event; no caption or tags for the caption bridge"),
    ({"iav_mode": "clip", "clip": "no weights"}, {"ocr": "reads"}, CLUES,
     "CLIP unavailable: see the iav_mode event"),
    ({"iav_mode": "caption"}, {"ocr": "precomputed", "caption": "precomputed"}, CLUES,
     "IAV by caption, only precomputed clue tools"),
    ({"iav_mode": "auto", "clip": "no weights"}, {"ocr": "precomputed"}, CLUES,
     "IAV by caption, only precomputed clue tools; CLIP unavailable: see the iav_mode event"),
    # VIF switched off: its tools never run, whatever they read (the image was loaded)
    ({"iav_mode": "caption", "max_vif_rounds": 0}, {"ocr": "reads"}, CLUES,
     "IAV by caption, no VIF round (max_vif_rounds 0)"),
], ids=["iav_off", "no_clip_no_clues", "clip_only_unavailable", "caption_precomputed",
        "auto_caption_precomputed", "caption_no_vif_rounds"])
def test_an_image_no_step_reads_is_not_loaded_and_not_a_failure(kw, tools, clues, why):
    """Where neither IAV nor a VIF tool would read the image (IAV off or unable to run, or IAV by
    caption with precomputed clue tools only), prepare does not load it: a URL that cannot be
    fetched is not fetched and is no failure of the run (it made the exit code 1)."""
    from i2cr.eval.metrics import image_failure
    from i2cr.tools.builtin import precomputed_tool

    made = {n: image_tool(n) if t == "reads" else precomputed_tool(n) for n, t in tools.items()}
    kw = dict(kw)
    res = FakeResources(clip_error=kw.pop("clip", None), tools=made)
    ctx = settings(res, **kw)
    loads = []
    res.images.load = lambda ref, **k: loads.append(ref)  # any load is recorded, none may happen
    inp = {"mention": "alpha", "candidates": CANDS, "precomputed_clues": clues,
           "image": "http://127.0.0.1:9/x.png"}
    up = run(prepare, inp, ctx)
    assert loads == [] and up["image_status"] == "unused"
    assert up["image_reason"] == f"not loaded: no step of this run reads it ({why})"
    assert "image_unusable" not in types(up) and image_failure(dict(up)) is None
    assert up["visual_available"] == (up["iav_mode"] is not None)


ALL_CLUES = {"OCR text": "GAMMA", "Caption": "a gamma ray", "Dense Captions": ["a ray"],
             "Tags": ["physics"]}


@pytest.mark.parametrize("clues, reads", [
    (ALL_CLUES, False),
    ({k: v for k, v in ALL_CLUES.items() if k != "Caption"}, False),  # caption by CLIP: no weights
    pytest.param({k: v for k, v in ALL_CLUES.items() if k != "OCR text"}, True,
                 marks=pytest.mark.skipif(not tesseract_available(), reason="no tesseract")),
], ids=["every_clue", "no_caption_clue_no_clip", "no_ocr_clue_tesseract"])
def test_default_backends_answered_by_the_samples_clues_do_not_load_the_image(clues, reads):
    """With the default ``tool_backend=auto``, each tool answers from the sample's precomputed
    clue when it has one (the I2CR datasets ship all four), so IAV by caption reads no image: it
    was loaded anyway (``auto(...)`` is not 'precomputed'), and an unreachable URL that nothing
    read still made the exit code 1. The image loads when a backend that reads it would run."""
    res = FakeResources(clip_error="no weights")
    res.tools = lambda ctx: Resources.tools(res, ctx)  # the run's real tools (factory, auto)
    ctx = settings(res, iav_mode="auto", tool_backend="auto", clue_cache="none")
    loads = []
    res.images.load = lambda ref, **k: loads.append(ref)
    ref = "http://127.0.0.1:9/x.png"
    up = run(prepare, {"mention": "alpha", "candidates": CANDS, "precomputed_clues": clues,
                       "image": ref}, ctx)
    assert up["iav_mode"] == "caption"
    if reads:
        assert loads[:1] == [ref] and up["image_status"] == "ok"
    else:
        assert loads == [] and up["image_status"] == "unused"
        assert up["image_reason"] == ("not loaded: no step of this run reads it (IAV by caption, "
                                      "only precomputed clue tools; CLIP unavailable: see the "
                                      "iav_mode event)")


def test_available_tools_are_those_that_can_run_for_the_mention():
    tools = {"ocr": text_tool("ocr", "x"),
             "caption": VisualTool("caption", "d", fn=lambda inp: "y", needs_image=True)}
    ctx = settings(FakeResources(tools=tools))
    assert available_tools(prepared(), ctx, image_ok=False) == (["ocr"], [])


# --- TES ----------------------------------------------------------------------------------------

def test_each_strategy_has_its_tes():
    assert [tes_algorithm(s) for s in ("retrieval", "hybrid", "llm")] == [tes_retrieval,
                                                                          tes_hybrid, tes_llm_strategy]
    res = FakeResources(scores={"Alpha": 0.0, "Beta": 1.0, "Gamma": 3.0})
    up = run(tes, prepared(excluded=["Gamma"]), settings(res, tes_strategy="retrieval"))
    assert (up["choice"], up["first_answer"], up["llm_answer"]) == ("Beta", "Beta", None)
    assert res.rk.calls[0]["offered"] == ["Alpha", "Beta"]  # ICR's exclusion left out
    (ev,) = up["events"]
    assert ev["type"] == "tes_answer" and ev["mapped"] == "Beta" and ev["top"][0]["name"] == "Beta"


def test_the_ranker_says_nil_only_where_nil_is_allowed():
    res = FakeResources(scores={"Alpha": 1.0, "Beta": 0.0, "Gamma": 0.0})
    res.rk.p_link = 0.1
    ctx = settings(res, tes_strategy="retrieval")
    assert run(tes, prepared(allow_nil=True, first_answer="Beta"), ctx)["choice"] == "nil"
    up = run(tes, prepared(first_answer="Beta"), ctx)
    assert up["choice"] == "Alpha" and "first_answer" not in up  # the first stays


def test_hybrid_tes_answers_with_the_ranker_and_keeps_its_ranking():
    res = FakeResources(scores={"Alpha": 0.0, "Beta": 2.0, "Gamma": 1.0})
    ctx = settings(res, tes_strategy="hybrid", hybrid_threshold=0.9, chat_model=ScriptedChatModel())
    up = run(tes, prepared(round=2, clues=[{"tool": "ocr", "text": "beta!", "ok": True}]), ctx)
    assert up["choice"] == "Beta" and types(up) == ["tes_hybrid", "tes_answer"]
    assert up["events"][0]["unsure"] and up["events"][0]["round"] == 2
    r = up["ranked"]
    assert (r["round"], r["offered"], r["order"]) == (2, NAMES, [1, 2, 0])
    assert sum(r["probs"]) == pytest.approx(1.0) and "llm_calls" not in up
    assert res.rk.calls[0]["clues"][0]["text"] == "beta!"  # the round's clue


def test_llm_tes_maps_the_answer_and_counts_the_call():
    fake = ScriptedChatModel(script=["Answer: Gamma"])
    up = run(tes, prepared(llm_calls=2, excluded=["Alpha"]), settings(chat_model=fake))
    assert (up["choice"], up["first_answer"], up["llm_answer"], up["llm_calls"]) == \
        ("Gamma", "Gamma", "Answer: Gamma", 3)
    assert profile("i2cr").offered(fake.calls[0]["messages"][-1], NAMES)[0] == ["Beta", "Gamma"]
    assert types(up) == ["tes_answer"]


def test_llm_tes_retries_then_falls_back_to_the_closest_by_embedding():
    fake = ScriptedChatModel(script=["qqq zzz", RuntimeError("down")])
    res = FakeResources(sims={"Alpha": 0.1, "Beta": 0.7, "Gamma": 0.3})
    up = run(tes, prepared(), settings(res, chat_model=fake, tes_retries=1))
    assert (up["choice"], up["llm_calls"], len(fake.calls)) == ("Beta", 2, 2)
    assert types(up) == ["tes_answer", "unmappable_answer", "llm_error", "tes_fallback"]
    assert up["events"][-1] == {"type": "tes_fallback", "choice": "Beta",
                                "method": "embedding_fallback"}
    given = tes_llm(prepared(), settings(chat_model=ScriptedChatModel(script=["qqq zzz"]), tes_retries=0),
                    fallback="Gamma")
    assert given["choice"] == "Gamma" and given["events"][-1]["method"] == "ranker_fallback"


# --- ICR ----------------------------------------------------------------------------------------

Q = "alpha the alpha context"  # the round's query, as TES leaves it in the state


def test_icr_accepts_rejects_and_keeps_the_best_try():
    res = FakeResources(sims={"Alpha": 0.3, "Beta": 0.6, "Gamma": 0.2})
    ctx = settings(res, icr_threshold=0.5, max_reflections=1)
    up = run(icr, prepared(choice="Beta", query=Q), ctx)
    assert (up["icr_decision"], up["text_answer"], up["text_icr"]) == ("pass", "Beta", 0.6)
    assert up["rounds"] == [{"round": 1, "answer": "Beta", "icr": 0.6}]
    up = run(icr, prepared(choice="Alpha", query=Q), ctx)
    assert (up["icr_decision"], up["excluded"], up["reflections"]) == \
        ("reject_and_rechoose", ["Alpha"], 1)
    assert "rounds" not in up
    st = prepared(choice="Gamma", round=2, reflections=1, excluded=["Alpha"], query=Q,
                  tried=[{"name": "Alpha", "icr": 0.3}], rounds=[{"round": 1}])
    up = run(icr, st, ctx)
    assert (up["icr_decision"], up["choice"], up["icr_score"]) == ("exhausted_keep_best", "Alpha", 0.3)
    assert up["rounds"][-1] == {"round": 2, "answer": "Alpha", "icr": 0.3}
    assert "text_answer" not in up  # round 2's answer is not the text answer
    asked = len(res.emb.queries)
    up = run(icr, prepared(choice="nil", query=Q), ctx)
    assert (up["icr_decision"], up["text_answer"], up["icr_score"]) == ("nil_not_checked", "nil", None)
    assert len(res.emb.queries) == asked  # NIL has no description to score


class RecordingEmbedder:
    """Every query the embedder is asked about, in order (any similarity: 0.5)."""

    def __init__(self):
        self.queries: list[str] = []

    def similarity(self, query: str, texts: list[str]) -> list[float]:
        self.queries.append(query)
        return [0.5 for _ in texts]


class RankerResources(FakeResources):
    """The real ranker (shipped weights) over a recording embedder."""

    def __init__(self):
        super().__init__()
        self.emb = RecordingEmbedder()

    def ranker(self, ctx):
        return Resources.ranker(self, ctx)


@pytest.mark.parametrize("strategy", ["retrieval", "hybrid", "llm"])
def test_icr_scores_the_query_tes_built_and_the_ranker_compared(strategy):
    """ICR built the round's query again, apart from TES's: now TES keeps the query it built
    (``query``; the ranker's TES compares that very text) and ICR scores against it, so the
    settings that shape the query (its prefix, the context's cut, the round's clues) act on both
    alike."""
    res = RankerResources()
    fake = ScriptedChatModel(script=["Answer: Beta"])
    ctx = settings(res, tes_strategy=strategy, embed_query_prefix="query: ", max_context_chars=9,
                   clue_mode="cumulative", chat_model=fake)
    clues = [{"tool": "ocr", "text": "beta!", "ok": True},
             {"tool": "caption", "text": "a beta ray", "ok": True}]
    st = prepared(round=3, clues=clues, context="the alpha context, long")
    up = run(tes, st, ctx)
    q = up["query"]
    assert q.startswith("query: ") and "beta!" in q and "a beta ray" in q and "long" not in q
    if strategy != "llm":
        assert q in res.emb.queries  # the very text the ranker compared the candidates with
    res.emb.queries.clear()
    run(icr, {**st, **up}, ctx)
    assert res.emb.queries == [q]
    res.emb.queries.clear()
    run(icr, {**st, **up, "query": "the query TES built"}, ctx)
    assert res.emb.queries == ["the query TES built"]  # taken from TES, never built again


def test_icr_without_tes_query_is_a_data_error_naming_the_mention():
    """A state reaching ICR without ``query`` (a checkpoint an older i2cr wrote between TES and
    ICR, resumed) raised ``KeyError: 'query'``; now one line naming the mention and what to do
    (no second query builder stands in for TES's). NIL needs no query and still stands."""
    from i2cr.data import DataError

    res = FakeResources()
    with pytest.raises(DataError) as e:
        run(icr, prepared(choice="Beta"), settings(res))
    msg = str(e.value)
    assert msg.startswith("record 's1': checkpoint from an older i2cr") and "\n" not in msg
    assert "afresh" in msg and res.emb.queries == []
    assert run(icr, prepared(choice="nil"), settings(res))["icr_decision"] == "nil_not_checked"


@pytest.mark.parametrize("strategy", ["retrieval", "hybrid", "llm"])
def test_tes_builds_the_rounds_query_once(strategy, monkeypatch):
    """TES built the round's query twice when it ranked: the ranker inside its features and TES
    again (round_query) for the state's ``query``. Now the ranking carries the query it compared
    (``Ranking.query``) and TES keeps that one; only a TES that does not rank (the LLM's, or none
    left to rank) builds it, through round_query."""
    T = importlib.import_module("i2cr.graph.tes")  # (i2cr.graph.tes is also the node's name)
    built: list[str] = []

    def round_query(state, ctx):
        built.append(state["mention"])
        return real(state, ctx)

    real = T.round_query
    monkeypatch.setattr(T, "round_query", round_query)
    res = RankerResources()
    ctx = settings(res, tes_strategy=strategy, embed_query_prefix="query: ", clue_mode="cumulative",
                   chat_model=ScriptedChatModel(script=["Answer: Beta"]))
    st = prepared(round=2, clues=[{"tool": "ocr", "text": "beta!", "ok": True}])
    up = run(tes, st, ctx)
    assert up["query"] == real(st, ctx)  # the same text as round_query builds
    if strategy == "llm":
        assert built == ["alpha"]
    else:
        assert built == [] and res.emb.queries.count(up["query"]) == 1  # the ranker's, once
    built.clear()
    up = run(tes, {**st, "excluded": list(NAMES)}, ctx)  # none left: no ranking, NIL
    assert up["choice"] == "nil" and up["query"] == real(st, ctx) and len(built) == 1


# --- IAV ----------------------------------------------------------------------------------------

def test_iav_by_caption_records_its_verdict_in_the_rounds_entry():
    res = FakeResources(sims={"Alpha": 0.2, "Beta": 0.45, "Gamma": 0.9})
    ctx = settings(res, caption_threshold=40.0)
    rounds = [{"round": 1, "answer": "Beta", "icr": 0.5}]
    up = run(iav, prepared(choice="Beta", rounds=rounds), ctx)
    assert up["iav_passed"] and up["iav_score"] == pytest.approx(45.0)
    assert up["rounds"] == [{**rounds[0], "iav": pytest.approx(45.0), "iav_passed": True}]
    assert rounds == [{"round": 1, "answer": "Beta", "icr": 0.5}]  # the state is not mutated
    assert res.emb.queries == ["a gamma ray. physics"]
    up = run(iav, prepared(choice="Alpha", rounds=rounds), ctx)
    assert up["iav_passed"] is False and up["events"][0]["decision"] == "fail"
    up = run(iav, prepared(choice="nil", rounds=rounds), ctx)
    assert (up["iav_passed"], up["events"][0]["decision"]) == (False, "nil_not_verifiable")


def test_iav_by_clip_and_when_clip_is_gone(tmp_path):
    img = tmp_path / "i.png"
    Image.new("RGB", (8, 8), (9, 9, 9)).save(img)
    st = prepared(choice="Alpha", iav_mode="clip", image=str(img), image_status="ok",
                  rounds=[{"round": 1, "answer": "Alpha"}])
    res = FakeResources(clip_score=33.0)
    up = run(iav, st, settings(res, iav_threshold=31.0))
    assert (up["iav_passed"], up["iav_score"], res.clip_model.calls) == (True, 33.0, 1)
    gone = FakeResources(clip_error="no weights")
    up = run(iav, st, settings(gone))
    assert (up["iav_passed"], up["visual_available"], up["events"][0]["decision"]) == \
        (False, False, "unavailable")


# --- VIF ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("requested, expected", [
    ([], (None, "fallback_no_tool_call", [])),
    (["tags"], (None, "fallback_invalid_tool",
                [{"type": "invalid_tool_call", "requested": "tags", "offered": ["ocr", "caption"]}])),
    (["caption"], ("caption", "llm", [])),
    (["caption", "ocr"], ("caption", "llm",
                          [{"type": "extra_tool_calls_ignored", "ignored": ["ocr"]}])),
])
def test_reading_the_llms_tool_calls(requested, expected):
    assert read_tool_calls(requested, ["ocr", "caption"]) == expected


def test_vif_runs_the_next_tool_in_the_fixed_order_and_opens_a_round():
    tools = {"ocr": text_tool("ocr", "ALPHA 23"), "caption": text_tool("caption", "a cat")}
    ctx = settings(FakeResources(tools=tools), tes_strategy="retrieval")
    st = prepared(round=2, vif_rounds=1, tools_used=["ocr"], excluded=["Beta"], reflections=1,
                  tried=[{"name": "Beta", "icr": 0.1}],
                  clues=[{"tool": "ocr", "text": "ALPHA 23", "ok": True}])
    up = run(vif, st, ctx)
    assert (up["round"], up["vif_rounds"], up["llm_calls"], up["last_clue_ok"]) == (3, 2, 0, True)
    assert up["tools_used"] == ["ocr", "caption"]
    assert up["clues"][-1] == {"tool": "caption", "text": "a cat", "ok": True}
    assert (up["excluded"], up["tried"], up["reflections"]) == ([], [], 0)
    (ev,) = up["events"]
    assert (ev["type"], ev["tool"], ev["how"]) == ("tool_call", "caption", "fixed_order")


def test_vif_takes_the_llms_pick_and_falls_back_on_an_invalid_one():
    tools = {"ocr": text_tool("ocr", ""), "caption": text_tool("caption", "a cat")}
    fake = ScriptedChatModel(script=[AIMessage("", tool_calls=[tool_call("caption")]),
                                     AIMessage("", tool_calls=[tool_call("tags")])])
    ctx = settings(FakeResources(tools=tools), chat_model=fake)
    up = run(vif, prepared(choice="Alpha", iav_score=12.0), ctx)
    assert (up["tools_used"], up["llm_calls"]) == (["caption"], 1)
    assert fake.calls[0]["tools"] == ["ocr", "caption"]
    assert types(up) == ["vif_request", "tool_call"] and up["events"][1]["how"] == "llm"
    up = run(vif, prepared(choice="Alpha"), ctx)
    assert up["tools_used"] == ["ocr"] and up["last_clue_ok"] is False  # an empty clue
    assert types(up) == ["vif_request", "invalid_tool_call", "tool_call"]
    assert up["events"][-1]["how"] == "fallback_invalid_tool"


def test_vif_with_no_tool_left():
    ctx = settings(FakeResources(tools={"ocr": text_tool("ocr", "x")}))
    up = run(vif, prepared(tools_used=["ocr"], vif_rounds=1), ctx)
    assert up == {"path": ["vif"], "llm_calls": 0, "vif_rounds": 2, "last_clue_ok": False,
                  "events": [{"type": "vif_no_tool_left"}]}


# --- review and final ---------------------------------------------------------------------------

def hybrid(res, fake, **kw):
    return settings(res, **{"tes_strategy": "hybrid", "chat_model": fake, "hybrid_top_k": 2, **kw})


def reviewed_state(**kw):
    """Round 2 stands (fallback 'last'): TES ranked its candidates without Alpha, ICR's rejection."""
    rounds = [{"round": 1, "answer": "Beta", "icr": 0.5, "iav_passed": False},
              {"round": 2, "answer": "Beta", "icr": 0.6, "iav_passed": False}]
    ranked = {"round": 2, "offered": ["Beta", "Gamma"], "order": [0, 1], "probs": [0.6, 0.4]}
    return prepared(round=2, choice="Beta", text_answer="Beta", excluded=["Alpha"],
                    rounds=rounds, ranked=ranked, **kw)


def test_review_reuses_tes_ranking_and_records_the_llms_answer_where_it_stands():
    res = FakeResources()
    fake = ScriptedChatModel(script=["Answer: Gamma"])
    ctx = hybrid(res, fake, hybrid_threshold=0.9, fallback="last")
    st = reviewed_state()
    up = run(review, st, ctx)
    assert res.rk.calls == []  # TES's ranking of round 2, reused
    ev = up["events"][0]
    assert (ev["path"], ev["reviews"], ev["round"], ev["p"], ev["ranker_answer"], ev["answer"]) == \
        ("llm", "choice", 2, 0.6, "Beta", "Gamma")
    assert up["rounds"][1] == {**st["rounds"][1], "answer": "Gamma",
                                      "ranker_answer": "Beta"}
    assert up["rounds"][0] == st["rounds"][0] and up["choice"] == "Gamma"
    assert "text_answer" not in up and up["llm_calls"] == 1
    after = {**st, **up}
    assert run(final, after, ctx)["answer"] == "Gamma" == settle(after["rounds"], "Beta", "last")


def test_review_ranks_anew_a_round_tes_did_not_rank_that_way():
    res = FakeResources(scores={"Alpha": 5.0, "Beta": 0.0, "Gamma": 0.0})
    ctx = hybrid(res, ScriptedChatModel(), hybrid_threshold=0.9, fallback="text")
    up = run(review, reviewed_state(), ctx)  # round 1's text answer stands: seen as round 1 saw it
    assert res.rk.calls == [{"offered": NAMES, "clues": []}]
    ev = up["events"][0]
    assert (ev["path"], ev["reviews"], ev["round"], ev["answer"]) == ("ranker", "text_answer", 1,
                                                                      "Beta")
    assert set(up) == {"path", "events"}  # the ranker was sure: nothing changes


def test_a_reviewed_text_answer_is_round_1s_answer():
    fake = ScriptedChatModel(script=["Answer: Alpha"])
    ctx = hybrid(FakeResources(), fake, hybrid_threshold=1.0, fallback="text", hybrid_top_k=3)
    st = reviewed_state()
    up = run(review, st, ctx)
    assert up["text_answer"] == up["rounds"][0]["answer"] == "Alpha"
    assert "choice" not in up and up["rounds"][1] == st["rounds"][1]
    rec = {"rounds": up["rounds"], "text_answer": up["text_answer"], "fallback": "text"}
    after = {**st, **up}
    assert run(final, after, ctx)["answer"] == answer_after_vif(rec, 1) == "Alpha"


@pytest.mark.parametrize("kw, fallback, answer, reason", [
    ({"candidates": []}, "text", "nil", "no_candidates"),
    ({"rounds": [{"round": 1, "answer": "A", "iav_passed": True}], "text_answer": "A"},
     "text", "A", "iav_passed_text"),
    ({"rounds": [{"round": 1, "answer": "A", "iav_passed": False},
                        {"round": 2, "answer": "B", "iav_passed": True}], "text_answer": "A"},
     "text", "B", "iav_passed_round_2"),
    ({"rounds": [{"round": 1, "answer": "nil"}], "text_answer": "nil"}, "last", "nil",
     "nil_chosen"),
    ({"rounds": [{"round": 1, "answer": "A"}], "text_answer": "A",
      "visual_available": False}, "last", "A", "text_only"),
    ({"rounds": [{"round": 1, "answer": "A", "iav_passed": False},
                        {"round": 2, "answer": "B", "iav_passed": False}], "text_answer": "A"},
     "last", "B", "no_round_passed_iav_last_round"),
    ({"rounds": [{"round": 1, "answer": "A", "iav_passed": False},
                        {"round": 2, "answer": "B", "iav_passed": False}], "text_answer": "A"},
     "text", "A", "no_round_passed_iav"),
    ({"rounds": [{"round": 1, "answer": "A", "iav_passed": False},
                        {"round": 2, "answer": "nil", "iav_passed": False}], "text_answer": "A"},
     "last", "A", "no_round_passed_iav"),
])
def test_final_settles_by_the_rounds(kw, fallback, answer, reason):
    st = prepared(**kw)
    up = run(final, st, settings(fallback=fallback))
    assert (up["answer"], up["final_reason"], up["fallback"]) == (answer, reason, fallback)
    assert standing(st, fallback).reason == reason
    if st["candidates"]:
        rec = {"rounds": st["rounds"], "text_answer": st["text_answer"], "fallback": fallback}
        assert answer_after_vif(rec, len(st["rounds"])) == answer
