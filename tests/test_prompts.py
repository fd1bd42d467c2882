"""TES prompt profiles: the exact text of every prompt form, pinned by hand-written golden files.

The ``paper`` goldens were written from I2CR-METHOD.md ("The prompt layout the released LoRA adapter
was trained on"); the ``i2cr`` ones pin the project's own (default) profile as it was. The graph
tests check that the graph sends these very prompts, in round 1, in a re-choice and in a clue
round, and maps the adapter's answers.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fakes import ScriptedChatModel

from i2cr.graph import Context, graph
from i2cr.matching import map_answer
from i2cr.prompts import PROFILES, profile

GOLDEN = Path(__file__).parent / "golden"

CANDS = [
    {"name": "Ed Rendell", "desc": "Edward Gene Rendell is an American lawyer and politician. He "
     "served as the 45th Governor of Pennsylvania from 2003 to 2011."},
    {"name": "Ruth Rendell", "desc": "Ruth Rendell was an English author of thrillers and "
     "psychological murder mysteries."},
    {"name": "Kenneth W. Rendell", "desc": "Kenneth W. Rendell is an American dealer in historical "
     "documents, who exposed the 'Hitler Diaries'."},
    {"name": "Don Rendell", "desc": ""},
]
MENTION, CONTEXT = "Rendell", "Governor Ed Rendell's budget was announced in Harrisburg."
OCR = {"tool": "ocr", "text": "GOVERNOR RENDELL  2004\n budget", "ok": True}
CAPTION = {"tool": "caption", "text": "a man speaking at a podium", "ok": True}
NOT_RUTH = [c for c in CANDS if c["name"] != "Ruth Rendell"]

FORMS = {  # golden file -> (profile, builder keywords)
    "paper_round1": ("paper", {}),
    "paper_round1_nil": ("paper", {"allow_nil": True}),
    "paper_clue": ("paper", {"clues": [OCR]}),
    "paper_clues_dict": ("paper", {"clues": [OCR, CAPTION]}),
    "paper_rechoice": ("paper", {"candidates": NOT_RUTH, "excluded": ["Ruth Rendell"]}),
    "paper_retry_nil": ("paper", {"allow_nil": True, "retry_note": PROFILES["paper"].retry_note}),
    "i2cr_round1": ("i2cr", {}),
    "i2cr_rechoice_clue_nil": ("i2cr", {"candidates": NOT_RUTH, "excluded": ["Ruth Rendell"],
                                        "clues": [OCR], "allow_nil": True}),
}


def render(messages) -> str:
    system, user = (m.content for m in messages)
    return f"[system]\n{system}\n[user]\n{user}\n"


def build(name: str, **kw):
    args = {"mention": MENTION, "context": CONTEXT, "candidates": CANDS, **kw}
    return profile(name).build(**args)


@pytest.mark.parametrize("form", sorted(FORMS))
def test_prompt_equals_its_golden_file(form):
    name, kw = FORMS[form]
    expected = (GOLDEN / f"{form}.txt").read_text(encoding="utf-8")
    assert render(build(name, **kw)) == expected


@pytest.mark.parametrize("form", sorted(FORMS))
def test_offered_candidates_read_back_from_each_form(form):
    name, kw = FORMS[form]
    user = build(name, **kw)[1].content
    names, nil = profile(name).offered(user, [c["name"] for c in CANDS])
    assert names == [c["name"] for c in kw.get("candidates", CANDS)]
    assert nil is bool(kw.get("allow_nil"))


def test_default_profile_is_the_projects_own():
    assert Context().prompt_profile == "i2cr"
    with pytest.raises(ValueError, match="prompt_profile"):
        Context(prompt_profile="llama")


@pytest.mark.parametrize("reply, expected", [
    ("<|ANSWER|>: 3. Ed Rendell", "Ed Rendell"),  # the number names another: the name decides
    ("<|ANSWER|>: 3", "Kenneth W. Rendell"),
    ("Step 3: select.\n<|ANSWER|>: 2. Ruth Rendell", "Ruth Rendell"),
    ("<|ANSWER|>: <Don Rendell>", "Don Rendell"),
    ("<|ANSWER|>: nil", "nil"),
    (PROFILES["paper"].answer("Kenneth W. Rendell"), "Kenneth W. Rendell"),
    (PROFILES["i2cr"].answer("Kenneth W. Rendell"), "Kenneth W. Rendell"),
])
def test_adapter_answers_map_onto_the_candidate(reply, expected):
    assert map_answer(reply, [c["name"] for c in CANDS], allow_nil=True).name == expected


def _state(**kw):
    return {"sample_id": "r1", "mention": MENTION, "context": CONTEXT,
            "candidates": [dict(c) for c in CANDS], "image": None, "precomputed_clues": None,
            "allow_nil": False, **kw}


def test_graph_sends_the_paper_prompts_round_one_and_rechoice():
    """ICR rejects everything: the first answer (Ruth) is excluded and TES asks again in the
    re-choice form; the adapter's numbered answer is mapped."""
    fake = ScriptedChatModel(script=["<|ANSWER|>: 2. Ruth Rendell", "<|ANSWER|>: 1. Ed Rendell"])
    ctx = Context(chat_model=fake, prompt_profile="paper", icr_threshold=1e9, max_reflections=1,
                  iav_mode="off")
    out = graph.invoke(_state(), context=ctx)
    sent = [f"[system]\n{c['messages'][0]}\n[user]\n{c['messages'][1]}\n" for c in fake.calls]
    assert sent == [(GOLDEN / "paper_round1.txt").read_text(encoding="utf-8"),
                    (GOLDEN / "paper_rechoice.txt").read_text(encoding="utf-8")]
    answers = [e["mapped"] for e in out["events"] if e["type"] == "tes_answer"]
    assert answers == ["Ruth Rendell", "Ed Rendell"]


def test_graph_sends_the_paper_prompt_in_a_clue_round():
    """IAV (caption bridge, a threshold nothing passes) fails, VIF fetches the OCR clue in the fixed
    order, and round 2's prompt carries it as 'mention image information'."""
    fake = ScriptedChatModel(script=["<|ANSWER|>: Ed Rendell"] * 2)
    clues = {"OCR text": OCR["text"], "Caption": CAPTION["text"]}
    ctx = Context(chat_model=fake, prompt_profile="paper", icr_threshold=-1e9, iav_mode="caption",
                  caption_threshold=1e9, tools="ocr", tool_backend="precomputed",
                  vif_llm_choice=False)
    out = graph.invoke(_state(precomputed_clues=clues), context=ctx)
    assert out["tools_used"] == ["ocr"] and len(fake.calls) == 2
    round2 = f"[system]\n{fake.calls[1]['messages'][0]}\n[user]\n{fake.calls[1]['messages'][1]}\n"
    assert round2 == (GOLDEN / "paper_clue.txt").read_text(encoding="utf-8")
