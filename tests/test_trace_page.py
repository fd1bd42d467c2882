"""The HTML trace page: it embeds only real images under the run's image root and nothing remote
unless asked, and it explains each answer (context, clues, every candidate's score per round, the
gold's rank, why the answer won), wrong cards first and collapsed; checked in headless Chromium.
Also: the terminal tree neutralises control characters, and --stream lines name their mention."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CLUES, JORDAN_CANDIDATES, ROOT, render_text_image
from fakes import ScriptedChatModel, tool_call
from langchain_core.messages import AIMessage

from i2cr.data import Candidate, Mention
from i2cr.graph import Context
from i2cr.linker import link_mention
from i2cr.trace import render_html, render_tree
from i2cr.trace_page import embeddable_image

NAMES = [c["name"] for c in JORDAN_CANDIDATES]


def synthetic(rid, answer, gold=None, *, scores=None, top=None, image=None, context="ctx",
              rounds=1):
    """A result record shaped like link_mention's, with one TES visit per round."""
    steps = [{"step": 0, "node": "prepare", "image_status": "absent", "events": [], "stream": []}]
    for rnd in range(1, rounds + 1):
        ev = {"type": "tes_answer", "round": rnd, "strategy": "retrieval", "mapped": answer,
              "method": "retrieval", "offered": list(NAMES)}
        if scores is not None:
            ev["scores"] = [{"name": n, "score": s} for n, s in scores]
        if top is not None:
            ev["top"] = [{"name": n, "score": s} for n, s in top]
        steps.append({"step": len(steps), "node": "tes", "choice": answer, "events": [ev],
                      "stream": []})
    steps.append({"step": len(steps), "node": "final", "answer": answer,
                  "final_reason": "no_visual_check", "events": [], "stream": []})
    for i, s in enumerate(steps):
        nxt = steps[i + 1]["node"] if i + 1 < len(steps) else "__end__"
        s["edge"] = {"to": nxt, "why": "done" if nxt == "__end__" else f"to {nxt}"}
    rec = {"id": rid, "mention": "Jordan", "answer": answer, "final_reason": "no_visual_check",
           "path": [s["node"] for s in steps], "clues": [{"tool": "ocr", "text": "CHICAGO BULLS 23"}],
           "image": image, "error": None,
           "trace": {"schema": "i2cr.trace/1", "steps": steps,
                     "input": {"context": context, "candidates": [{"name": n} for n in NAMES]}}}
    if gold is not None:
        rec["gold"], rec["correct"] = gold, answer.lower() == gold.lower()
    return rec


# --- what the page may embed -------------------------------------------------------------------

@pytest.fixture
def image_root(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    render_text_image(root / "ok.png", "OK")
    (root / "notes.txt").write_text("TEXT-UNDER-THE-ROOT secret notes\n")
    (root / "fake.png").write_text("TEXT-NAMED-PNG not an image\n")
    (root / "passwd-link.png").symlink_to("/etc/passwd")
    os.mkfifo(root / "pipe.png")
    (root / "zero.png").symlink_to("/dev/zero")
    render_text_image(tmp_path / "outside.png", "OUT")
    return root


def _environ_b64() -> bytes:
    return base64.b64encode(Path("/proc/self/environ").read_bytes())


@pytest.mark.parametrize("root_kind", ["run root", "filesystem root", "none"])
def test_page_embeds_only_images_under_the_root(image_root, tmp_path, root_kind):
    root = {"run root": str(image_root), "filesystem root": "/", "none": None}[root_kind]
    refs = ["/proc/self/environ", "/etc/passwd", str(image_root / "notes.txt"),
            str(image_root / "fake.png"), str(image_root / "passwd-link.png"),
            str(image_root / "pipe.png"), str(image_root / "zero.png"), "/dev/zero",
            str(tmp_path / "outside.png"), "ok.png",
            str(image_root / "ok.png")]
    recs = [synthetic(f"r{i}", "Michael Jordan", image=ref) for i, ref in enumerate(refs)]
    page = render_html(recs, image_root=root)
    env = _environ_b64()
    assert env[:40].decode() not in page
    passwd = base64.b64encode(Path("/etc/passwd").read_bytes())[:40].decode()
    assert passwd not in page and "root:x:" not in page
    for text in ("TEXT-UNDER-THE-ROOT", "TEXT-NAMED-PNG"):
        assert base64.b64encode(text.encode())[:12].decode() not in page and text not in page
    outside = base64.b64encode((tmp_path / "outside.png").read_bytes())[:60].decode()
    ok = base64.b64encode((image_root / "ok.png").read_bytes())[:60].decode()
    if root_kind == "run root":  # the real image under the root, named either way, is shown
        assert page.count(ok) == 2 and page.count("data:image/png;base64,") == 2
        assert outside not in page
    elif root_kind == "none":
        assert "data:image" not in page and "--image-root" in page


def test_remote_images_are_opt_in(tmp_path):
    url = "https://images.example.org/jordan.jpg"
    recs = [synthetic("r0", "Michael Jordan", image=url)]
    page = render_html(recs)
    assert f"src='{url}'" not in page and "--remote-images" in page
    csp = re.search(r'Content-Security-Policy" content="([^"]+)"', page).group(1)
    assert "img-src data:;" in csp and "http" not in csp
    opted = render_html(recs, remote_images=True)
    assert f"src='{url}'" in opted and "img-src data: http: https:" in opted
    assert embeddable_image(url, None) == (None, "remote image not loaded (--remote-images shows it)")


def test_cli_trace_html_takes_remote_images_flag_and_root(tmp_path, image_root):
    res = tmp_path / "r.jsonl"
    recs = [synthetic("r0", "Michael Jordan", image="/proc/self/environ"),
            synthetic("r1", "Michael Jordan", image=str(image_root / "ok.png")),
            synthetic("r2", "Michael Jordan", image="https://images.example.org/x.jpg")]
    res.write_text("".join(json.dumps(r) + "\n" for r in recs))
    page = tmp_path / "p.html"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-m", "i2cr.cli", "trace", str(res), "--html", str(page),
                        "--image-root", str(image_root)], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    html = page.read_text()
    assert _environ_b64()[:40].decode() not in html and html.count("data:image/png;base64,") == 1
    assert "src='https://images.example.org/x.jpg'" not in html
    subprocess.run([sys.executable, "-m", "i2cr.cli", "trace", str(res), "--html", str(page),
                    "--remote-images"], check=True, capture_output=True, env=env)
    assert "src='https://images.example.org/x.jpg'" in page.read_text()


# --- what the page explains --------------------------------------------------------------------

def test_page_explains_scores_gold_rank_and_why_wrong_first_collapsed():
    full = [("Jordan Peele", 0.71), ("Michael Jordan", 0.64), ("Jordan", 0.2),
            ("Michael B. Jordan", 0.1)]
    recs = [synthetic("good", "Michael Jordan", "Michael Jordan",
                      scores=[("Michael Jordan", 0.9), ("Jordan", 0.3), ("Jordan Peele", 0.2),
                              ("Michael B. Jordan", 0.1)]),
            synthetic("wrong-full", "Jordan Peele", "Michael Jordan", scores=full,
                      context="Jordan dunks in the 1991 finals."),
            synthetic("wrong-top", "Jordan Peele", "Michael B. Jordan", top=full[:3]),
            synthetic("not-a-cand", "Jordan", "Scottie Pippen", scores=full, rounds=2)]
    page = render_html(recs)
    ids = re.findall(r"<details class='mention (\w+)'[^>]*id='m-([\w-]+)'", page)
    assert [i for _, i in ids] == ["wrong-full", "wrong-top", "not-a-cand", "good"]
    assert "<details class='mention bad' data-correct='bad'" in page
    assert not re.search(r"<details[^>]* open", page)  # collapsed by default
    card = page.split("id='m-wrong-full'")[1].split("</details>")[0]
    assert "Jordan dunks in the 1991 finals." in card and "CHICAGO BULLS 23" in card
    for n, s in full:  # every candidate with its score
        assert re.search(rf"<td class='name'>{re.escape(n)} (?:<span[^>]*>[^<]*</span>)*</td>"
                         rf"<td class='score[^']*'>{s:.3f}", card), n
    assert "gold rank 2/4" in card and "rank 2 of 4 (score 0.640)" in card
    assert "“Jordan Peele” scored 0.710 in R1, ahead of “Michael Jordan” (0.640, a gap of 0.070)" in card
    # only the top 3 recorded (an older run): the gold below them is said so, not invented
    top = page.split("id='m-wrong-top'")[1].split("</details>")[0]
    assert "below the recorded top 3" in top and "not recorded" in top
    miss = page.split("id='m-not-a-cand'")[1].split("</details>")[0]
    assert "not among the candidates" in miss and "<th title='ranker score'>R2</th>" in miss
    good = page.split("id='m-good'")[1].split("</details>")[0]
    assert "class='gold'" not in good and "gold-tag" in good and "gold rank 1/4" in good


def test_a_nil_answered_by_rule_says_the_rule_not_an_llm_answer():
    """With tes_strategy=llm a pronoun is NIL by the ranker's rule, no LLM asked: the page said
    "The LLM answered '∅' in R1, read as “nil” (nil_rule)", and neither view gave the rule's
    reason (the retrieval ranker's NIL by rule neither)."""
    he = Mention(id="he", mention="He", context="He dunks during the 1991 NBA Finals.",
                 candidates=[Candidate(c["name"], c["desc"]) for c in JORDAN_CANDIDATES],
                 allow_nil=True, label="nil")
    for strategy, method in (("llm", "nil_rule"), ("retrieval", "retrieval")):
        chat = ScriptedChatModel(script=[])  # any call would fail the run: none may be made
        rec = link_mention(he, Context(tes_strategy=strategy, chat_model=chat, iav_mode="off"))
        assert (rec["answer"], rec["llm_calls"], chat.calls) == ("nil", 0, [])
        page = render_html([rec])
        assert "LLM answered" not in page, strategy
        assert f"NIL in R1 ({method}): a personal pronoun" in page, strategy
        assert ("no LLM was asked" in page) == (strategy == "llm")
        assert f"tes: → 'nil' ({method}): a personal pronoun" in render_tree(rec), strategy


def test_stream_lines_say_why_a_nil_was_answered_by_rule(capsys):
    """--stream showed a NIL answered by rule as {"type": "tes_answer", "mapped": "nil"}: neither
    that no LLM answered (method) nor why (nil_reason); an iav_mode event lost its reason too."""
    from i2cr.cli import _stream_printer

    he = Mention(id="he", mention="He", context="He dunks during the 1991 NBA Finals.",
                 candidates=[Candidate(c["name"], c["desc"]) for c in JORDAN_CANDIDATES],
                 allow_nil=True)
    chat = ScriptedChatModel(script=[])
    link_mention(he, Context(tes_strategy="llm", chat_model=chat, iav_mode="off"),
                 on_event=_stream_printer("he"))
    err = capsys.readouterr().err
    assert ('[he]     {"type": "tes_answer", "method": "nil_rule", "mapped": "nil", '
            '"nil_reason": "a personal pronoun"}') in err, err
    assert '"type": "iav_mode", "mode": null, "reason": "IAV switched off"' in err, err


def _driver(tmp_path):
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("chromium / chromedriver not installed")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--no-first-run", "--disable-background-networking", "--disable-component-update",
              "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,1400"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)


def test_page_in_headless_chromium_explains_a_wrong_answer(settings, tmp_path, image_file):
    """Real records (the retrieval ranker, a tool clue), the page opened in Chromium: cards start
    collapsed, the wrong one first; opened, it shows the context, the candidate table with a score
    for every candidate, the gold's rank and why the answer won; gold is red only there."""
    from selenium.webdriver.common.by import By

    recs = []
    for rid, gold in [("right", None), ("wrong", "Michael B. Jordan")]:
        m = Mention(id=rid, mention="Jordan", context="Jordan dunks during the 1991 NBA Finals.",
                    candidates=[Candidate(**c) for c in JORDAN_CANDIDATES], image=image_file,
                    clues=dict(CLUES), label=gold)
        rec = link_mention(m, settings(None, llm="none", icr_threshold=-1, iav_threshold=-1e9))
        recs.append(rec)
    recs[0]["gold"] = recs[0]["answer"]  # a correct card
    recs[0]["correct"] = True
    assert recs[1]["correct"] is False
    page = tmp_path / "run.html"
    page.write_text(render_html(recs, title="test run", image_root=str(Path(image_file).parent)),
                    encoding="utf-8")
    drv = _driver(tmp_path)
    try:
        drv.get(page.as_uri())
        cards = drv.find_elements(By.CSS_SELECTOR, "details.mention")
        assert [c.get_attribute("id") for c in cards] == ["m-wrong", "m-right"]
        assert all(c.get_attribute("open") is None for c in cards)  # collapsed
        wrong = cards[0]
        assert not wrong.find_element(By.CSS_SELECTOR, ".context").is_displayed()
        wrong.find_element(By.TAG_NAME, "summary").click()
        assert wrong.get_attribute("open") is not None
        ctx = wrong.find_element(By.CSS_SELECTOR, ".context")
        assert ctx.is_displayed() and "1991 NBA Finals" in ctx.text
        rows = wrong.find_elements(By.CSS_SELECTOR, "table.candidates tbody tr")
        assert sorted(r.find_element(By.CSS_SELECTOR, "td.name").text.split(" answer")[0]
                      .split(" gold")[0] for r in rows) == sorted(NAMES)
        for r in rows:  # a score for every candidate in round 1 (the event's scores or top)
            cell = r.find_elements(By.CSS_SELECTOR, "td.score")[0].text
            assert re.match(r"-?\d+\.\d{3}|·", cell), cell
        gold_rank = wrong.find_element(By.CSS_SELECTOR, ".gold-rank").text
        assert gold_rank.startswith("Gold “Michael B. Jordan”: R1: ")
        assert "rank" in gold_rank or "below the recorded top" in gold_rank
        why = wrong.find_element(By.CSS_SELECTOR, ".why-answer").text
        assert f"“{recs[1]['answer']}” scored" in why
        red = "rgba(224, 49, 49, 1)"
        assert wrong.find_element(By.CSS_SELECTOR, "summary .gold").value_of_css_property("color") == red
        right = cards[1]
        right.find_element(By.TAG_NAME, "summary").click()
        assert not right.find_elements(By.CSS_SELECTOR, "summary .gold")
        assert right.find_element(By.CSS_SELECTOR, ".gold-tag").value_of_css_property("color") != red
        assert right.find_element(By.TAG_NAME, "img").get_attribute("src").startswith("data:image/png")
        drv.find_element(By.ID, "collapse-all").click()
        assert all(c.get_attribute("open") is None for c in cards)
        drv.find_element(By.ID, "only-wrong").click()
        assert [c.get_attribute("id") for c in cards if c.is_displayed()] == ["m-wrong"]
        assert drv.find_element(By.ID, "count").text == "1 of 2 mentions"
        wrong.find_element(By.TAG_NAME, "summary").click()
        shot = tmp_path / "page.png"
        drv.save_screenshot(str(shot))
        assert shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size > 5000
    finally:
        drv.quit()


# --- the terminal tree and --stream ------------------------------------------------------------

HOSTILE = "\x1b]0;pwned\x07\x1b[2J\x1b[31mred\r\x9b31m\u202e"


def _hostile_record():
    rec = synthetic("id" + HOSTILE, "Jordan Peele" + HOSTILE, "Michael" + HOSTILE,
                    top=[("Jordan Peele" + HOSTILE, 0.7), ("Michael Jordan", 0.6)])
    rec["final_reason"] = "why" + HOSTILE
    rec["trace"]["steps"][0]["image_status"] = "corrupt"
    rec["trace"]["steps"][0]["image_reason"] = "bad" + HOSTILE
    return rec


def _assert_inert(text):
    for ch in ("\x1b", "\x07", "\r", "\x9b", "\u202e"):
        assert ch not in text, repr(ch)


def test_terminal_tree_neutralises_control_characters(tmp_path):
    tree = render_tree(_hostile_record())
    _assert_inert(tree)
    assert "\\x1b]0;pwned\\x07" in tree  # shown, as text
    res = tmp_path / "r.jsonl"
    res.write_text(json.dumps(_hostile_record()) + "\n"
                   + json.dumps({"id": "e" + HOSTILE, "answer": None, "error": "E" + HOSTILE}) + "\n")
    p = subprocess.run([sys.executable, "-m", "i2cr.cli", "trace", str(res)], capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 0, p.stderr
    _assert_inert(p.stdout)
    assert "pwned" in p.stdout


def test_stream_lines_name_the_mention_and_carry_the_clue(settings, image_file, capsys):
    from i2cr.cli import _stream_printer

    long_ocr = "CHICAGO BULLS 23 " * 40
    fake = ScriptedChatModel(script=["Answer: Michael Jordan",
                                     AIMessage("", tool_calls=[tool_call("ocr")]),
                                     "Answer: Michael Jordan"])
    m = Mention(id="m-42", mention="Jordan", context="Jordan dunks during the 1991 NBA Finals.",
                candidates=[Candidate(**c) for c in JORDAN_CANDIDATES], image=image_file,
                clues={**CLUES, "OCR text": long_ocr})
    link_mention(m, settings(fake, icr_threshold=-1, iav_threshold=1e9, max_vif_rounds=1),
                 on_event=_stream_printer(m.id))
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert lines and all(ln.startswith("[m-42] ") for ln in lines), lines
    tool = [json.loads(ln.split("] ", 1)[1]) for ln in lines if '"type": "tool_call"' in ln]
    assert tool and tool[0]["tool"] == "ocr" and tool[0]["clue"] == long_ocr[:200]
    assert any("· tes" in ln for ln in lines) and any("llm[vif]" in ln for ln in lines)
