"""Traces: content on scripted routes, the CLI views, the HTML page in headless Chromium,
the SQLite checkpointer, and no secrets anywhere."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import pytest
from conftest import CLUES, EXAMPLE_IDS, EXAMPLES, JORDAN_CANDIDATES
from fakes import ScriptedChatModel, tool_call
from langchain_core.messages import AIMessage

from i2cr.data import Candidate, Mention
from i2cr.graph.events import is_llm_call
from i2cr.linker import link_mention
from i2cr.trace import TRACE_SCHEMA, render_html, render_tree, step_events


def mention(**kw):
    d = dict(id="t1", mention="Jordan", context="Jordan dunks during the 1991 NBA Finals.",
             candidates=[Candidate(**c) for c in JORDAN_CANDIDATES])
    d.update(kw)
    return Mention(**d)


def test_trace_lists_nodes_scores_edges_and_tool_calls(settings, image_file):
    fake = ScriptedChatModel(script=["Answer: Jordan", "Answer: Michael Jordan",
                                     AIMessage("", tool_calls=[tool_call("caption")]),
                                     "Answer: Michael Jordan"])
    ctx = settings(fake, icr_threshold=0.45, iav_threshold=1e9, max_vif_rounds=1)
    rec = link_mention(mention(image=image_file, clues=dict(CLUES)), ctx)
    tr = rec["trace"]
    assert tr["schema"] == TRACE_SCHEMA
    nodes = [s["node"] for s in tr["steps"]]
    assert nodes == rec["path"] == ["prepare", "tes", "icr", "tes", "icr", "iav", "vif", "tes",
                                    "icr", "iav", "final"]
    s = tr["steps"]

    def events(step):
        return step_events(rec, step)

    # TES: the prompt, the raw answer and the mapped choice
    llm = [c for c in events(s[1]) if is_llm_call(c)][0]
    assert "Candidates:" in llm["prompt"][-1]["content"] and llm["raw"] == "Answer: Jordan"
    assert s[1]["choice"] == "Jordan" and events(s[1])[0]["offered"][0] == "Michael Jordan"
    # ICR: score beside threshold, decision, and the edge back to TES with the reason
    icr = events(s[2])[0]
    assert icr["threshold"] == 0.45 and icr["score"] < 0.45 and icr["decision"] == "reject_and_rechoose"
    assert s[2]["edge"]["to"] == "tes" and "rejected" in s[2]["edge"]["why"]
    assert s[4]["edge"] == {"to": "iav", "why": s[4]["edge"]["why"]} and ">=" in s[4]["edge"]["why"]
    # IAV failed -> VIF; the tool call and its result
    assert events(s[5])[0]["decision"] == "fail" and s[5]["edge"]["to"] == "vif"
    tool = [e for e in events(s[6]) if e["type"] == "tool_call"][0]
    assert tool["tool"] == "caption" and tool["result"] == CLUES["Caption"]
    vif_llm = [c for c in events(s[6]) if is_llm_call(c)][0]
    assert vif_llm["requested"] == ["caption"]
    assert s[6]["edge"]["to"] == "tes" and "caption" in s[6]["edge"]["why"]
    assert s[-1]["edge"]["to"] == "__end__"
    tree = render_tree(rec)
    assert "icr: 'Jordan' cos" in tree and "⇢ tes: ICR" in tree and "tool caption" in tree


def test_trace_state_equals_langgraphs_and_updates_mode_streams_the_events(settings, image_file):
    """traced_invoke rebuilds the final state from updates, with the events the nodes return; a
    user streaming the graph in LangGraph's own updates mode sees the same events live (prompts
    and tool results included: the one channel events travel)."""
    from i2cr.graph import graph
    from i2cr.trace import traced_invoke

    def script():
        return ScriptedChatModel(script=["Answer: Michael Jordan",
                                         AIMessage("", tool_calls=[tool_call("caption")]),
                                         "Answer: Michael Jordan"])

    m = mention(image=image_file, clues=dict(CLUES))
    ctx = settings(script(), icr_threshold=-1, iav_threshold=1e9, max_vif_rounds=1)
    final, trace = traced_invoke(graph, m.to_input(), context=ctx)
    ref = graph.invoke(m.to_input(), context=settings(script(), icr_threshold=-1,
                                                        iav_threshold=1e9, max_vif_rounds=1))
    for k in ("answer", "final_reason", "path", "rounds", "clues", "tools_used", "llm_calls"):
        assert final[k] == ref[k], k
    assert [e["type"] for e in final["events"]] == [e["type"] for e in ref["events"]]
    emitted = [c for s in trace["steps"] for c in step_events(final, s)]
    assert emitted == final["events"]  # every event belongs to one node visit
    live = [c for chunk in graph.stream(
        m.to_input(), context=settings(script(), icr_threshold=-1, iav_threshold=1e9,
                                       max_vif_rounds=1), stream_mode="updates")
        for upd in chunk.values() for c in (upd or {}).get("events") or []]
    assert [c["type"] for c in live] == [c["type"] for c in emitted]
    assert any(is_llm_call(c) and c.get("prompt") for c in live)
    assert "tool_call" in {c["type"] for c in live}


def test_no_secret_enters_a_trace(settings, monkeypatch, image_file):
    secrets = {"OPENAI_API_KEY": "sk-openai-SECRET-123", "VISION_KEY": "vision-SECRET-456",
               "AZURE_OPENAI_API_KEY": "azure-SECRET-789", "I2CR_LLM_API_KEY": "compat-SECRET-0"}
    for k, v in secrets.items():
        monkeypatch.setenv(k, v)
    fake = ScriptedChatModel(script=["Answer: Michael Jordan",
                                     AIMessage("", tool_calls=[tool_call("ocr")]),
                                     "Answer: Michael Jordan"])
    rec = link_mention(mention(image=image_file, clues=dict(CLUES)),
                       settings(fake, icr_threshold=-1, iav_threshold=1e9, max_vif_rounds=1))
    text = json.dumps(rec, default=str)
    assert all(v not in text for v in secrets.values())


def test_html_page_in_headless_chromium(settings, tmp_path, image_file):
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("chromium / chromedriver not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    recs = []
    for i, (ans, gold) in enumerate([("Michael Jordan", "Michael Jordan"),
                                     ("Jordan Peele", "Michael Jordan")]):
        fake = ScriptedChatModel(script=[f"Answer: {ans}"])
        r = link_mention(mention(id=f"m{i}", image=image_file, label=gold),
                         settings(fake, icr_threshold=-1, iav_threshold=-1e9))
        recs.append(r)
    page = tmp_path / "run.html"
    page.write_text(render_html(recs, title="test run", image_root=str(Path(image_file).parent)),
                    encoding="utf-8")
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--no-first-run", "--disable-background-networking", "--disable-component-update",
              "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,900"):
        opts.add_argument(a)
    drv = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    try:
        drv.get(page.as_uri())

        def visible():
            return [e for e in drv.find_elements(By.CSS_SELECTOR, ".mention") if e.is_displayed()]

        assert len(visible()) == 2
        img = drv.find_element(By.ID, "m-m0").find_element(By.TAG_NAME, "img")
        assert img.get_attribute("src").startswith("data:image/png")
        drv.find_element(By.ID, "only-wrong").click()  # the filter on wrong answers
        shown = visible()
        assert [e.get_attribute("id") for e in shown] == ["m-m1"]
        assert drv.find_element(By.ID, "count").text == "1 of 2 mentions"
        shot = tmp_path / "page.png"
        drv.save_screenshot(str(shot))
        assert shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size > 5000
    finally:
        drv.quit()


def test_cli_trace_views_and_checkpointer(tmp_path):
    out, db = tmp_path / "r.jsonl", tmp_path / "states.sqlite"
    p = subprocess.run([sys.executable, "-m", "i2cr.cli", "link", str(EXAMPLES / "mentions.json"),
                        "--out", str(out), "--checkpoint", str(db), "--no-progress"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    tree = subprocess.run([sys.executable, "-m", "i2cr.cli", "trace", str(out), "obama-podium"],
                          capture_output=True, text=True, check=True).stdout
    assert tree.startswith("obama-podium  'Obama' →") and "├─ icr:" in tree and "└─ final:" in tree
    mm = subprocess.run([sys.executable, "-m", "i2cr.cli", "trace", str(out), "jordan-nba",
                         "--mermaid"], capture_output=True, text=True, check=True).stdout
    assert "class final,icr,prepare,tes visited" in mm and "tes ==>|3| icr" in mm
    page = tmp_path / "run.html"
    subprocess.run([sys.executable, "-m", "i2cr.cli", "trace", str(out), "--html", str(page)],
                   check=True, capture_output=True)
    assert page.read_text().count("class='mention") == len(EXAMPLE_IDS)
    # the checkpointer kept every state of every mention: replay one
    from langgraph.checkpoint.sqlite import SqliteSaver

    from i2cr.graph import compile_graph

    g = compile_graph(checkpointer=SqliteSaver(sqlite3.connect(db, check_same_thread=False)))
    hist = list(g.get_state_history({"configurable": {"thread_id": "jordan-nba"}}))
    assert len(hist) >= 5  # input, prepare, tes, icr, final
    assert hist[0].values["answer"] == "Michael Jordan"
    assert [h.next for h in reversed(hist)][1:4] == [("prepare",), ("tes",), ("icr",)]


def test_a_checkpoint_from_an_older_i2cr_resumed_at_icr_is_one_error_record(monkeypatch):
    """An older i2cr's TES wrote no ``query``; its checkpoint interrupted between TES and ICR,
    resumed by this version, made ICR raise ``KeyError: 'query'``. Now that mention's record is
    one clear error naming it, counted as an error; the other mentions of the run are linked."""
    import importlib

    from langgraph.checkpoint.memory import InMemorySaver

    from i2cr.eval.runner import RunStats, run
    from i2cr.graph import Context, compile_graph

    saver = InMemorySaver()
    ctx = Context()
    stale, fresh = mention(id="stale"), mention(id="fresh")
    module = importlib.import_module("i2cr.graph.graph")
    new_tes = module.tes

    def old_tes(state, runtime):  # the TES of an i2cr before 'query'
        return {k: v for k, v in new_tes(state, runtime).items() if k != "query"}

    monkeypatch.setattr(module, "tes", old_tes)
    old = compile_graph(checkpointer=saver, interrupt_after=["tes"])
    monkeypatch.setattr(module, "tes", new_tes)
    config = {"configurable": {"thread_id": "stale"}}
    old.invoke(stale.to_input(), config, context=ctx)  # interrupted after TES
    assert old.get_state(config).next == ("icr",) and "query" not in old.get_state(config).values
    g = compile_graph(checkpointer=saver)

    def linker(m, settings):  # resume the stale thread; link the others afresh
        if m.id == "stale":
            g.invoke(None, config, context=settings)
        return link_mention(m, settings)

    st = RunStats()
    recs = {r["id"]: r for r in run([stale, fresh], ctx, progress=False, linker=linker, stats=st,
                                    warn=None)}
    err = recs["stale"]["error"]
    assert err.startswith("DataError: record 'stale': checkpoint from an older i2cr"), err
    assert "\n" not in err and "KeyError" not in err
    assert recs["fresh"]["error"] is None and recs["fresh"]["answer"] == "Michael Jordan"
    assert (st.errors, st.linked) == (1, 1)


@pytest.mark.parametrize("case", ["no_image", "corrupt_image", "nil", "exhausted", "iav_pass",
                                  "fallback_tool"])
def test_trace_of_each_scripted_route(settings, image_file, corrupt_image, case):
    script = {"no_image": ["Answer: Michael Jordan"], "corrupt_image": ["Answer: Michael Jordan"],
              "nil": ["Answer: nil"], "iav_pass": ["Answer: Michael Jordan"],
              "exhausted": [f"Answer: {c['name']}" for c in JORDAN_CANDIDATES],
              "fallback_tool": ["Answer: Michael Jordan", AIMessage("no tool for you"),
                                "Answer: Michael Jordan"]}[case]
    kw = {"no_image": dict(icr_threshold=-1), "corrupt_image": dict(icr_threshold=-1),
          "nil": dict(icr_threshold=-1), "iav_pass": dict(icr_threshold=-1, iav_threshold=-1e9),
          "exhausted": dict(icr_threshold=1e9),
          "fallback_tool": dict(icr_threshold=-1, iav_threshold=1e9, max_vif_rounds=1)}[case]
    img = {"corrupt_image": corrupt_image, "iav_pass": image_file,
           "fallback_tool": image_file}.get(case)
    m = mention(image=img, clues=dict(CLUES) if case == "fallback_tool" else None,
                allow_nil=case == "nil")
    rec = link_mention(m, settings(ScriptedChatModel(script=list(script)), **kw))
    steps = rec["trace"]["steps"]
    assert [s["node"] for s in steps] == rec["path"]
    for a, b in pairwise(steps):
        assert a["edge"]["to"] == b["node"] and a["edge"]["why"]
    assert steps[-1]["edge"]["to"] == "__end__"
    why = {s["node"]: s["edge"]["why"] for s in steps}
    if case in ("no_image", "corrupt_image"):
        assert "nothing visual to verify" in why["icr"]
        assert steps[0]["image_status"] == ("absent" if case == "no_image" else "corrupt")
    elif case == "nil":
        assert why["icr"] == "NIL chosen" and rec["answer"] == "nil"
    elif case == "exhausted":
        assert "reflections exhausted" in steps[-2]["edge"]["why"]
        assert [step_events(rec, s)[0]["decision"] for s in steps
                if s["node"] == "icr"][-1] == "exhausted_keep_best"
    elif case == "iav_pass":
        iav = [s for s in steps if s["node"] == "iav"][0]
        ev = step_events(rec, iav)[0]
        assert ev["score"] >= ev["threshold"] and "accept" in why["iav"]
    else:
        tool = [e for s in steps for e in step_events(rec, s) if e["type"] == "tool_call"][0]
        assert tool["how"] == "fallback_no_tool_call" and tool["tool"] == "ocr"
        assert "clue from ocr" in why["vif"]
