"""Every route of the I2CR algorithm, on the real compiled graph.

The LLM is a scripted fake (it supports ``bind_tools``); ICR runs the real packaged MiniLM and IAV
a real, tiny, randomly initialised open_clip model. Thresholds are set from the models' own scores
so that each test forces the branch it is about.
"""

from __future__ import annotations

from conftest import CLUES
from fakes import ScriptedChatModel, tool_call
from langchain_core.messages import AIMessage

from i2cr.graph import graph, resources
from i2cr.texts import entity_text, icr_query

ALWAYS = -1e9  # a threshold every score passes
NEVER = 1e9  # a threshold no score passes


def run(state, ctx):
    return graph.invoke(state, context=ctx)


def icr_scores(ctx, state, names):
    emb = resources.embedder(ctx)
    q = icr_query(state["mention"], state["context"], [])
    by = {c["name"]: c for c in state["candidates"]}
    return dict(zip(names, emb.similarity(q, [entity_text(by[n]) for n in names]), strict=True))


def events(out, kind):
    return [e for e in out["events"] if e["type"] == kind]


def test_text_answer_passes_iav_after_one_llm_call(settings, jordan, image_file):
    fake = ScriptedChatModel(script=["Answer: Michael Jordan"])
    out = run(jordan(image=image_file), settings(fake, icr_threshold=ALWAYS, iav_threshold=ALWAYS))
    assert out["path"] == ["prepare", "tes", "icr", "iav", "final"]
    assert out["answer"] == "Michael Jordan"
    assert out["final_reason"] == "iav_passed_text"
    assert out["llm_calls"] == 1 and len(fake.calls) == 1
    assert out["iav_mode"] == "clip" and isinstance(out["iav_score"], float)
    assert out["tools_used"] == []


def test_reflection_excludes_rejected_candidates(settings, jordan):
    state = jordan()
    s = icr_scores(settings(None), state, ["Jordan", "Michael Jordan"])
    assert s["Michael Jordan"] > s["Jordan"], s
    alpha = (s["Michael Jordan"] + s["Jordan"]) / 2
    fake = ScriptedChatModel(script=["Answer: Jordan", "Answer: Michael Jordan"])
    out = run(state, settings(fake, icr_threshold=alpha))
    assert out["path"] == ["prepare", "tes", "icr", "tes", "icr", "final"]
    assert out["answer"] == "Michael Jordan"
    first, second = fake.calls[0]["messages"][-1], fake.calls[1]["messages"][-1]
    assert "2. Jordan:" in first or "3. Jordan:" in first
    candidates_part = second.split("Candidates:")[1]
    assert "Jordan is a country" not in candidates_part  # the rejected one is not offered again
    assert "Excluded" in second and "Jordan" in second.split("Candidates:")[0]
    decisions = [e["decision"] for e in events(out, "icr")]
    assert decisions == ["reject_and_rechoose", "pass"]


def test_exhausted_reflections_keep_the_best_icr_score(settings, jordan):
    state = jordan()
    names = ["Jordan", "Jordan Peele", "Michael B. Jordan", "Michael Jordan"]
    s = icr_scores(settings(None), state, names)
    fake = ScriptedChatModel(script=[f"Answer: {n}" for n in names])
    out = run(state, settings(fake, icr_threshold=NEVER, max_reflections=3))
    assert out["path"] == ["prepare"] + ["tes", "icr"] * 4 + ["final"]
    best = max(names, key=s.get)
    assert out["answer"] == best
    assert events(out, "icr")[-1]["decision"] == "exhausted_keep_best"
    assert out["llm_calls"] == 4


def test_reflection_cap_is_configurable(settings, jordan):
    fake = ScriptedChatModel(script=["Answer: Jordan", "Answer: Jordan Peele"])
    out = run(jordan(), settings(fake, icr_threshold=NEVER, max_reflections=1))
    assert out["path"] == ["prepare", "tes", "icr", "tes", "icr", "final"]
    assert out["llm_calls"] == 2


def test_vif_runs_one_tool_per_round_in_the_order_the_llm_asks(settings, jordan, image_file):
    fake = ScriptedChatModel(script=[
        "Answer: Michael Jordan",
        AIMessage("", tool_calls=[tool_call("caption")]),
        "Answer: Michael Jordan",
        AIMessage("", tool_calls=[tool_call("tags"), tool_call("ocr", 1)]),  # 2nd call ignored
        "Answer: Michael Jordan",
        AIMessage("", tool_calls=[tool_call("ocr")]),
        "Answer: Michael Jordan",
        AIMessage("", tool_calls=[tool_call("dense_captions")]),
        "Answer: Michael Jordan",
    ])
    out = run(jordan(image=image_file, precomputed_clues=dict(CLUES)),
              settings(fake, icr_threshold=ALWAYS, iav_threshold=NEVER))
    assert out["tools_used"] == ["caption", "tags", "ocr", "dense_captions"]
    assert out["path"] == (["prepare", "tes", "icr", "iav"]
                           + ["vif", "tes", "icr", "iav"] * 4 + ["final"])
    assert out["final_reason"] == "no_round_passed_iav"
    assert out["answer"] == "Michael Jordan"  # the round-1 text answer stands
    assert out["llm_calls"] == 9 and not fake.script
    # each VIF call offers only the tools not used yet
    offered = [c["tools"] for c in fake.calls if c["tools"]]
    assert offered[0] == ["ocr", "caption", "dense_captions", "tags"]
    assert offered[1] == ["ocr", "dense_captions", "tags"]
    assert offered[3] == ["dense_captions"]
    # the clue of a round enters that round's TES prompt, and only that round's (paper mode)
    tes_prompts = [c["messages"][-1] for c in fake.calls if not c["tools"]]
    assert "a basketball player dunking" in tes_prompts[1]
    assert "basketball; sport" in tes_prompts[2] and "basketball player dunking" not in tes_prompts[2]
    assert events(out, "extra_tool_calls_ignored")[0]["ignored"] == ["ocr"]


def test_vif_clue_can_change_the_answer_when_it_passes_iav(settings, jordan, image_file):
    ctx = settings(None)
    clip = resources.clip(ctx)
    from i2cr.images import ImageLoader

    img = ImageLoader().load(image_file)
    cands = {c["name"]: c for c in jordan()["candidates"]}
    a, b = "Jordan Peele", "Michael Jordan"
    sa, sb = clip.score(img.image, [entity_text(cands[a]), entity_text(cands[b])])
    if sa > sb:
        a, b, sa, sb = b, a, sb, sa
    assert sb > sa
    fake = ScriptedChatModel(script=[f"Answer: {a}", AIMessage("", tool_calls=[tool_call("ocr")]),
                                     f"Answer: {b}"])
    out = run(jordan(image=image_file, precomputed_clues=dict(CLUES)),
              settings(fake, icr_threshold=ALWAYS, iav_threshold=(sa + sb) / 2))
    assert out["path"] == ["prepare", "tes", "icr", "iav", "vif", "tes", "icr", "iav", "final"]
    assert out["text_answer"] == a and out["answer"] == b
    assert out["final_reason"] == "iav_passed_round_2"
    assert "CHICAGO BULLS 23" in fake.calls[2]["messages"][-1]


def test_absent_or_invalid_tool_call_falls_back_to_the_paper_order(settings, jordan, image_file):
    fake = ScriptedChatModel(script=[
        "Answer: Michael Jordan",
        AIMessage("I would rather not call a tool."),  # no tool call -> ocr (paper order)
        "Answer: Michael Jordan",
        AIMessage("", tool_calls=[tool_call("telescope")]),  # unknown -> caption
        "Answer: Michael Jordan",
        RuntimeError("LLM is down"),  # error -> dense_captions
        "Answer: Michael Jordan",
    ])
    out = run(jordan(image=image_file, precomputed_clues=dict(CLUES)),
              settings(fake, icr_threshold=ALWAYS, iav_threshold=NEVER, max_vif_rounds=3))
    assert out["tools_used"] == ["ocr", "caption", "dense_captions"]
    hows = [e["how"] for e in events(out, "tool_call")]
    assert hows == ["fallback_no_tool_call", "fallback_invalid_tool", "fallback_llm_error"]
    assert events(out, "invalid_tool_call")[0]["requested"] == "telescope"
    assert out["path"].count("vif") == 3 and out["answer"] == "Michael Jordan"


def test_empty_clue_moves_on_to_the_next_tool_without_an_llm_round(settings, jordan, image_file):
    clues = dict(CLUES, **{"OCR text": ""})
    fake = ScriptedChatModel(script=["Answer: Michael Jordan", "Answer: Michael Jordan"])
    out = run(jordan(image=image_file, precomputed_clues=clues),
              settings(fake, icr_threshold=ALWAYS, iav_threshold=NEVER, vif_llm_choice=False,
                       max_vif_rounds=2))
    assert out["path"] == ["prepare", "tes", "icr", "iav", "vif", "vif", "tes", "icr", "iav", "final"]
    assert out["tools_used"] == ["ocr", "caption"]


def test_no_image_ends_with_the_text_answer(settings, jordan):
    fake = ScriptedChatModel(script=["Answer: Michael Jordan"])
    out = run(jordan(image=None), settings(fake, icr_threshold=ALWAYS, iav_threshold=ALWAYS))
    assert out["path"] == ["prepare", "tes", "icr", "final"]
    assert out["final_reason"] == "text_only"
    assert out["image_status"] == "absent" and out["iav_score"] is None


def test_corrupt_image_takes_the_no_image_path_with_a_reason(settings, jordan, corrupt_image):
    fake = ScriptedChatModel(script=["Answer: Michael Jordan"])
    out = run(jordan(image=corrupt_image), settings(fake, icr_threshold=ALWAYS))
    assert out["path"] == ["prepare", "tes", "icr", "final"]
    assert out["image_status"] == "corrupt"
    assert "cannot decode image" in out["image_reason"]
    assert events(out, "image_unusable")[0]["kind"] == "corrupt"


def test_missing_image_file_is_recorded(settings, jordan, tmp_path):
    fake = ScriptedChatModel(script=["Answer: Michael Jordan"])
    out = run(jordan(image=str(tmp_path / "nope.jpg")), settings(fake, icr_threshold=ALWAYS))
    assert out["image_status"] == "missing" and out["answer"] == "Michael Jordan"


def test_nil_when_the_context_says_so(settings, jordan):
    fake = ScriptedChatModel(script=["None of them fits. Answer: nil"])
    out = run(jordan(allow_nil=True, context="Jordan, the river, floods the valley."),
              settings(fake, icr_threshold=ALWAYS))
    assert out["answer"] == "nil" and out["is_nil"] is True
    assert out["path"] == ["prepare", "tes", "icr", "final"]
    assert "nil" in fake.calls[0]["messages"][-1]  # NIL is offered when allowed


def test_nil_is_not_an_answer_when_not_allowed(settings, jordan):
    fake = ScriptedChatModel(script=["Answer: nil", "Answer: nil"])
    out = run(jordan(allow_nil=False), settings(fake, icr_threshold=ALWAYS))
    assert out["answer"] in {c["name"] for c in jordan()["candidates"]}
    assert events(out, "tes_fallback")[0]["method"] == "embedding_fallback"


def test_garbage_answer_is_retried_then_recorded_and_handled(settings, jordan):
    fake = ScriptedChatModel(script=["¯\\_(ツ)_/¯ 42 !!", "qqqq zzzz"])
    out = run(jordan(), settings(fake, icr_threshold=ALWAYS, tes_retries=1))
    assert out["llm_calls"] == 2
    assert len(events(out, "unmappable_answer")) == 2
    assert "previous reply named no candidate" in fake.calls[1]["messages"][-1]
    assert out["answer"] == "Michael Jordan"  # the closest by embedding


def test_garbage_then_valid_answer_uses_the_retry(settings, jordan):
    fake = ScriptedChatModel(script=["I don't know", "Answer: Jordan Peele"])
    out = run(jordan(), settings(fake, icr_threshold=ALWAYS))
    assert out["answer"] == "Jordan Peele" and out["llm_calls"] == 2


def test_no_candidates_gives_nil_without_llm(settings, jordan):
    fake = ScriptedChatModel(script=[])
    out = run(jordan(candidates=[], allow_nil=True), settings(fake))
    assert out["path"] == ["prepare", "final"]
    assert out["answer"] == "nil" and out["final_reason"] == "no_candidates"
    assert fake.calls == []


def test_caption_bridge_when_no_image(settings, jordan):
    fake = ScriptedChatModel(script=["Answer: Michael Jordan"])
    out = run(jordan(precomputed_clues=dict(CLUES)),
              settings(fake, iav_mode="auto", icr_threshold=ALWAYS, caption_threshold=ALWAYS))
    assert out["iav_mode"] == "caption"
    assert out["path"] == ["prepare", "tes", "icr", "iav", "final"]
    assert out["final_reason"] == "iav_passed_text"


def test_retrieval_answers_nil_only_when_allowed(jordan):
    from i2cr.graph import Context

    unrelated = [{"name": "Paris Hilton", "desc": "Name: Paris Hilton. Sex: female. Birth: 1981."},
                 {"name": "Amman", "desc": "Amman is the capital of a country in Western Asia."}]
    ctx = Context(clue_cache="none")
    he = dict(mention="he", context="he dunks during the 1991 NBA Finals.", candidates=unrelated)
    out = run(jordan(allow_nil=True, **he), ctx)
    assert out["answer"] == "nil" and out["path"] == ["prepare", "tes", "icr", "final"]
    out = run(jordan(allow_nil=False, **he), ctx)
    assert out["answer"] in {"Paris Hilton", "Amman"}
    out = run(jordan(allow_nil=True), ctx)  # a fitting candidate is still chosen
    assert out["answer"] == "Michael Jordan"
    # the NIL model's p_link is lower when nothing fits than when a candidate does
    low = events(run(jordan(allow_nil=True, candidates=unrelated), ctx), "tes_answer")[0]
    high = events(out, "tes_answer")[0]
    assert low["p_link"] < high["p_link"]


def test_retrieval_event_scores_every_candidate_and_says_why_nil(jordan):
    from i2cr.graph import Context

    out = run(jordan(allow_nil=True), Context(clue_cache="none"))
    ev = events(out, "tes_answer")[0]
    assert [s["name"] for s in ev["scores"]][0] == "Michael Jordan"
    assert sorted(s["name"] for s in ev["scores"]) == sorted(c["name"] for c in jordan()["candidates"])
    assert abs(sum(s["p"] for s in ev["scores"]) - 1) < 0.01  # a softmax over the candidates
    assert ev["model"] == "no_prior" and ev["p_link"] >= ev["nil_threshold"]
    he = run(jordan(mention="he", context="he dunks during the finals.", allow_nil=True),
             Context(clue_cache="none"))
    ev = events(he, "tes_answer")[0]
    assert he["answer"] == "nil" and ev["p_link"] == 0.0 and ev["nil_reason"] == "a personal pronoun"
    cands = [{**c, "prior": p} for c, p in zip(jordan()["candidates"], [1.0, 0.5, 0.3, 0.2], strict=True)]
    ev = events(run(jordan(candidates=cands), Context(clue_cache="none")), "tes_answer")[0]
    assert ev["model"] == "prior"


def test_fallback_last_gives_the_last_rounds_answer_and_text_the_first(settings, jordan, image_file):
    def scripted():  # round 1 says Peele, every later round Michael Jordan; VIF in fixed order
        return ScriptedChatModel(script=["Answer: Jordan Peele"] + ["Answer: Michael Jordan"] * 2)

    base = dict(icr_threshold=ALWAYS, iav_threshold=NEVER, vif_llm_choice=False, max_vif_rounds=2)
    state = jordan(image=image_file, precomputed_clues=dict(CLUES))
    out = run(state, settings(scripted(), fallback="last", **base))
    assert [r["answer"] for r in out["rounds"]] == ["Jordan Peele", "Michael Jordan",
                                                           "Michael Jordan"]
    assert out["answer"] == "Michael Jordan" and out["fallback"] == "last"
    assert out["final_reason"] == "no_round_passed_iav_last_round"
    out = run(state, settings(scripted(), fallback="text", **base))
    assert out["answer"] == "Jordan Peele" and out["final_reason"] == "no_round_passed_iav"
    # with an LLM, 'auto' follows the paper: one clue per round, the text answer as fallback
    out = run(state, settings(scripted(), **base))
    assert out["fallback"] == "text" and out["answer"] == "Jordan Peele"


def test_cumulative_clues_enter_later_rounds_queries(settings, jordan, image_file):
    fake = ScriptedChatModel(script=["Answer: Michael Jordan"] * 3)
    run(jordan(image=image_file, precomputed_clues=dict(CLUES)),
        settings(fake, icr_threshold=ALWAYS, iav_threshold=NEVER, vif_llm_choice=False,
                 max_vif_rounds=2, clue_mode="cumulative"))
    prompts = [c["messages"][-1] for c in fake.calls]
    assert CLUES["OCR text"] not in prompts[0]
    assert CLUES["OCR text"] in prompts[1] and CLUES["Caption"] not in prompts[1]
    assert CLUES["OCR text"] in prompts[2] and CLUES["Caption"] in prompts[2]


def test_pruning_keeps_the_rankers_top_k_for_the_llm(settings, jordan):
    from i2cr.graph.tes import retrieval_ranking

    state = jordan()
    ctx = settings(ScriptedChatModel(script=["Answer: Michael Jordan"]), prune_k=2,
                   icr_threshold=ALWAYS)
    ranking = retrieval_ranking({**state, "round": 1, "clues": []}, ctx, state["candidates"])
    by_score = [state["candidates"][i]["name"] for i in ranking.order]
    fake = ctx.chat_model
    out = run(state, ctx)
    pruned = events(out, "candidates_pruned")[0]
    assert len(pruned["dropped"]) == len(state["candidates"]) - 2
    assert set(pruned["dropped"]) == set(by_score[2:])
    listed = [ln.split(". ", 1)[1].split(":")[0] for ln in fake.calls[0]["messages"][-1].splitlines()
              if ln[:1].isdigit() and ". " in ln]
    assert sorted(listed) == sorted(by_score[:2])  # the LLM sees only the two kept
    assert out["answer"] == "Michael Jordan"


def test_a_surname_whose_fuller_name_in_its_document_is_no_candidate_is_nil(jordan):
    """'Jordan' in a document that names 'Vernon Jordan' is Vernon Jordan: none of the candidates
    (the rule reads the document, not weights: textel's MSNBC had 'Walters' after 'Barbara
    Walters' linked to Mark Walters). Where the document's fuller name is a candidate, under a
    short given name too, the ranker answers; without NIL allowed, the best candidate stands."""
    from i2cr.graph import Context

    people = [c for c in jordan()["candidates"] if c["name"] != "Jordan"]  # no plain "Jordan"
    assert {"Michael Jordan", "Michael B. Jordan"} <= {c["name"] for c in people}
    ctx = Context(clue_cache="none")
    doc = dict(candidates=people, context="Jordan said the talks would go on.", allow_nil=True)
    out = run(jordan(document_mentions=["Vernon Jordan", "Clinton"], **doc), ctx)
    ev = events(out, "tes_answer")[0]
    assert out["answer"] == "nil" and ev["p_link"] == 0.0
    assert ev["nil_reason"] == "the document names it 'vernon jordan', which no candidate is"
    for named in ("Michael Jordan", "Mike Jordan"):
        out = run(jordan(document_mentions=[named], **doc), ctx)
        assert out["answer"] == "Michael Jordan", named
    out = run(jordan(document_mentions=["Vernon Jordan"], **{**doc, "allow_nil": False}), ctx)
    assert out["answer"] in {c["name"] for c in people}


def test_a_candidate_icr_rejected_is_still_a_candidate_to_the_nil_rule(jordan):
    """The fuller-name rule reads every candidate of the mention: after ICR rejected 'Michael
    Jordan', the document's 'Michael Jordan' was read as a name 'which no candidate is', and the
    re-choice was NIL by rule (ranker and LLM strategies alike), though it is a candidate."""
    from fakes import ScriptedChatModel

    from i2cr.graph import Context

    people = [c for c in jordan()["candidates"] if c["name"] != "Jordan"]
    doc = dict(candidates=people, context="Jordan said the talks would go on.", allow_nil=True,
               document_mentions=["Michael Jordan", "Bulls"])
    strict = dict(clue_cache="none", icr_threshold=0.99,  # ICR rejects every choice; NIL
                  nil_threshold=1e-6)  # only by rule (p_link 0)
    fake = ScriptedChatModel(script=["Answer: Michael Jordan", "Answer: Michael B. Jordan",
                                     "Answer: Jordan Peele", "Answer: Michael B. Jordan"])
    for ctx in (Context(**strict), Context(chat_model=fake, tes_strategy="llm", **strict)):
        out = run(jordan(**doc), ctx)
        answers = events(out, "tes_answer")
        assert len(answers) > 1 and answers[0]["mapped"] == "Michael Jordan"
        assert [a.get("nil_reason") for a in answers] == [None] * len(answers), ctx.tes_strategy
        assert out["answer"] != "nil"
    assert len(fake.calls) == len(answers) > 1  # the LLM chose every time: no rule answered


def test_the_hybrids_llm_review_does_not_overrule_a_nil_by_rule(jordan):
    """Hybrid TES: the ranker's NIL by the fuller-name rule stands without the LLM (the review
    asked it, the ranker being unsure among the Jordans, and the LLM, which does not see the
    document's 'Vernon Jordan', linked Michael Jordan); a NIL by p_link below the threshold is
    still the LLM's to review, as before."""
    from fakes import ScriptedChatModel

    from i2cr.graph import Context

    people = [c for c in jordan()["candidates"] if c["name"] != "Jordan"]
    doc = dict(candidates=people, context="Jordan said the talks would go on.", allow_nil=True)
    fake = ScriptedChatModel(script=["Answer: Michael Jordan"] * 2)
    ctx = Context(chat_model=fake, tes_strategy="hybrid", clue_cache="none", hybrid_threshold=0.999,
                  nil_threshold=1.0)  # the review asks whenever it may; every p_link is below 1
    out = run(jordan(document_mentions=["Vernon Jordan", "Clinton"], **doc), ctx)
    rev = [e for e in events(out, "tes_hybrid") if e["node"] == "review"]
    assert out["answer"] == "nil" and fake.calls == [] and out["llm_calls"] == 0
    assert rev[0]["path"] == "ranker" and "vernon jordan" in rev[0]["reason"]
    out = run(jordan(document_mentions=["Clinton"], **doc), ctx)
    tes = events(out, "tes_answer")[0]
    assert tes["mapped"] == "nil" and tes["nil_reason"].startswith("p_link")
    assert out["answer"] == "Michael Jordan" and len(fake.calls) == 1
