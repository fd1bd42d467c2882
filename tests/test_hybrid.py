"""Hybrid TES: the ranker carries every round; the LLM is asked at most once, among the ranker's
top-k, about the answer that stands when the ranker is unsure of it; the scripted LLM of known
accuracy; the cost-curve script."""

from __future__ import annotations

import json

import pytest
from conftest import CLUES, JORDAN_CANDIDATES
from fakes import Oracle, ScriptedChatModel

from i2cr.data import Candidate, Mention
from i2cr.eval import hybrid
from i2cr.graph import Context, graph, resources
from i2cr.prompts import profile

NAMES = [c["name"] for c in JORDAN_CANDIDATES]


def top_p_and_order(ctx, state):
    r = resources.ranker(ctx).rank(state["mention"], state["context"], [], state["candidates"])
    return float(r.probs[r.best]), [state["candidates"][i]["name"] for i in r.order]


def hybrid_events(out, node=None):
    return [e for e in out["events"] if e["type"] == "tes_hybrid" and node in (None, e.get("node"))]


def test_settings():
    ctx = Context(tes_strategy="hybrid")
    assert (ctx.hybrid_threshold, ctx.hybrid_top_k) == (0.9, 5)
    assert ctx.uses_llm and ctx.uses_ranker and not ctx.llm_picks_tools
    assert ctx.alpha == Context(tes_strategy="retrieval").alpha  # the ranker's fitted alpha
    assert Context(llm="embedded").llm_picks_tools and not Context().uses_llm  # unchanged
    for bad in ({"hybrid_threshold": 1.5}, {"hybrid_top_k": 0}, {"tes_strategy": "mixed"}):
        with pytest.raises(ValueError):
            Context(**bad)


def test_confident_ranker_answers_without_an_llm_call_even_in_vif_rounds(jordan):
    """The ranker's top probability reaches the threshold in every round: no LLM call at all, also
    in VIF (the hybrid takes the fixed tool order), and each decision is recorded."""
    state = jordan(precomputed_clues=CLUES)
    fake = ScriptedChatModel(script=[])  # any call would fail and be recorded
    ctx = Context(chat_model=fake, tes_strategy="hybrid", hybrid_threshold=0.0,
                  icr_threshold=-1e9, iav_mode="caption", caption_threshold=1e9,
                  tool_backend="precomputed")
    out = graph.invoke(state, context=ctx)
    assert fake.calls == [] and out["llm_calls"] == 0
    assert len(out["tools_used"]) == 4  # every VIF round ran, in the fixed order
    evs = hybrid_events(out, "tes")
    assert len(evs) == 5 and all(e["path"] == "ranker" and not e["unsure"] for e in evs)
    p, order = top_p_and_order(ctx, state)
    assert evs[0]["p"] == pytest.approx(p, abs=1e-4) and out["first_answer"] == order[0]
    (rev,) = hybrid_events(out, "review")
    assert rev["path"] == "ranker" and rev["answer"] == out["answer"]
    assert out["path"][-2:] == ["review", "final"]


def test_unconfident_ranker_asks_the_llm_among_its_top_k_only(jordan):
    state = jordan()
    probe = Context(tes_strategy="hybrid")
    p, order = top_p_and_order(probe, state)
    assert p < 0.999
    fake = ScriptedChatModel(script=[f"Answer: {order[1]}"])
    ctx = Context(chat_model=fake, tes_strategy="hybrid", hybrid_threshold=min(1.0, p + 1e-3),
                  hybrid_top_k=2, icr_threshold=-1e9, iav_mode="off")
    out = graph.invoke(state, context=ctx)
    assert out["llm_calls"] == 1 and len(fake.calls) == 1
    offered, _ = profile("i2cr").offered(fake.calls[0]["messages"][-1], NAMES)
    assert offered == [n for n in NAMES if n in order[:2]]  # the top 2, in the list's order
    assert out["answer"] == order[1]  # the LLM's choice stands
    (tes_ev,) = hybrid_events(out, "tes")
    assert tes_ev["unsure"] and tes_ev["path"] == "ranker"  # the rounds are the ranker's
    (ev,) = hybrid_events(out, "review")
    assert ev["path"] == "llm" and ev["p"] == pytest.approx(p, abs=1e-4)
    assert sorted(ev["top_k"]) == sorted(order[:2])
    assert (ev["ranker_answer"], ev["answer"]) == (order[0], order[1])
    # just below the ranker's probability the ranker answers
    fake2 = ScriptedChatModel(script=[])
    ctx2 = Context(chat_model=fake2, tes_strategy="hybrid", hybrid_threshold=max(0.0, p - 1e-3),
                   icr_threshold=-1e9, iav_mode="off")
    out2 = graph.invoke(state, context=ctx2)
    assert fake2.calls == [] and out2["answer"] == order[0]


def test_unsure_ranker_through_rechoices_and_clue_rounds_asks_the_llm_once(jordan):
    """ICR rejects a choice in every round (one re-choice each) and IAV fails every round, so all
    four VIF clue rounds run, the ranker unsure throughout: the LLM is asked once, at the end,
    about the answer that stands, with every clue gathered, and its answer stands."""
    state = jordan(precomputed_clues=CLUES)
    asked = []

    def last_offered(messages, tools):
        offered, _ = profile("i2cr").offered(messages[-1].content, NAMES)
        asked.append(offered)
        return f"Answer: {offered[-1]}"

    fake = ScriptedChatModel(then=last_offered)
    ctx = Context(chat_model=fake, tes_strategy="hybrid", hybrid_threshold=1.0, hybrid_top_k=3,
                  icr_threshold=1e9, max_reflections=1, iav_mode="caption",
                  caption_threshold=1e9, tool_backend="precomputed")
    out = graph.invoke(state, context=ctx)
    decisions = [e["decision"] for e in out["events"] if e["type"] == "icr"]
    assert decisions.count("reject_and_rechoose") == 5 and len(out["tools_used"]) == 4
    assert len(fake.calls) == 1 and out["llm_calls"] == 1
    tes_evs = hybrid_events(out, "tes")
    assert len(tes_evs) == 10 and all(e["unsure"] for e in tes_evs)
    prompt = fake.calls[0]["messages"][-1]
    assert all(t in prompt for t in ("CHICAGO BULLS 23", "a basketball player dunking",
                                     "a basketball hoop", "arena"))  # every clue so far
    (ev,) = hybrid_events(out, "review")
    assert ev["path"] == "llm" and ev["round"] == 5 and ev["reviews"] == "choice"
    assert len(asked[0]) == 3 and sorted(ev["top_k"]) == sorted(asked[0])
    assert out["answer"] == ev["answer"] == asked[0][-1]  # the LLM's answer stands


def test_standing_text_answer_is_asked_about_as_round_1_saw_it(jordan):
    """With fallback='text' and no round passing IAV, round 1's text answer stands: the one LLM
    call is about it, with round 1's prompt (no clue), and the LLM's answer is the result."""
    state = jordan(precomputed_clues=CLUES)
    asked = []

    def last_offered(messages, tools):
        asked.append(messages[-1].content)
        return f"Answer: {profile('i2cr').offered(messages[-1].content, NAMES)[0][-1]}"

    fake = ScriptedChatModel(then=last_offered)
    ctx = Context(chat_model=fake, tes_strategy="hybrid", hybrid_threshold=1.0, hybrid_top_k=2,
                  icr_threshold=-1e9, iav_mode="caption", caption_threshold=1e9,
                  tool_backend="precomputed", fallback="text")
    out = graph.invoke(state, context=ctx)
    assert len(out["tools_used"]) == 4 and len(fake.calls) == 1
    assert not any(t in asked[0] for t in ("CHICAGO BULLS", "a basketball hoop", "arena"))
    (ev,) = hybrid_events(out, "review")
    assert (ev["path"], ev["reviews"], ev["round"]) == ("llm", "text_answer", 1)
    assert out["final_reason"] == "no_round_passed_iav"
    assert out["answer"] == out["text_answer"] == ev["answer"] != ev["ranker_answer"]


def test_failed_llm_leaves_the_rankers_best(jordan):
    state = jordan()
    p, order = top_p_and_order(Context(tes_strategy="hybrid"), state)
    fake = ScriptedChatModel(script=[RuntimeError("backend down"), "qqq zzz"])
    ctx = Context(chat_model=fake, tes_strategy="hybrid", hybrid_threshold=min(1.0, p + 1e-3),
                  icr_threshold=-1e9, iav_mode="off")
    out = graph.invoke(state, context=ctx)
    assert out["answer"] == order[0] and len(fake.calls) == 2
    kinds = [e["type"] for e in out["events"]]
    assert "llm_error" in kinds and "unmappable_answer" in kinds
    (fb,) = [e for e in out["events"] if e["type"] == "tes_fallback"]
    assert fb["method"] == "ranker_fallback"


def test_the_reviewed_answer_is_the_one_the_rounds_settle_on(jordan, monkeypatch):
    """The review's LLM answer is recorded in the round that stands (here round 1, which passed
    IAV), so evaluation's stage answer after the last round, read off the record's rounds, is the
    graph's answer; and the review reuses TES's ranking of that round instead of ranking again."""
    from i2cr.eval.metrics import answer_after_vif
    from i2cr.linker import link_mention
    from i2cr.ranker.model import Ranker

    m = _mention(names=NAMES)
    m.clues = dict(CLUES)
    state = m.to_input()
    p, order = top_p_and_order(Context(tes_strategy="hybrid"), state)
    assert p < 0.999
    ranked = []
    real_rank = Ranker.rank
    monkeypatch.setattr(Ranker, "rank", lambda self, *a, **k: ranked.append(1) or
                        real_rank(self, *a, **k))
    fake = ScriptedChatModel(script=[f"Answer: {order[1]}"])
    ctx = Context(chat_model=fake, tes_strategy="hybrid", hybrid_threshold=1.0, hybrid_top_k=2,
                  icr_threshold=-1e9, iav_mode="caption", caption_threshold=-1e9,
                  tool_backend="precomputed")
    rec = link_mention(m, ctx)
    assert rec["error"] is None and rec["final_reason"] == "iav_passed_text"
    (ev,) = hybrid_events(rec, "review")
    assert (ev["path"], ev["ranker_answer"], ev["answer"]) == ("llm", order[0], order[1])
    assert rec["answer"] == order[1] and len(rec["rounds"]) == 1
    assert answer_after_vif(rec, len(rec["rounds"])) == rec["answer"]  # one rule decides
    assert rec["rounds"][0]["answer"] == order[1] and rec["rounds"][0]["ranker_answer"] == order[0]
    assert len(ranked) == 1  # TES's ranking of round 1, reused by the review


def _mention(mid="m1", label="Michael Jordan", names=NAMES):
    cands = [Candidate(c["name"], c["desc"]) for c in JORDAN_CANDIDATES if c["name"] in names]
    return Mention(id=mid, mention="Jordan", context="Jordan dunks in the 1991 NBA Finals.",
                   candidates=cands, label=label)


@pytest.mark.parametrize("prof", ["i2cr", "paper"])
def test_oracle_of_known_accuracy(prof):
    build = profile(prof).build
    m = _mention()
    cands = [c.to_dict() for c in m.candidates]

    def ask(oracle, offered, n=200):
        chat = oracle.chat_model()
        got = []
        with oracle.serving(m):
            for _ in range(n):
                msg = chat.invoke(build(mention="Jordan", context="c", candidates=offered))
                got.append(profile(prof).offered(build(mention="Jordan", context="c",
                                                       candidates=offered)[1].content, NAMES)[0]
                           and msg.content)
        return got

    right = profile(prof).answer("Michael Jordan")
    assert set(ask(Oracle(1.0, prompt_profile=prof), cands)) == {right}
    assert right not in ask(Oracle(0.0, prompt_profile=prof), cands)
    hits = ask(Oracle(0.8, prompt_profile=prof), cands).count(right)
    assert 130 < hits < 190  # about 80% of 200
    without = [c for c in cands if c["name"] != "Michael Jordan"]
    answers = set(ask(Oracle(1.0, prompt_profile=prof), without))
    assert len(answers) > 1 and right not in answers  # a random offered candidate
    assert ask(Oracle(0.8, seed=3, prompt_profile=prof), cands) == \
        ask(Oracle(0.8, seed=3, prompt_profile=prof), cands)  # seeded


def test_curve_script_on_a_few_records(tmp_path, capsys):
    data = {f"m{i}": {"mention": "Jordan", "mention_context": ctx,
                      "Candentity": JORDAN_CANDIDATES}
            for i, ctx in enumerate(["Jordan dunks during the 1991 NBA Finals.",
                                     "Jordan directed the horror film Get Out.",
                                     "Jordan borders Israel and Saudi Arabia.",
                                     "Jordan starred in Creed."])}
    labels = dict(zip(data, ["Michael Jordan", "Jordan Peele", "Jordan", "Michael B. Jordan"],
                      strict=True))
    (tmp_path / "d.json").write_text(json.dumps(data))
    (tmp_path / "l.json").write_text(json.dumps(labels))
    out = tmp_path / "curve.json"
    rc = hybrid.main([str(tmp_path / "d.json"), str(tmp_path / "l.json"), "--llm", "scripted:1.0",
                      "--thresholds", "0,1", "--top-k", "4", "--set", "icr_threshold=-1",
                      "--set", "iav_mode=off", "--out", str(out)])
    assert rc == 0
    points = {p["point"]: p for p in json.loads(out.read_text())["points"]}
    assert list(points) == ["ranker", "llm", "hybrid 0", "hybrid 1"]
    assert points["ranker"]["llm_calls_per_mention"] == 0
    assert points["hybrid 0"]["llm_calls_per_mention"] == 0
    assert points["hybrid 0"]["top1"] == points["ranker"]["top1"]
    h1 = points["hybrid 1"]
    assert h1["answers_by_llm"] >= 3 and h1["answers_by_ranker"] + h1["answers_by_llm"] == 4
    assert h1["llm_calls_per_mention"] == h1["answers_by_llm"] / 4
    assert h1["top1"] == 1.0 and points["llm"]["top1"] == 1.0  # the oracle is always right
    assert points["llm"]["llm_calls_per_mention"] == 1.0
    table = capsys.readouterr().out
    assert "| hybrid 1 |" in table and "| llm | 1.00 |" in table


def test_curve_script_refuses_bad_settings(tmp_path, capsys):
    (tmp_path / "d.json").write_text("{}")
    (tmp_path / "l.json").write_text("{}")
    rc = hybrid.main([str(tmp_path / "d.json"), str(tmp_path / "l.json"), "--thresholds", "2",
                      "--out", str(tmp_path / "c.json")])
    assert rc == 2 and "hybrid_threshold" in capsys.readouterr().err


def test_oracle_knows_its_gold_spelled_as_another_title():
    # a label spelled as a title ('Michael_Jordan') names the candidate 'Michael Jordan', as
    # the results' correct says: an oracle of accuracy 1 answers it, one of accuracy 0 never
    m = _mention(label="michael_jordan")
    build = profile("i2cr").build
    cands = [c.to_dict() for c in m.candidates]
    right = profile("i2cr").answer("Michael Jordan")

    def ask(oracle, n=40):
        chat = oracle.chat_model()
        with oracle.serving(m):
            return [chat.invoke(build(mention="Jordan", context="c", candidates=cands)).content
                    for _ in range(n)]

    assert set(ask(Oracle(1.0))) == {right}
    assert right not in ask(Oracle(0.0))
