"""Events: one typed kind each, one channel (the state's ``events``), each stored once in a result
record; traces built from the ``updates`` stream alone, and records of older runs still read."""

from __future__ import annotations

import json
import operator
from typing import get_args, get_type_hints

import pytest
from conftest import CLUES, JORDAN_CANDIDATES
from fakes import ScriptedChatModel, tool_call
from langchain_core.messages import AIMessage

from i2cr.data import Candidate, Mention
from i2cr.graph.events import EVENT_TYPES, Event, is_llm_call
from i2cr.graph.state import State
from i2cr.linker import link_mention
from i2cr.trace import REDUCERS, TRACE_SCHEMA, TraceBuilder, render_tree, step_events


def mention(**kw):
    d = dict(id="e1", mention="Jordan", context="Jordan dunks during the 1991 NBA Finals.",
             candidates=[Candidate(**c) for c in JORDAN_CANDIDATES])
    d.update(kw)
    return Mention(**d)


def typed_dicts(obj):
    """Every dict with a string ``type`` anywhere in ``obj`` (a result record)."""
    if isinstance(obj, dict):
        if isinstance(obj.get("type"), str):
            yield obj
        for v in obj.values():
            yield from typed_dicts(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from typed_dicts(v)


def vif_route(settings, image_file, **kw):
    """An ICR rejection, a VIF tool chosen by the LLM, a second round: 4 LLM calls."""
    fake = ScriptedChatModel(script=["Answer: Jordan", "Answer: Michael Jordan",
                                     AIMessage("", tool_calls=[tool_call("caption")]),
                                     "Answer: Michael Jordan"])
    ctx = settings(fake, icr_threshold=0.45, iav_threshold=1e9, max_vif_rounds=1, **kw)
    return link_mention(mention(image=image_file, clues=dict(CLUES)), ctx), fake


def test_a_record_stores_each_event_once_and_each_llm_call_once(settings, image_file):
    """Before: every decision event was in the record's ``events`` and again in its trace step,
    and every LLM call also had an ``llm_call`` copy (25 event dicts for 10 events here)."""
    rec, fake = vif_route(settings, image_file)
    rec = json.loads(json.dumps(rec, default=str))  # as written to the results file
    stored = [json.dumps(d, sort_keys=True) for d in typed_dicts(rec)]
    assert sorted(stored) == sorted(json.dumps(e, sort_keys=True) for e in rec["events"])
    assert len(rec["events"]) == 10
    calls = [d for d in typed_dicts(rec) if d.get("latency_s") is not None
             and d["type"] != "tool_call"]
    assert len(calls) == len(fake.calls) == rec["llm_calls"] == 4
    assert [is_llm_call(e) for e in rec["events"]].count(True) == 4
    # the trace points into the events: every event belongs to exactly one node visit
    steps = rec["trace"]["steps"]
    assert [e for s in steps for e in step_events(rec, s)] == rec["events"]
    assert all("events" not in s and "stream" not in s for s in steps)


def test_a_failed_llm_call_is_one_event_and_counted_once(settings):
    boom = RuntimeError("connection reset")
    fake = ScriptedChatModel(script=[boom, "Answer: Michael Jordan"])
    rec = link_mention(mention(), settings(fake, icr_threshold=-1, tes_retries=1))
    calls = [e for e in rec["events"] if is_llm_call(e)]
    assert [e["type"] for e in calls] == ["llm_error", "tes_answer"]
    assert len(calls) == len(fake.calls) == rec["llm_calls"] == 2
    assert "Candidates:" in calls[0]["prompt"][-1]["content"]  # the failed call's prompt
    assert len([d for d in typed_dicts(rec) if d["type"] == "llm_error"]) == 1


def test_event_types_are_defined_once():
    for name, cls in EVENT_TYPES.items():
        assert get_args(get_type_hints(cls)["type"]) == (name,), name
        assert "type" in cls.__required_keys__
    assert set(get_args(Event)) == set(EVENT_TYPES.values())
    hints = get_type_hints(State, include_extras=True)
    assert get_args(get_args(hints["events"])[0]) == (Event,)


def check_against_types(events):
    for e in events:
        cls = EVENT_TYPES.get(e["type"])
        assert cls is not None, e["type"]
        keys = set(e)
        assert cls.__required_keys__ <= keys, (e["type"], cls.__required_keys__ - keys)
        assert keys <= cls.__required_keys__ | cls.__optional_keys__, \
            (e["type"], keys - cls.__required_keys__ - cls.__optional_keys__)


def test_events_of_real_runs_have_the_keys_their_types_declare(settings, image_file,
                                                               corrupt_image):
    rec, _ = vif_route(settings, image_file)
    seen = [e["type"] for e in rec["events"]]
    many = [Candidate(name=f"Person {i}", desc=f"Name: Person {i}.") for i in range(6)]
    odd = link_mention(mention(candidates=[Candidate(**JORDAN_CANDIDATES[0]), *many],
                               context="Jordan dunks. " * 50, image=corrupt_image),
                       settings(ScriptedChatModel(script=["I cannot tell", "no idea"]),
                                max_candidates=5, max_context_chars=100, tes_retries=1,
                                icr_threshold=-1))
    retrieval = link_mention(mention(clues=dict(CLUES)),
                             settings(None, tes_strategy="retrieval", iav_mode="caption",
                                      caption_threshold=1e9, tools="caption,tags"))
    for r in (rec, odd, retrieval):
        assert r["error"] is None
        check_against_types(r["events"])
        seen += [e["type"] for e in r["events"]]
    assert {"candidates_truncated", "context_truncated", "image_unusable", "iav_mode",
            "unmappable_answer", "tes_fallback", "tes_answer", "icr", "iav", "vif_request",
            "tool_call"} <= set(seen)


def test_trace_prompts_off_keeps_no_prompt_anywhere(settings, image_file):
    rec, fake = vif_route(settings, image_file, trace_prompts=False)
    assert len(fake.calls) == 4 and '"prompt"' not in json.dumps(rec)
    assert [is_llm_call(e) for e in rec["events"]].count(True) == 4


# --- the trace builder, without a graph -----------------------------------------------------------

def test_trace_builder_folds_updates_by_the_state_schemas_reducers():
    assert REDUCERS == {"path": operator.add, "events": operator.add}
    seen = []
    tb = TraceBuilder({"mention": "Jordan", "context": "c", "candidates": [{"name": "A"}]},
                      on_event=lambda kind, step: seen.append((kind, step)))
    icr = {"type": "icr", "round": 1, "choice": "A", "score": 0.1, "threshold": 0.5,
           "decision": "reject_and_rechoose"}
    fail = {"type": "llm_error", "node": "tes", "error": "401 Authorization: Bearer abcdefgh123",
            "latency_s": 0.1}
    tb.add_update("__start__", {"mention": "x"})  # not a node visit
    tb.add_update("prepare", {"path": ["prepare"], "round": 1, "image_status": "absent"})
    tb.add_update("tes", {"path": ["tes"], "choice": "A", "events": [fail]})
    tb.add_update("icr", {"path": ["icr"], "events": [icr], "excluded": ["A"]})
    tb.add_update("tes", {"path": ["tes"], "choice": "B", "excluded": []})
    state, trace = tb.finish()
    assert state["path"] == ["prepare", "tes", "icr", "tes"] and state["choice"] == "B"
    assert state["excluded"] == [] and state["mention"] == "Jordan"
    assert [e["type"] for e in state["events"]] == ["llm_error", "icr"]
    assert "abcdefgh123" not in json.dumps(state) and "Bearer ***" in state["events"][0]["error"]
    assert trace["schema"] == TRACE_SCHEMA
    steps = trace["steps"]
    assert [s["event_range"] for s in steps] == [[0, 0], [0, 1], [1, 2], [2, 2]]
    rec = {"events": state["events"], "trace": trace}
    assert step_events(rec, steps[2]) == [icr]
    assert steps[2]["edge"] == {"to": "tes", "why": "ICR 0.1 < 0.5: rejected, choose again"}
    assert steps[-1]["edge"] == {"to": "__end__", "why": "done"}
    # the live observer saw each visit with its events
    assert [(k, s["node"], [e["type"] for e in s["events"]]) for k, s in seen] == [
        ("node", "prepare", []), ("node", "tes", ["llm_error"]), ("node", "icr", ["icr"]),
        ("node", "tes", [])]


def test_trace_builder_rejects_an_update_its_reducer_cannot_add():
    tb = TraceBuilder({"mention": "Jordan"})
    tb.add_update("prepare", {"path": ["prepare"]})
    with pytest.raises(TypeError):
        tb.add_update("tes", {"path": "oops"})


# --- records of older runs (trace schema i2cr.trace/1) --------------------------------------------

def old_record():
    """A record as runs before this change wrote it: the events at the top and again in each
    step, and the LLM calls once more in the step's ``stream``."""
    tes = {"type": "tes_answer", "round": 1, "attempt": 0, "raw": "Answer: Michael Jordan",
           "mapped": "Michael Jordan", "method": "exact", "score": 100.0,
           "offered": ["Michael Jordan", "Jordan"], "latency_s": 0.2, "tokens": 31}
    icr = {"type": "icr", "round": 1, "choice": "Michael Jordan", "score": 0.61,
           "threshold": 0.3, "decision": "pass"}
    steps = [{"step": 0, "node": "prepare", "image_status": "absent", "events": [], "stream": []},
             {"step": 1, "node": "tes", "choice": "Michael Jordan", "events": [tes],
              "stream": [{"type": "llm_call", "node": "tes", "raw": tes["raw"],
                          "prompt": [{"role": "human", "content": "Candidates: ..."}],
                          "latency_s": 0.2, "tokens": 31}]},
             {"step": 2, "node": "icr", "choice": "Michael Jordan", "events": [icr], "stream": []},
             {"step": 3, "node": "final", "answer": "Michael Jordan", "final_reason": "text_only",
              "events": [], "stream": []}]
    for i, s in enumerate(steps):
        nxt = steps[i + 1]["node"] if i + 1 < len(steps) else "__end__"
        s["edge"] = {"to": nxt, "why": "done" if nxt == "__end__" else "..."}
    return {"id": "old", "mention": "Jordan", "answer": "Michael Jordan", "final_reason": "text_only",
            "path": [s["node"] for s in steps], "llm_calls": 1, "events": [tes, icr],
            "trace": {"schema": "i2cr.trace/1", "input": {"context": "c", "candidates": []},
                      "steps": steps}}


def test_records_of_older_runs_are_still_read(tmp_path):
    from i2cr.eval import metrics
    from i2cr.eval.runner import read_results
    from i2cr.trace_page import render_page, tes_visits

    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps(old_record()) + "\n")
    (rec,) = read_results(path)
    steps = rec["trace"]["steps"]
    assert [e["type"] for s in steps for e in step_events(rec, s)] == ["tes_answer", "icr"]
    tree = render_tree(rec)
    assert "icr: 'Michael Jordan' cos 0.61 vs α 0.3: pass" in tree
    assert tree.count("llm: 'Answer: Michael Jordan' (31 tokens, 0.2s)") == 1
    (visit,) = tes_visits(rec)
    assert visit["raw"] == "Answer: Michael Jordan" and visit["llm"]
    assert "cos 0.61 vs α 0.3 → pass" in render_page([rec])
    m = metrics.compute([rec])
    assert m["cost"]["tokens_per_mention"] == 31  # the call counted once, from the top level
