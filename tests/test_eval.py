"""The evaluation harness: metrics against hand-computed values, resume after a kill, reports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import EXAMPLE_IDS, EXAMPLES, SHARED

from i2cr.eval import metrics as M
from i2cr.eval.runner import ResultWriter, read_results


def rec(i, gold, first, text, final, rounds=(), calls=1, tools=(), elapsed=1.0, reason="x",
        path=("prepare", "tes", "icr", "final"), error=None):
    return {"id": str(i), "gold": gold, "first_answer": first, "text_answer": text,
            "answer": final, "rounds": list(rounds), "llm_calls": calls, "tools_used": list(tools),
            "elapsed_s": elapsed, "final_reason": reason, "path": list(path), "error": error,
            "events": [{"type": "tes_answer", "tokens": 100}] * calls, "scores": {"iav_mode": "clip"}}


RECORDS = [
    # 1: right from the start, IAV passes in round 1
    rec(1, "A", "A", "A", "A", rounds=[{"round": 1, "answer": "A", "iav_passed": True}],
        reason="iav_passed_text", elapsed=1.0),
    # 2: TES wrong, ICR fixes it, IAV fails, VIF round 2 answer C passes: wrong final
    rec(2, "B", "X", "B", "C", rounds=[{"round": 1, "answer": "B", "iav_passed": False},
                                      {"round": 2, "answer": "C", "iav_passed": True}],
        calls=3, tools=["ocr"], reason="iav_passed_round_2", elapsed=2.0),
    # 3: text answer wrong, fixed by VIF in round 3
    rec(3, "D", "E", "E", "D", rounds=[{"round": 1, "answer": "E", "iav_passed": False},
                                      {"round": 2, "answer": "E", "iav_passed": False},
                                      {"round": 3, "answer": "D", "iav_passed": True}],
        calls=5, tools=["ocr", "caption"], reason="iav_passed_round_3", elapsed=3.0),
    # 4: gold nil, predicted nil
    rec(4, "nil", "nil", "nil", "nil", reason="nil_chosen", elapsed=4.0),
    # 5: an error record counts as wrong
    {"id": "5", "gold": "F", "answer": None, "error": "DataError: bad"},
]


def test_metrics_match_hand_computed_values():
    m = M.compute(RECORDS, wall_s=20.0, max_vif=3)
    a = m["accuracy"]
    assert a["first"] == pytest.approx(2 / 5)  # 1 and 4
    assert a["icr"] == pytest.approx(3 / 5)  # 1, 2, 4
    assert a["iav"] == a["icr"]
    assert a["vif_1"] == pytest.approx(2 / 5)  # 2 switches to C at round 2 (wrong); 1, 4 right
    assert a["vif_2"] == pytest.approx(3 / 5)  # 3 switches to D at round 3
    assert a["vif_3"] == pytest.approx(3 / 5)
    assert a["final"] == pytest.approx(3 / 5)  # 1, 3, 4
    assert m["errors"] == 1 and m["labelled"] == 5
    assert m["nil"] == {"gold": 1, "predicted": 1, "precision": 1.0, "recall": 1.0, "f1": 1.0}
    assert m["accuracy_non_nil_gold"] == pytest.approx(2 / 4)  # of 1, 2, 3, 5 (an error): 1 and 3 are right
    assert m["cost"]["llm_calls_per_mention"] == pytest.approx((1 + 3 + 5 + 1 + 0) / 5)
    assert m["cost"]["tokens_per_mention"] == pytest.approx(100 * 10 / 5)
    assert m["cost"]["tool_calls_per_mention"] == pytest.approx(3 / 5)
    assert m["speed"]["latency_p50_s"] == pytest.approx(2.5)  # of 1, 2, 3, 4
    assert m["speed"]["latency_p95_s"] == pytest.approx(3.85)
    assert m["speed"]["mentions_per_s"] == pytest.approx(4 / 20)  # 5 is an error, not linked
    assert m["iav_gate"]["checked"] == 3 and m["iav_gate"]["pass_rate"] == pytest.approx(1 / 3)
    assert m["vif_changes"] == {"changed": 2, "fixed": 1, "broken": 1}
    assert m["routes"]["iav_passed_round_2"] == 1 and m["routes"]["error"] == 1


def test_failed_llm_calls_and_fallbacks_are_counted_and_warned_about():
    r = rec(1, "A", "A", "A", "A")
    r["events"] = [{"type": "llm_error", "node": "tes", "error": "APIConnectionError"},
                   {"type": "llm_error", "node": "tes", "error": "APIConnectionError"},
                   {"type": "tes_fallback", "choice": "A", "method": "embedding_fallback"},
                   {"type": "llm_error", "node": "vif", "error": "Timeout"}]
    c = M.compute([r, rec(2, "B", "B", "B", "B")])["cost"]
    assert c["llm_failed_calls"] == 3 and c["tes_fallbacks"] == 1
    assert M.compute(RECORDS)["cost"]["llm_failed_calls"] == 0


def test_torn_last_line_is_cut_and_nothing_is_counted_twice(tmp_path):
    p = tmp_path / "r.jsonl"
    w = ResultWriter(p)
    w.write({"id": "a", "answer": "A"})
    w.write({"id": "b", "answer": "B"})
    w.close()
    with p.open("a") as fh:
        fh.write('{"id": "c", "ans')  # killed mid-write
    w = ResultWriter(p, resume=True)
    assert w.done == {"a", "b"}
    w.write({"id": "c", "answer": "C"})
    w.close()
    assert [r["id"] for r in read_results(p)] == ["a", "b", "c"]


EVAL = [sys.executable, "-m", "i2cr.cli", "eval"]


@pytest.mark.integration
@pytest.mark.skipif(not SHARED.exists(), reason="shared WikiMEL dev data not present")
def test_eval_resumes_after_sigkill_with_the_same_metrics(tmp_path):
    data, labels = str(SHARED / "WikiMEL_dev.json"), str(SHARED / "WikiMEL_dev_label.json")
    n = 200  # enough that a kill lands mid-run at ~40 mentions/s
    args = [data, labels, "--sample", str(n), "--seed", "3", "--no-progress"]
    ref = subprocess.run(EVAL + args + ["--out-dir", str(tmp_path / "ref")], capture_output=True,
                         text=True, timeout=900)
    assert ref.returncode == 0, ref.stderr[-2000:]
    out = tmp_path / "killed"
    import random

    rng = random.Random(5)
    interrupted = 0
    for _ in range(3):  # SIGKILL three times at random points, then finish
        p = subprocess.Popen(EVAL + args + ["--out-dir", str(out), "--resume"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        res = out / "results.jsonl"
        deadline = time.time() + 300
        start = len(read_results(res)) if res.exists() else 0
        more = rng.choice([0, rng.randint(1, 60)])  # 0: killed while loading, before any result
        while time.time() < deadline and p.poll() is None:
            if res.exists() and len(read_results(res)) >= start + more:
                break
            time.sleep(0.02)
        time.sleep(rng.random() * 0.05)
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
            interrupted += len(read_results(res)) < n if res.exists() else 1
        p.wait()
    assert interrupted >= 2  # the kills did land in the middle of runs
    fin = subprocess.run(EVAL + args + ["--out-dir", str(out), "--resume"], capture_output=True,
                         text=True, timeout=900)
    assert fin.returncode == 0, fin.stderr[-2000:]
    ids = [r["id"] for r in read_results(out / "results.jsonl")]
    assert len(ids) == n and len(set(ids)) == n
    m_ref = json.loads((tmp_path / "ref" / "metrics.json").read_text())
    m_res = json.loads((out / "metrics.json").read_text())
    assert m_res["accuracy"] == m_ref["accuracy"] and m_res["routes"] == m_ref["routes"]
    assert (out / "report.md").read_text().count("| final |") == 1
    assert (out / "stages.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.integration
def test_eval_on_the_shipped_examples_reports_nil(tmp_path):
    p = subprocess.run(EVAL + [str(EXAMPLES / "mentions.json"), str(EXAMPLES / "labels.json"),
                               "--out-dir", str(tmp_path), "--no-progress", "--keep-order"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["labelled"] == len(EXAMPLE_IDS) and m["nil"]["gold"] == 2
    assert m["info"]["order"] == "original order (kept)" and m["info"]["strategy"] == "retrieval"
    assert m["cost"]["llm_calls_per_mention"] == 0
    # IAV's modes in words: 'jordan-nba' and the four text-only examples have neither image nor
    # clues, so IAV could not run (report.md said "IAV modes: {'None': 1, 'caption': 3}")
    assert m["iav_modes"] == {"caption": 3, "none": 5}
    assert "IAV modes: none 5, caption 3\n" in (tmp_path / "report.md").read_text()


@pytest.mark.integration
@pytest.mark.skipif(not SHARED.exists(), reason="shared WikiMEL dev data not present")
def test_bench_reports_the_pipeline_over_raw_ratio():
    from i2cr.eval.bench import bench

    r = bench(str(SHARED / "WikiMEL_dev.json"), str(SHARED / "WikiMEL_dev_label.json"), n=30)
    cold, warm = r["cold"], r["warm"]
    assert r["mentions"] == 30 and cold["texts_encoded"] > 30 and cold["entity_texts_from_store"] == 0
    assert warm["entity_texts_from_store"] > 0  # the warm run read entities from the store
    assert warm["texts_encoded"] < cold["texts_encoded"]
    for run_ in (cold, warm):  # the ratio is reported; its value depends on the machine's load
        assert run_["raw_model_s"] > 0
        assert run_["pipeline_over_raw"] == pytest.approx(run_["pipeline_s"] / run_["raw_model_s"],
                                                          abs=0.01)
        assert run_["llm_calls_per_mention"] == 0
    assert warm["accuracy_final"] == cold["accuracy_final"]  # the store changes speed, not answers


def test_stage_answers_follow_the_runs_fallback():
    rounds = [{"round": 1, "answer": "A", "iav_passed": False},
              {"round": 2, "answer": "B", "iav_passed": False},
              {"round": 4, "answer": "C", "iav_passed": False}]  # round 3's clue was empty
    r = rec(1, "C", "A", "A", "C", rounds=rounds, reason="no_round_passed_iav_last_round")
    r["fallback"] = "last"
    assert [M.answer_after_vif(r, k) for k in range(4)] == ["A", "B", "B", "C"]
    r["fallback"] = "text"
    assert [M.answer_after_vif(r, k) for k in range(4)] == ["A", "A", "A", "A"]
    r["rounds"][1]["iav_passed"] = True  # a round that passed IAV wins under either fallback
    assert [M.answer_after_vif(r, k) for k in range(4)] == ["A", "B", "B", "B"]
    r["fallback"] = "last"
    assert M.answer_after_vif(r, 3) == "B"


@pytest.mark.parametrize("fallback", ["text", "last"])
def test_the_graph_and_the_stage_metrics_settle_answers_by_one_rule(fallback):
    """``final`` and ``answer_after_vif`` both ask ``settle``: cut after the last round a record
    ran, the stage answer is the record's answer, for real runs with VIF rounds."""
    from i2cr.data import load_mentions
    from i2cr.graph import Context
    from i2cr.linker import link_mention

    wm = SHARED / "data" / "wikimel" / "WikiMEL_dev.json"
    ms = load_mentions(str(wm), None, strict=False)[:40] if wm.exists() else \
        load_mentions(str(EXAMPLES / "mentions.json"), None, strict=False)
    ctx = Context(fallback=fallback, clue_cache="none")
    recs = [link_mention(m, ctx) for m in ms]
    assert any(len(r["rounds"]) > 1 for r in recs)  # VIF ran
    for r in recs:
        assert r["error"] is None
        assert M.answer_after_vif(r, len(r["rounds"])) == r["answer"], r["id"]


@pytest.mark.parametrize("documents", [False, True])
def test_prefetch_encodes_every_text_the_graph_asks_for(tmp_path, documents):
    from i2cr.data import load_mentions
    from i2cr.eval.runner import prefetch, run
    from i2cr.graph import Context, resources

    data = EXAMPLES / "mentions.json"
    if documents:  # the ranker also compares the document's other names with each entity
        recs = json.loads(data.read_text())
        for r in recs.values():
            r["document_mentions"] = ["Chicago Bulls", "Boat Race", "Helen of Troy"]
            r["mention_imgpath"] = None if r["mention_imgpath"] is None else \
                str(EXAMPLES / r["mention_imgpath"])
        data = tmp_path / "with_documents.json"
        data.write_text(json.dumps(recs))
    items = load_mentions(data, EXAMPLES / "labels.json")
    ctx = Context(embedding_cache=str(tmp_path / "store"))
    assert ctx.query_clues == "cumulative"
    emb = resources.embedder(ctx)
    assert prefetch(items, ctx) > 0
    before = emb.encoded
    recs = list(run(items, ctx, progress=False))
    assert len(recs) == len(EXAMPLE_IDS) and any(len(r["rounds"]) > 2 for r in recs)  # VIF rounds did run
    assert emb.encoded == before  # nothing was left to encode one at a time


def test_a_record_is_correct_by_the_same_rule_the_metrics_use():
    from i2cr.data import Mention
    from i2cr.linker import result_record

    m = Mention(id="x", mention="Jordan", context="", candidates=[], label="Michael Jordan ")
    rec = result_record(m, {"answer": "michael jordan", "text_answer": "michael jordan",
                            "first_answer": "michael jordan"}, 0.0)
    assert rec["correct"] is True
    assert M.compute([rec])["accuracy"]["final"] == 1.0  # the record and the metrics agree
    rec = result_record(m, {"answer": None}, 0.0)
    assert rec["correct"] is False


def test_structured_answers_read_as_free_text_fail_an_eval():
    from i2cr.eval.report import failures

    ok = {"id": "a", "answer": "X", "gold": "X", "text_answer": "X", "first_answer": "X",
          "events": [{"type": "tes_answer", "answer_format": "structured"}]}
    fell = {**ok, "id": "b", "events": [{"type": "tes_answer", "answer_format": "text",
                                         "structured_error": "backend refused response_format"}]}
    assert failures(M.compute([ok])) == []
    m = M.compute([ok, fell])
    assert m["structured_fallback_mentions"] == 1
    assert any("structured" in f for f in failures(m))  # eval exits 1 on any failure


def test_prefetch_encodes_only_the_candidates_a_run_keeps(tmp_path):
    """The graph ranks a mention's first ``max_candidates``; prefetching encoded every candidate
    of the list (a hostile record of 5,000 cost 24 s of encoding, one of a million would not
    end), now only those, and the run still finds every text it asks for encoded."""
    from i2cr.data import Candidate, Mention
    from i2cr.eval.runner import prefetch, run
    from i2cr.graph import Context, resources

    cands = [Candidate(name=f"Listed entity {i}", desc=f"entity {i} of a long candidate list")
             for i in range(300)]
    m = Mention(id="many", mention="Listed entity", context="one entity of a long list",
                candidates=cands, allow_nil=True)
    ctx = Context(embedding_cache=str(tmp_path / "store"), max_candidates=5, iav_mode="off")
    emb = resources.embedder(ctx)
    assert 5 <= prefetch([m], ctx) < 20  # the 5 kept entities' texts and the queries
    before = emb.encoded
    [rec] = run([m], ctx, progress=False)
    assert rec["error"] is None and emb.encoded == before


def test_an_eval_with_no_record_labelled_fails_saying_so():
    # a labels file of other ids scored nothing: the accuracy was '—' and the exit code 0
    from i2cr.eval.report import failures

    rec = {"id": "a", "answer": "X", "text_answer": "X", "first_answer": "X", "error": None}
    assert failures(M.compute([rec, {**rec, "id": "b", "gold": "X"}])) == []
    assert failures(M.compute([rec])) == ["none of the 1 record(s) has a gold label (does the "
                                          "labels file name the dataset's ids?): nothing was scored"]
