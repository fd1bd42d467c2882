"""`i2cr sft export`: TES training examples as the graph asks them, in three formats."""

from __future__ import annotations

import json

import pytest
from fakes import ScriptedChatModel

from i2cr.cli import main
from i2cr.graph import Context, graph
from i2cr.matching import map_answer
from i2cr.prompts import profile
from i2cr.sft import as_record, export, iter_examples

CANDS = [
    {"name": "Michael Jordan", "desc": "Name: Michael Jordan. Sex: male. Occupation: basketball player."},
    {"name": "Jordan Peele", "desc": "Name: Jordan Peele. Sex: male. Occupation: film director."},
    {"name": "Jordan", "desc": "Jordan is a country in Western Asia."},
    {"name": "Michael B. Jordan", "desc": "Name: Michael B. Jordan. Sex: male. Occupation: actor."},
]
CLUES = {"OCR text": "CHICAGO BULLS 23", "Caption": "a basketball player dunking"}
DATA = {
    "m1": {"mention": "Jordan", "mention_context": "Jordan dunks in the 1991 NBA Finals.",
           "Candentity": CANDS, "mention_imgdesc_Azure": CLUES},
    "m2": {"mention": "Peele", "mention_context": "Peele directed Get Out.", "Candentity": CANDS,
           "allow_nil": True},
    "m3": {"mention": "Paris", "mention_context": "Paris took Helen to Troy.", "Candentity": CANDS},
    "m4": {"mention": "Jordan", "mention_context": "Jordan at the 1992 Olympics.",
           "Candentity": CANDS},
}
LABELS = {"m1": "Michael Jordan", "m2": "Jordan Peele", "m3": "nil", "m4": "Scottie Pippen"}
NAMES = [c["name"] for c in CANDS]


@pytest.fixture
def files(tmp_path):
    data, labels = tmp_path / "data.json", tmp_path / "labels.json"
    data.write_text(json.dumps(DATA))
    labels.write_text(json.dumps(LABELS))
    return data, labels


def examples(files, **kw):
    seed = kw.pop("seed", 0)
    return list(iter_examples(*files, Context(**kw), seed=seed))


def offered(ex, prof="i2cr"):
    return profile(prof).offered(ex.user, NAMES)


@pytest.mark.parametrize("prof", ["i2cr", "paper"])
def test_forms_of_each_record(files, prof):
    exs = examples(files, prompt_profile=prof)
    forms = {(e.record, e.form) for e in exs}
    assert forms == {("m1", "round1"), ("m1", "clue:ocr"), ("m1", "clue:caption"),
                     ("m1", "rechoice"), ("m2", "round1"), ("m2", "rechoice"), ("m2", "nil"),
                     ("m3", "round1"), ("m3", "rechoice")}  # m4's gold is no candidate: skipped
    gold = {"m1": "Michael Jordan", "m2": "Jordan Peele", "m3": "nil"}
    for e in exs:
        names, nil_ok = offered(e, prof)
        want = "nil" if e.form == "nil" else gold[e.record]
        assert e.answer == profile(prof).answer(want)
        assert map_answer(e.answer, names, allow_nil=nil_ok).name == want  # the answer maps back
        assert nil_ok is (e.record in ("m2", "m3"))


def test_nil_examples_leave_the_gold_out(files):
    nil = [e for e in examples(files) if e.form == "nil"]
    assert [e.record for e in nil] == ["m2"]
    names, nil_ok = offered(nil[0])
    assert "Jordan Peele" not in names and len(names) == 3 and nil_ok
    assert nil[0].answer == "Answer: nil"
    m3 = [e for e in examples(files) if e.record == "m3"]
    assert all(e.answer == "Answer: nil" for e in m3)  # a nil gold answers nil in every form


def test_rechoice_examples_name_an_excluded_wrong_candidate(files):
    for e in (e for e in examples(files) if e.form == "rechoice"):
        names, _ = offered(e)
        excluded = e.user.split("Excluded (their descriptions did not match the context): ")[1]
        excluded = excluded.split("\n")[0]
        assert excluded in NAMES and excluded not in names and len(names) == 3
        assert excluded != {"m1": "Michael Jordan", "m2": "Jordan Peele"}.get(e.record)


def test_clue_rounds_carry_their_own_clue(files):
    clue = {e.form: e.user for e in examples(files) if e.form.startswith("clue:")}
    assert "CHICAGO BULLS 23" in clue["clue:ocr"] and "dunking" not in clue["clue:ocr"]
    assert "dunking" in clue["clue:caption"] and "CHICAGO" not in clue["clue:caption"]
    cum = {e.form: e.user for e in examples(files, clue_mode="cumulative")
           if e.form.startswith("clue:")}
    assert "CHICAGO BULLS 23" in cum["clue:caption"] and "dunking" in cum["clue:caption"]


@pytest.mark.parametrize("prof", ["i2cr", "paper"])
def test_examples_are_the_prompts_the_graph_sends(files, prof):
    """Round 1 and the OCR round of m1, with the candidates in the example's order, are sent by
    the graph word for word."""
    exs = {e.form: e for e in examples(files, prompt_profile=prof) if e.record == "m1"}
    for form, n_calls in (("round1", 1), ("clue:ocr", 2)):
        ex = exs[form]
        order = offered(ex, prof)[0]
        state = {"sample_id": "m1", "mention": "Jordan", "context": DATA["m1"]["mention_context"],
                 "candidates": [next(c for c in CANDS if c["name"] == n) for n in order],
                 "image": None, "precomputed_clues": CLUES, "allow_nil": False}
        fake = ScriptedChatModel(script=["Answer: Michael Jordan"] * 2)
        ctx = Context(chat_model=fake, prompt_profile=prof, icr_threshold=-1e9, iav_mode="caption",
                      caption_threshold=1e9, tools="ocr", tool_backend="precomputed",
                      vif_llm_choice=False)
        graph.invoke(state, context=ctx)
        assert fake.calls[n_calls - 1]["messages"] == [ex.system, ex.user]


def test_deterministic_for_a_seed_and_shuffled(files, tmp_path):
    a, b, c = (tmp_path / f"{n}.jsonl" for n in "abc")
    export(*files, a, seed=7)
    export(*files, b, seed=7)
    export(*files, c, seed=8)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    orders = {tuple(offered(e)[0]) for e in examples(files, seed=7) if e.form != "nil"
              and e.form != "rechoice"}
    assert len(orders) > 1  # candidates are shuffled, not in the file's order every time


def test_format_shapes(files):
    ex = examples(files)[0]
    assert as_record(ex, "openai") == {"messages": [
        {"role": "system", "content": ex.system}, {"role": "user", "content": ex.user},
        {"role": "assistant", "content": ex.answer}]}
    assert as_record(ex, "sharegpt") == {"conversations": [
        {"from": "human", "value": ex.user}, {"from": "gpt", "value": ex.answer}],
        "system": ex.system}
    assert as_record(ex, "alpaca") == {"instruction": ex.user, "input": "", "output": ex.answer,
                                       "system": ex.system}


def test_cli_bad_record_is_named_counted_and_the_rest_exported(files, tmp_path, capsys):
    data, labels = files
    bad = dict(DATA, broken={"mention": 42, "mention_context": "x", "Candentity": CANDS},
               unlabelled={"mention": "Jordan", "mention_context": "x", "Candentity": CANDS})
    data.write_text(json.dumps(bad))
    labels.write_text(json.dumps({**LABELS, "broken": "Jordan"}))
    out = tmp_path / "train.jsonl"
    rc = main(["sft", "export", str(data), str(labels), "--out", str(out), "--format",
               "sharegpt", "--prompt-profile", "paper", "--seed", "3"])
    err = capsys.readouterr().err
    assert rc == 1
    lines = [x for x in err.splitlines() if "record '" in x]
    assert len(lines) == 2
    assert "record 'broken'" in lines[0] and "mention" in lines[0]
    assert "record 'unlabelled'" in lines[1] and "no gold label" in lines[1]
    assert "2 bad record(s)" in err and "1 skipped" in err
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(recs) == 9 and all(set(r) == {"conversations", "system"} for r in recs)
    assert all("<|ANSWER|>: " in r["conversations"][1]["value"] for r in recs)
    rc = main(["sft", "export", str(files[0]), str(labels), "--out", str(out)])
    assert rc == 1  # still the same bad records
    data.write_text(json.dumps(DATA))
    assert main(["sft", "export", str(data), str(labels), "--out", str(out)]) == 0
