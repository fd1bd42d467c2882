"""Hostile input to the CLI and the Python API: nothing is hidden behind a fallback, nothing is
silently dropped, every failure is one line and a non-zero exit code (issue 11 items 6-10, issue 12
items 2, 6 and 7)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import tomllib
from conftest import EXAMPLE_IDS, EXAMPLES, JORDAN_CANDIDATES, ROOT, write_jsonl

from i2cr import Context, link
from i2cr.data import DataError, load_mentions, parse_record
from i2cr.eval.runner import ResultWriter, check_items, read_results, run_one
from i2cr.llm import BackendError, check_backend

CLI = [sys.executable, "-m", "i2cr.cli"]


def cli(*args: str, env: dict | None = None, cwd: str | None = None, timeout: float = 600):
    e = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", **(env or {}))
    for k, v in list(e.items()):
        if v is None:
            del e[k]
    return subprocess.run(CLI + list(args), capture_output=True, text=True, env=e, cwd=cwd,
                          timeout=timeout)


def one_line_error(p) -> str:
    assert "Traceback" not in p.stderr, p.stderr[-2000:]
    lines = [x for x in p.stderr.splitlines() if x.startswith("i2cr: ") or "error:" in x]
    assert lines, p.stderr[-2000:]
    return "\n".join(lines)


def unused_port() -> int:
    """A 127.0.0.1 port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


GOOD = {"mention": "Jordan", "mention_context": "Jordan dunks in the 1991 NBA Finals.",
        "Candentity": JORDAN_CANDIDATES}


def write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


# --- issue 11 item 6: malformed labelled records count as wrong answers ------------------------

def dataset_with_bad_records(tmp_path: Path) -> tuple[Path, Path]:
    data = {"good": GOOD,
            "no-mention": {k: v for k, v in GOOD.items() if k != "mention"},
            "cands-not-list": {**GOOD, "Candentity": "Michael Jordan"},
            "not-an-object": [1, 2, 3],
            "nameless": {**GOOD, "Candentity": [{"desc": "no name"}]}}
    labels = {k: "Michael Jordan" for k in data}
    return write_json(tmp_path / "data.json", data), write_json(tmp_path / "labels.json", labels)


def test_eval_scores_malformed_labelled_records_as_wrong_and_exits_non_zero(tmp_path):
    data, labels = dataset_with_bad_records(tmp_path)
    # no --out-dir: it says where the results go (issue 12 item 7)
    p = cli("eval", str(data), str(labels), "--no-progress", cwd=str(tmp_path))
    assert p.returncode == 1, p.stderr[-2000:]
    assert "no --out-dir given: writing to runs/eval" in p.stderr
    out = tmp_path / "runs" / "eval"
    m = json.loads((out / "metrics.json").read_text())
    assert m["labelled"] == 5 and m["errors"] == 4 and m["labelled_errors"] == 4
    good = {r["id"]: r for r in read_results(out / "results.jsonl")}["good"]
    assert good["error"] is None
    acc = (1 if good["correct"] else 0) / 5  # out of all five, not of the one good record
    assert m["accuracy"]["final"] == pytest.approx(acc)
    assert "4 error record(s) (4 labelled, each scored as a wrong answer)" in p.stderr
    report = (out / "report.md").read_text()
    assert "4 error record(s)" in report and f"| final | {100 * acc:.1f} |" in report
    assert re.search(rf"^final +{100 * acc:.1f}%$", p.stdout, re.M)


def test_eval_names_each_bad_record_on_stderr_in_links_words(tmp_path):
    """eval made each bad record an error row of results.jsonl and counted them, but did not say
    which records were bad: each is now named on one stderr line, as link names it (one owner,
    runner.bad_records): the first MAX_NAMED, then a count; the exit code is 1, as it was."""
    from i2cr.eval.runner import MAX_NAMED

    rows = ["{not json", {"id": "strcands", **GOOD, "Candentity": "Michael Jordan"},
            {"id": "nomention", **{k: v for k, v in GOOD.items() if k != "mention"}}]
    rows += [{"id": f"m{i}", "mention_context": "x"} for i in range(MAX_NAMED)]  # no mention
    data = write_jsonl(tmp_path / "bad.jsonl", rows)
    labels = write_json(tmp_path / "l.json", {"strcands": "Michael Jordan",
                                              "nomention": "Michael Jordan"})
    out = tmp_path / "ev"
    p = cli("eval", str(data), str(labels), "--out-dir", str(out), "--no-progress")
    assert p.returncode == 1, p.stderr[-2000:]
    named = [x for x in p.stderr.splitlines() if "; the record is not linked" in x]
    assert len(named) == MAX_NAMED, p.stderr[-3000:]
    errors = {r["id"]: r["error"] for r in read_results(out / "results.jsonl")}
    for line, rid in zip(named, ["line 1", "strcands", "nomention", "m0"], strict=False):
        assert line.startswith(f"i2cr: warning: {data}: record {rid!r}: "), line
        said = line.removeprefix("i2cr: warning: ").split("; the record is not linked")[0]
        assert said in errors[rid]  # the words of its error record (link's table shows them)
        labelled = rid in ("strcands", "nomention")
        assert line.endswith("an error record" + (", scored as a wrong answer" if labelled
                                                  else "")), line
    assert (f"i2cr: warning: 3 more bad record(s) not linked (each an error record; "
            f"{MAX_NAMED + 3} in all)") in p.stderr
    assert "23 error record(s) (2 labelled, each scored as a wrong answer)" in p.stderr
    linked = cli("link", str(data), "--labels", str(labels), "--no-progress", "--json")
    assert linked.returncode == 1
    assert [x for x in linked.stderr.splitlines() if "not linked" in x] == \
        [x for x in p.stderr.splitlines() if "not linked" in x]  # the same lines


def test_the_closing_line_counts_an_error_record_as_an_error_not_as_linked(tmp_path):
    data = write_json(tmp_path / "d.json", {"a": GOOD, "b": GOOD, "c": GOOD,
                                            "bad": {**GOOD, "Candentity": "Michael Jordan"}})
    p = cli("link", str(data), "--no-progress")
    assert p.returncode == 1, p.stderr[-2000:]
    assert "i2cr: 3 mention(s) linked, 1 error(s), " in p.stderr, p.stderr[-2000:]


def test_the_closing_lines_llm_calls_per_mention_are_over_the_linked_mentions(tmp_path):
    """An error record made no LLM call: the calls are shared among the mentions linked (the
    line says '2 mention(s) linked', so its per-mention figure is over those two, not three)."""
    srv = FakeOpenAI(lives=1000)
    try:
        data = write_json(tmp_path / "d.json", {"a": GOOD, "b": GOOD,
                                                "bad": {**GOOD, "Candentity": "Michael Jordan"}})
        out = tmp_path / "r.jsonl"
        p = cli("link", str(data), "--no-progress", "--out", str(out), "--llm",
                f"openai-compat:fake@{srv.base_url}", "--set", "llm_timeout=5")
        assert p.returncode == 1, p.stderr[-2000:]
        recs = read_results(out)
        calls = sum(r.get("llm_calls") or 0 for r in recs)
        assert calls >= 2 and sum(r["error"] is not None for r in recs) == 1
        assert (f"i2cr: 2 mention(s) linked, 1 error(s), {calls / 2:.2f} LLM calls/mention"
                in p.stderr), p.stderr[-2000:]
    finally:
        srv.die()


def test_resume_over_a_results_file_holding_errors_says_so_and_exits_non_zero(tmp_path):
    """--resume skips every id already in --out, error records too: the run that only skips
    them must still say the results hold errors, and exit 1 (it said 'nothing left to link'
    and exited 0, as if every mention had been linked)."""
    data = write_json(tmp_path / "d.json", {"a": GOOD, "bad": {**GOOD, "Candentity": "x"},
                                            "c": GOOD})
    out = tmp_path / "r.jsonl"
    first = cli("link", str(data), "--no-progress", "--out", str(out), "--limit", "2")
    assert first.returncode == 1, first.stderr[-2000:]
    for _ in range(2):  # links 'c', then nothing
        p = cli("link", str(data), "--no-progress", "--out", str(out), "--resume")
        assert p.returncode == 1, p.stderr[-2000:]
        assert f"i2cr: 1 error record(s) already in {out} (not retried" in p.stderr, p.stderr
    assert len(read_results(out)) == 3
    good = write_json(tmp_path / "g.json", {"a": GOOD})
    p = cli("link", str(good), "--no-progress", "--out", str(out), "--resume")
    assert p.returncode == 0 and "error record" not in p.stderr, p.stderr[-2000:]


def test_a_record_whose_id_reads_like_a_made_up_one_is_linked_and_id_less_ones_resume(tmp_path):
    """A bad line 1 was named 'line 1', and the record whose own id is 'line 1' became its repeat
    'line 1#dup2', not linked (the bad line named as a duplicate). The record is linked under its
    id, the bad line named with its error as 'line 1 (no id)', and on --resume the id-less line 3
    ('line 3') is found in --out: nothing is linked again."""
    data = tmp_path / "d.jsonl"
    data.write_text("{not json\n" + json.dumps({"id": "line 1", **GOOD}) + "\n"
                    + json.dumps(GOOD) + "\n")
    out = tmp_path / "r.jsonl"
    p = cli("link", str(data), "--no-progress", "--out", str(out))
    assert p.returncode == 1, p.stderr[-2000:]
    recs = {r["id"]: r for r in read_results(out)}
    assert list(recs) == ["line 1 (no id)", "line 1", "line 3"]
    for rid in ("line 1", "line 3"):
        assert recs[rid]["error"] is None and recs[rid]["answer"] == "Michael Jordan"
    assert recs["line 1 (no id)"]["error"].startswith(f"DataError: {data}: record "
                                                      "'line 1 (no id)': malformed JSON")
    assert f"i2cr: warning: {data}: record 'line 1 (no id)': malformed JSON" in p.stderr
    assert "repeat an id" not in p.stderr and "i2cr: 2 mention(s) linked, 1 error(s)" in p.stderr
    again = cli("link", str(data), "--no-progress", "--out", str(out), "--resume")
    assert f"nothing left to link: all 3 mention(s) are already in {out}" in again.stderr, \
        again.stderr[-2000:]
    assert [r["id"] for r in read_results(out)] == list(recs)


def test_resume_does_not_name_again_the_bad_records_and_repeats_already_in_out(tmp_path):
    """--resume skips every id already in --out, so a bad record or a repeat there is not linked
    again: each was named again on every resume (and the repeat counted again); the closing line
    counts them ('error record(s) already in'). link and eval alike (check_items's ``done``)."""
    from i2cr.eval.harness import evaluate

    data = tmp_path / "d.jsonl"
    data.write_text("{not json\n" + "".join(json.dumps({"id": rid, **GOOD}) + "\n"
                                             for rid in ("a", "a", "b")))
    out = tmp_path / "r.jsonl"
    first = cli("link", str(data), "--no-progress", "--out", str(out), "--limit", "3")
    assert f"{data}: record 'line 1': malformed JSON" in first.stderr, first.stderr[-2000:]
    assert "1 record(s) repeat an id already used ('a')" in first.stderr
    again = cli("link", str(data), "--no-progress", "--out", str(out), "--resume")
    assert again.returncode == 1, again.stderr[-2000:]
    assert "'line 1'" not in again.stderr and "repeat an id" not in again.stderr, again.stderr
    assert f"i2cr: 2 error record(s) already in {out} (not retried" in again.stderr
    assert [r["id"] for r in read_results(out)] == ["line 1", "a", "a#dup2", "b"]
    said: list[str] = []
    kw = dict(settings=Context(), progress=False, warn=said.append)
    evaluate(data, None, tmp_path / "ev", limit=3, **kw)
    assert any("'line 1'" in w for w in said) and any("repeat an id" in w for w in said), said
    said.clear()
    m = evaluate(data, None, tmp_path / "ev", resume=True, **kw)
    assert m["mentions"] == 4 and m["errors"] == 2
    assert not any("'line 1'" in w or "repeat an id" in w for w in said), said


def test_resume_warns_of_the_records_it_links_not_of_those_already_in_out(tmp_path, monkeypatch,
                                                                         capsys):
    """The input's warnings (a document's records apart, a null id) were said again on every
    --resume, of records an earlier run had linked; and --resume read --out twice (for the
    checks, then for the writer). Now each warning counts the records this run links and says
    how many more it skipped, nothing when it skips them all; --out is read once. link and eval
    alike."""
    from i2cr.cli import main
    from i2cr.eval import runner
    from i2cr.eval.harness import evaluate

    rows = [("a", "d1"), ("b", "d2"), ("c", "d1"), (None, "d3"), ("e", "d2")]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"id": rid, "doc_id": doc, **GOOD}) + "\n"
                            for rid, doc in rows))  # c and e continue d1 and d2 after others
    out = tmp_path / "r.jsonl"
    real, reads = runner.read_results, []

    def counted(path, **kw):
        reads.append(str(path))
        return real(path, **kw)

    monkeypatch.setattr(runner, "read_results", counted)

    def warnings(*flags: str) -> list[str]:
        capsys.readouterr()
        reads.clear()
        assert main(["link", str(data), "--no-progress", "--out", str(out), *flags]) == 0
        return [x for x in capsys.readouterr().err.splitlines() if "i2cr: warning" in x]

    assert [w.split(" (")[0] for w in warnings("--limit", "3")] == [
        "i2cr: warning: 2 record(s) continue a document"]  # (of the whole file; null: not read)
    said = warnings("--resume")  # c was linked; e and the null id are linked now
    assert len(said) == 2 and reads == [str(out)], (said, reads)
    assert said[0].startswith("i2cr: warning: 1 record(s) continue a document") and \
        said[0].endswith("keep a document's records together (1 more already in the output, "
                         "skipped)")
    assert said[1] == ("i2cr: warning: 1 record(s) have a null or empty id; they are linked "
                       "under the id 'None' (repeats of it count as duplicates)")
    assert warnings("--resume") == [] and reads == [str(out)]  # all done: nothing to say
    assert [r["id"] for r in read_results(out)] == ["a", "b", "c", "None", "e"]
    told: list[str] = []
    kw = dict(settings=Context(), progress=False, warn=told.append)
    evaluate(data, None, tmp_path / "ev", **kw)
    assert len(told) == 2, told
    told.clear()
    evaluate(data, None, tmp_path / "ev", resume=True, **kw)
    assert told == [], told


def test_an_all_bad_input_loads_no_model_and_starts_no_llm(tmp_path, monkeypatch, capsys):
    """Every record an error: nothing is left to link, so neither the embedder nor the LLM
    backend is built (the embedding phase loaded the embedder for error records only, and the
    backend check started the LLM); the error lines and the exit code are as before."""
    from i2cr import cli
    from i2cr.eval.harness import evaluate
    from i2cr.graph.resources import Resources

    built: list[str] = []

    def embedder(self, ctx):
        built.append("embedder")
        raise AssertionError("the embedder was built for error records only")

    def chat_model(self, ctx):
        built.append("chat model")
        raise AssertionError("the LLM was started for error records only")

    monkeypatch.setattr(Resources, "embedder", embedder)
    monkeypatch.setattr(Resources, "chat_model", chat_model)
    data = tmp_path / "bad.jsonl"
    data.write_text('{not json\n{"id": "e"}\n[1, 2]\n')
    for llm in ([], ["--llm", "embedded"]):
        assert cli.main(["link", str(data), "--no-progress", *llm]) == 1
        assert built == []
        out, err = capsys.readouterr()
        assert "record 'line 1': malformed JSON" in out and "record 'e': field 'mention': is " \
            "missing" in out and "record 'line 3': expected an object, got list" in out, out
        assert "i2cr: 0 mention(s) linked, 3 error(s)" in err, err
    m = evaluate(data, None, tmp_path / "ev", settings=Context(llm="embedded"), progress=False,
                 warn=None)
    assert m["mentions"] == 3 and m["errors"] == 3
    assert built == []


def test_a_bad_record_keeps_its_gold_label():
    err = check_items([DataError("is missing", record="x", field="mention")], {"x": "A"}, warn=None)
    rec = run_one(err[0], Context())
    assert rec["id"] == "x" and rec["gold"] == "A" and rec["correct"] is False


def test_a_huge_id_is_quoted_by_its_start_and_length(tmp_path):
    """A 100,000-character id was quoted whole in each line naming its record (the bad record's
    warning, the repeat's, the error records' texts): 100 KB lines on stderr. The id itself is
    kept whole (the result's id, what --resume matches)."""
    huge = "I" * 100_000
    cands = [{"name": "A", "desc": "x"}]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"id": huge, "mention": m, "context": "c",
                                        "candidates": cands}) + "\n" for m in ("", "A", "A")))
    said: list[str] = []
    items = check_items(load_mentions(data, strict=False), warn=said.append)
    assert len(said) == 2 and all(len(w) < 400 for w in said), [len(w) for w in said]
    shown = f"{'I' * 100!r}… (100000 characters)"
    assert f"record {shown}: field 'mention': is empty" in said[0]
    assert f"2 record(s) repeat an id already used ({shown})" in said[1]
    assert [len(str(it)) < 400 for it in items] == [True] * 3
    assert [it.record for it in items] == [huge, huge + "#dup2", huge + "#dup3"]


# --- an unusable gold label is an error of its record only --------------------------------------

def _one_line_about(stderr: str, rid: str, labels: Path) -> str:
    lines = [x for x in stderr.splitlines() if f"record {rid!r}" in x]
    assert len(lines) == 1, stderr[-2000:]
    assert str(labels) in lines[0] and "not null" in lines[0] and '"nil" for NIL' in lines[0]
    return lines[0]


def test_link_with_a_null_label_links_the_others_and_exits_1(tmp_path):
    """One null label stopped the whole run (exit 2, nothing linked): now its record alone is
    an error record (gold null, wrong), named on one stderr line; the other is linked, scored."""
    data = write_json(tmp_path / "d.json", {"good": GOOD, "nulled": GOOD})
    labels = write_json(tmp_path / "l.json", {"good": "Michael Jordan", "nulled": None})
    p = cli("link", str(data), "--labels", str(labels), "--no-progress", "--json")
    assert p.returncode == 1, p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    recs = {r["id"]: r for r in map(json.loads, p.stdout.splitlines())}
    assert recs["good"]["error"] is None and recs["good"]["gold"] == "Michael Jordan"
    assert recs["good"]["correct"] == (recs["good"]["answer"] == "Michael Jordan")
    bad = recs["nulled"]
    assert bad["answer"] is None and bad["gold"] is None and bad["correct"] is False
    assert f"{labels}: record 'nulled'" in bad["error"]
    _one_line_about(p.stderr, "nulled", labels)
    assert "i2cr: 1 mention(s) linked, 1 error(s)" in p.stderr and "on 2 labelled" in p.stderr


def test_eval_with_a_null_label_scores_the_others_and_counts_it_as_wrong(tmp_path):
    data = write_json(tmp_path / "d.json", {"good": GOOD, "nulled": GOOD})
    labels = write_json(tmp_path / "l.json", {"good": "Michael Jordan", "nulled": None})
    out = tmp_path / "ev"
    p = cli("eval", str(data), str(labels), "--out-dir", str(out), "--no-progress")
    assert p.returncode == 1, p.stderr[-2000:]
    _one_line_about(p.stderr, "nulled", labels)
    m = json.loads((out / "metrics.json").read_text())
    assert m["mentions"] == 2 and m["labelled"] == 2 and m["errors"] == 1
    good = {r["id"]: r for r in read_results(out / "results.jsonl")}["good"]
    assert good["error"] is None and "correct" in good
    assert m["accuracy"]["final"] == pytest.approx((1 if good["correct"] else 0) / 2)
    assert "1 error record(s) (1 labelled, each scored as a wrong answer)" in p.stderr


def test_fitting_leaves_a_record_with_a_null_label_out_and_says_so(tmp_path, capsys):
    from i2cr.eval.calibrate import load_sets

    data = write_json(tmp_path / "d.json", {"good": GOOD, "nulled": GOOD})
    labels = write_json(tmp_path / "l.json", {"good": "Michael Jordan", "nulled": None})
    mentions, datasets = load_sets([str(data), str(labels)], 0)
    assert [m.id for m in mentions] == ["good"] and datasets == ["d"]
    err = capsys.readouterr().err
    line = _one_line_about(err, "nulled", labels)
    assert line.startswith("calibrate: warning: ") and line.endswith("left out of the fit")
    assert "calibrate: 1 bad record(s) (data or gold label) left out of the fit" in err


def test_fitting_names_a_record_whose_data_is_bad_and_counts_it(tmp_path, capsys):
    """A record whose data is bad is left out of the fit as a bad label is, named on stderr and
    counted (it was dropped silently)."""
    from i2cr.eval.calibrate import load_sets

    data = write_json(tmp_path / "d.json", {"good": GOOD, "broken": {**GOOD, "mention": 5}})
    labels = write_json(tmp_path / "l.json", {"good": "Michael Jordan", "broken": "Michael Jordan"})
    mentions, _ = load_sets([str(data), str(labels)], 0, "crossval")
    assert [m.id for m in mentions] == ["good"]
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if "record 'broken'" in x]
    assert len(lines) == 1 and lines[0].startswith(f"crossval: warning: {data}: ")
    assert "field 'mention'" in lines[0] and lines[0].endswith("left out of the fit")
    assert "crossval: 1 bad record(s) (data or gold label) left out of the fit" in err


# --- issue 11 item 7: the LLM backend is checked before the first mention ------------------------

def test_backend_check_fails_fast_for_a_bogus_spec_a_missing_key_and_an_unreachable_server(
        monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    cases = {"bogus": "not understood",
             "openai:gpt-4o": "OPENAI_API_KEY",
             f"openai-compat:m@http://127.0.0.1:{unused_port()}/v1": "cannot reach"}
    for spec, why in cases.items():
        t0 = time.monotonic()
        with pytest.raises(BackendError, match=why):
            check_backend(Context(llm=spec))
        assert time.monotonic() - t0 < 10
        with pytest.raises(BackendError, match=why):  # the Python API too
            link("Jordan", "Jordan dunks.", JORDAN_CANDIDATES, llm=spec)


def test_backend_check_gives_up_on_a_server_that_never_answers():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)  # accepts connections (the kernel does), never says a word
    try:
        port = srv.getsockname()[1]
        with pytest.raises(BackendError, match="did not answer within 1s"):
            check_backend(Context(llm=f"openai-compat:m@http://127.0.0.1:{port}/v1"), timeout=1.0)
    finally:
        srv.close()


@pytest.mark.parametrize("command", ["link", "eval"])
def test_cli_stops_before_the_first_mention_when_the_backend_is_unusable(tmp_path, command):
    port = unused_port()
    env = {"OPENAI_API_KEY": None}
    for spec, why in (("bogus", "not understood"), ("openai:gpt-4o", "OPENAI_API_KEY"),
                      (f"openai-compat:m@http://127.0.0.1:{port}/v1", "cannot reach")):
        args = [str(EXAMPLES / "mentions.json"), str(EXAMPLES / "labels.json")]
        if command == "link":
            args = [args[0], "--labels", args[1], "--out", str(tmp_path / "r.jsonl")]
        else:
            args += ["--out-dir", str(tmp_path / "ev")]
        p = cli(command, *args, "--llm", spec, "--no-progress", env=env)
        assert p.returncode == 2, (spec, p.stderr[-2000:])
        assert why in one_line_error(p)
        assert not (tmp_path / "r.jsonl").exists() or not (tmp_path / "r.jsonl").read_text()
        assert not (tmp_path / "ev" / "results.jsonl").exists()


class FakeOpenAI(ThreadingHTTPServer):
    """An OpenAI-compatible server on 127.0.0.1 that answers ``lives`` chat completions, then
    dies (stops listening) as a crashed backend would."""

    def __init__(self, lives: int):
        self.lives, self.calls = lives, 0
        self.died = threading.Event()
        super().__init__(("127.0.0.1", 0), _Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def die(self) -> None:
        if not self.died.is_set():
            self.died.set()
            self.shutdown()
            self.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # one request per connection: a dead server refuses the next

    def log_message(self, *a):
        pass

    def _json(self, obj) -> None:
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._json({"object": "list", "data": [{"id": "fake", "object": "model"}]})

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        srv = self.server
        srv.calls += 1
        self._json({"id": "x", "object": "chat.completion", "created": 0, "model": "fake",
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": "Michael Jordan"}}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}})
        if srv.calls >= srv.lives:
            threading.Thread(target=srv.die, daemon=True).start()


def test_a_backend_that_dies_mid_run_is_counted_and_fails_the_run(tmp_path):
    srv = FakeOpenAI(lives=1)
    try:
        out = tmp_path / "r.jsonl"
        p = cli("link", str(EXAMPLES / "mentions.json"), "--out", str(out), "--no-progress",
                "--limit", "2", "--llm", f"openai-compat:fake@{srv.base_url}",
                "--set", "llm_timeout=5", "--set", "tes_retries=0")
        assert srv.died.is_set() and srv.calls == 1
        assert p.returncode == 1, p.stderr[-2000:]
        recs = read_results(out)
        failed = [r for r in recs if any(e["type"] == "llm_error" for e in r["events"])]
        assert len(recs) == 2 and len(failed) >= 1 and all(r["error"] is None for r in recs)
        assert f"{len(failed)} mention(s) had failed LLM calls" in p.stderr
    finally:
        srv.die()


def test_eval_reports_a_backend_that_dies_mid_run(tmp_path):
    srv = FakeOpenAI(lives=1)
    try:
        p = cli("eval", str(EXAMPLES / "mentions.json"), str(EXAMPLES / "labels.json"),
                "--out-dir", str(tmp_path / "ev"), "--no-progress", "--keep-order", "--limit", "2",
                "--llm", f"openai-compat:fake@{srv.base_url}", "--set", "llm_timeout=5",
                "--set", "tes_retries=0")
        assert p.returncode == 1, p.stderr[-2000:]
        m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
        assert m["llm_failed_mentions"] >= 1 and m["cost"]["llm_failed_calls"] >= 1
        assert f"{m['llm_failed_mentions']} mention(s) with failed LLM calls" in p.stderr
        assert "mention(s) with failed LLM calls" in (tmp_path / "ev" / "report.md").read_text()
    finally:
        srv.die()


class RefusingOpenAI(ThreadingHTTPServer):
    """An OpenAI-compatible server on 127.0.0.1 (a free port) whose model list answers, so the
    backend check passes, and which answers every chat completion HTTP 500, its body naming a
    file of the server's and echoing the request's key. It stops itself after ``life`` seconds
    (and at the end of the ``with``)."""

    def __init__(self, life: float = 300.0):
        self.calls = 0
        super().__init__(("127.0.0.1", 0), _Refusing)
        self.daemon_threads = True
        threading.Thread(target=self.serve_forever, daemon=True).start()
        self.timer = threading.Timer(life, self.stop)
        self.timer.daemon = True
        self.timer.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def stop(self) -> None:
        self.timer.cancel()
        self.shutdown()
        self.server_close()

    def __enter__(self) -> RefusingOpenAI:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class _Refusing(_Handler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.calls += 1
        body = json.dumps({"error": {"message": "worker crashed in /home/ops/llm/serve.py with "
                                     + self.headers.get("Authorization", ""), "type": "server"}})
        data = body.encode()
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def test_a_backend_refusing_every_call_is_named_in_the_closing_lines_of_link_and_eval(
        tmp_path, monkeypatch, capsys):
    """Every chat completion answered HTTP 500: each mention is an error record. link (with and
    without --out) and eval close with the same lines: the calls made, the refused ones counted
    as calls, and the records that failed, their ids and the cause named once, with no key and
    no local path (the records' error keeps the whole text)."""
    from i2cr.cli import main

    key = "i2cr-test-key-0123456789"
    monkeypatch.setenv("I2CR_LLM_API_KEY", key)
    ids = "'jordan-nba', 'obama-podium', 'paris-painting', 'cambridge-rowing'"
    failed = (f"i2cr: 4 record(s) failed in the run ({ids}): LLMCallFailed: HTTP 500 after 2 "
              "attempt(s): OpenAIAPIError: Error code: 500 - ")
    refused = ("i2cr: 4 LLM call(s) refused after every retry, of 4 made (a refused call counts "
               "as one call made, its attempts are in its record's error)")

    def closing(err: str) -> list[str]:
        assert "Traceback" not in err, err[-2000:]
        assert key not in err and "/home/ops" not in err, err[-2000:]
        return [x for x in err.splitlines() if "LLM call" in x or "failed in the run" in x]

    with RefusingOpenAI() as srv:
        flags = ["--no-progress", "--llm", f"openai-compat:fake@{srv.base_url}",
                 "--set", "tes_strategy=llm", "--set", "llm_retries=1",
                 "--set", "llm_backoff=0.01", "--set", "iav_mode=off",
                 "--limit", "4"]  # the four examples whose TES asks the LLM
        data, labels = str(EXAMPLES / "mentions.json"), str(EXAMPLES / "labels.json")
        out = tmp_path / "r.jsonl"
        capsys.readouterr()
        assert main(["link", data, "--labels", labels, "--out", str(out), *flags]) == 1
        said = closing(capsys.readouterr().err)
        assert srv.calls == 8  # 4 calls, each tried twice
        recs = read_results(out)
        assert [r["llm_calls"] for r in recs] == [1] * 4
        assert all("/home/ops/llm/serve.py" in r["error"] and key not in r["error"] for r in recs)
        assert said[0].startswith("i2cr: 0 mention(s) linked, 4 error(s), 0.00 LLM calls/mention "
                                  "linked, 4 LLM call(s) made in all, top-1 0.0% on 4 labelled")
        assert said[1] == refused
        assert said[2].startswith(failed) and said[2].endswith("crashed in <path> with Bearer ***")
        assert len(said) == 3
        assert main(["link", data, "--labels", labels, *flags]) == 1  # the table on stdout
        got = capsys.readouterr()
        assert len([x for x in got.out.splitlines() if "LLMCallFailed" in x]) == 4
        assert closing(got.err)[1:] == said[1:]
        assert main(["eval", data, labels, "--out-dir", str(tmp_path / "ev"), *flags]) == 1
        assert closing(capsys.readouterr().err) == said[1:]
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert (m["cost"]["llm_calls"], m["cost"]["llm_refused_calls"]) == (4, 4)
    assert m["cost"]["llm_calls_per_mention"] == 1.0
    report = (tmp_path / "ev" / "report.md").read_text()
    assert "**" + failed[len("i2cr: "):] in report and key not in report


# --- issue 11 item 8: settings and counts are validated, empty input is said -------------------

def test_unknown_tools_and_backends_are_rejected():
    with pytest.raises(ValueError, match="unknown visual tool.*'nonexistent'"):
        Context(tools="ocr,nonexistent")
    with pytest.raises(ValueError, match="unknown tool backend 'bogus'"):
        Context(tool_backend="bogus")
    with pytest.raises(ValueError, match="not a built-in tool"):
        Context(tool_backend="ocr=tesseract,faces=azure")
    with pytest.raises(ValueError, match="cannot serve the tool 'caption'"):
        Context(tool_backend="caption=tesseract")
    Context(tool_backend="ocr=tesseract,caption=precomputed")  # valid ones still pass


def test_allow_nil_must_be_a_boolean():
    def parse(v):
        return parse_record({**GOOD, "allow_nil": v}, "r1", source="f.json")

    assert parse(True).allow_nil is True and parse(False).allow_nil is False
    assert parse("false").allow_nil is False and parse("True").allow_nil is True
    for bad in ("no", "0", 1, [], {}):
        with pytest.raises(DataError, match="record 'r1': field 'allow_nil': must be true or false"):
            parse(bad)


def test_cli_rejects_bad_settings_counts_and_empty_input(tmp_path):
    empty = write_json(tmp_path / "empty.json", {})
    ex = str(EXAMPLES / "mentions.json")
    for args, why in ((["link", ex, "--set", "tools=nonexistent"], "unknown visual tool"),
                      (["link", ex, "--set", "tool_backend=bogus"], "unknown tool backend"),
                      (["link", ex, "--set", "max_reflections=three"], "as a whole number"),
                      (["link", ex, "--set", "max_reflections"], "--set wants name=value"),
                      (["link", ex, "--workers", "2"], "need(s) --engine ray"),
                      (["link", ex, "--limit", "-1"], "must be 1 or more"),
                      (["link", ex, "--limit", "0"], "must be 1 or more"),
                      (["eval", ex, str(EXAMPLES / "labels.json"), "--sample", "0"],
                       "must be 1 or more"),
                      (["link", str(empty)], f"no mentions to link in {empty}"),
                      (["eval", str(empty), str(EXAMPLES / "labels.json"), "--out-dir",
                        str(tmp_path / "ev")], "no mentions to evaluate")):
        p = cli(*args, "--no-progress")
        assert p.returncode == 2, args  # unusable input, as the README says
        assert why in one_line_error(p), (args, p.stderr)


def test_limit_keeps_exactly_n_mentions(tmp_path):
    from i2cr.eval.harness import select

    assert select(list(range(5)), limit=5) == list(range(5))
    for bad in (-1, 0):
        with pytest.raises(ValueError, match="limit must be"):
            select(list(range(5)), limit=bad)
    with pytest.raises(ValueError, match="sample must be"):
        select(list(range(5)), sample=0)


# --- issue 11 item 9 (CLI): output paths of the wrong kind -------------------------------------

def test_out_paths_of_the_wrong_kind_are_one_line_errors(tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    ex = str(EXAMPLES / "mentions.json")
    for args, why in ((["eval", ex, str(EXAMPLES / "labels.json"), "--out-dir", str(a_file)],
                       "--out-dir names a file"),
                      (["link", ex, "--out", str(tmp_path)], "--out names a folder"),
                      (["eval", ex, str(EXAMPLES / "labels.json"), "--out-dir",
                        str(a_file / "sub")], str(a_file))):
        p = cli(*args, "--no-progress")
        assert p.returncode == 2, (args, p.stderr[-2000:])
        assert why in one_line_error(p)
    assert a_file.read_text() == "x"


def test_trace_html_into_a_missing_folder_is_a_one_line_error(tmp_path):
    run = tmp_path / "r.jsonl"
    p = cli("link", str(EXAMPLES / "mentions.json"), "--out", str(run), "--no-progress")
    assert p.returncode == 0, p.stderr[-2000:]
    p = cli("trace", str(run), "--html", str(tmp_path / "missing" / "page.html"))
    assert p.returncode == 2, p.stderr[-2000:]
    assert "missing" in one_line_error(p) and "Traceback" not in p.stderr
    assert not (tmp_path / "missing").exists()


# --- issue 11 item 10: damaged results, duplicate ids, speed after a resume ---------------------

def test_a_garbage_line_in_the_middle_loses_no_valid_record(tmp_path):
    p = tmp_path / "r.jsonl"
    lines = [json.dumps({"id": f"m{i}", "answer": "A"}) for i in range(60)]
    lines[5] = "\x00garbage{{"
    lines[9] = json.dumps(["not", "a", "record"])
    p.write_text("\n".join(lines) + "\n" + '{"id": "m60", "ans')  # and a torn last line
    warned: list[str] = []
    w = ResultWriter(p, resume=True, warn=warned.append)
    w.close()
    assert w.done == {f"m{i}" for i in range(60)} - {"m5", "m9"}
    assert len(warned) == 2 and "line 6: not JSON" in warned[0] and "line 10" in warned[1]
    text = p.read_text()
    assert "m59" in text and "m60" not in text  # only the torn last line was cut
    assert text.endswith("\n")


def test_a_whole_last_record_that_lost_its_newline_is_kept(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text('{"id": "a"}\n{"id": "b"}')
    w = ResultWriter(p, resume=True)
    w.write({"id": "c"})
    w.close()
    assert [r["id"] for r in read_results(p)] == ["a", "b", "c"]


def test_duplicate_and_null_ids_are_warned_about_and_scored_as_errors(tmp_path):
    data = tmp_path / "d.jsonl"
    rows = [{"id": "a", **GOOD}, {"id": "b", **GOOD}, {"id": "a", **GOOD},
            {"id": None, **GOOD}, {"id": None, **GOOD}]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    labels = write_json(tmp_path / "l.json", {"a": "Michael Jordan", "b": "Michael Jordan"})
    p = cli("eval", str(data), str(labels), "--out-dir", str(tmp_path / "ev"), "--no-progress")
    assert p.returncode == 1, p.stderr[-2000:]
    assert "2 record(s) repeat an id already used ('a', 'None')" in p.stderr
    assert "2 record(s) have a null or empty id" in p.stderr
    recs = {r["id"]: r for r in read_results(tmp_path / "ev" / "results.jsonl")}
    assert set(recs) == {"a", "b", "None", "a#dup2", "None#dup2"}
    assert "duplicate id 'a'" in recs["a#dup2"]["error"] and recs["a#dup2"]["gold"] == "Michael Jordan"
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["labelled"] == 3 and m["errors"] == 2  # a, b and the repeat of a


def test_speed_after_a_resume_counts_only_the_last_segment(tmp_path):
    from i2cr.eval.harness import evaluate

    out = tmp_path / "ev"
    kw = dict(settings=Context(), progress=False, warn=None)
    evaluate(EXAMPLES / "mentions.json", EXAMPLES / "labels.json", out, **kw)
    res = out / "results.jsonl"
    lines = res.read_text().splitlines()
    res.write_text("\n".join(lines[:-1]) + "\n")  # one mention left to do
    meta = json.loads((out / "run.json").read_text())
    meta["wall_s"] = 1000.0  # a slow earlier segment
    (out / "run.json").write_text(json.dumps(meta))
    m = evaluate(EXAMPLES / "mentions.json", EXAMPLES / "labels.json", out, resume=True, **kw)
    s = m["speed"]
    assert s["segment"]["linked"] == 1 and m["mentions"] == len(EXAMPLE_IDS)
    assert s["wall_s"] > 1000  # the whole run's time is still kept
    assert s["mentions_per_s"] == pytest.approx(1 / s["segment"]["link_s"], rel=0.01)
    assert s["run_mentions_per_s"] == pytest.approx(1 / s["segment"]["wall_s"], rel=0.01)
    assert json.loads((out / "run.json").read_text())["segments"] == 2


def test_speed_counts_the_mentions_linked_not_the_error_records(tmp_path):
    """The speed line ('linking N mentions/s') and the results' ``linked`` counted every record
    produced, error records among them, as a mention linked: 1 good record and 4 bad ones made
    '5 linked now'. The rates' numerator is the mentions linked (RunStats.linked)."""
    from i2cr.eval.harness import evaluate
    from i2cr.eval.runner import RunStats, run

    data, labels = dataset_with_bad_records(tmp_path)  # 1 good record, 4 bad
    m = evaluate(data, labels, tmp_path / "ev", settings=Context(), progress=False, warn=None)
    s = m["speed"]
    assert m["mentions"] == 5 and m["errors"] == 4
    assert s["segment"]["linked"] == 1
    assert s["mentions_per_s"] == pytest.approx(1 / s["segment"]["link_s"], rel=0.01)
    assert s["run_mentions_per_s"] == pytest.approx(1 / s["segment"]["wall_s"], rel=0.01)
    last = json.loads((tmp_path / "ev" / "run.json").read_text())["last_segment"]
    assert (last["produced"], last["errors"], last["linked"]) == (5, 4, 1)
    bad = check_items([DataError("is missing", record=f"x{i}", field="mention") for i in range(3)],
                      warn=None)
    st = RunStats()
    assert len(list(run(bad, Context(), progress=False, stats=st, warn=None))) == 3
    assert (st.produced, st.errors, st.linked) == (3, 3, 0)
    assert not any(st.rates().values())  # 0 (or None: no time measured), not 3 over the time


# --- issue 12 items 2, 6 and 7: progress phases, the table, help, packaging ---------------------

def test_link_prints_a_table_with_phases_and_two_throughputs(tmp_path):
    p = cli("link", str(EXAMPLES / "mentions.json"), "--labels", str(EXAMPLES / "labels.json"))
    assert p.returncode == 0, p.stderr[-2000:]
    rows = p.stdout.splitlines()
    assert rows[0].split() == ["id", "mention", "answer", "gold", "correct", "route"]
    assert [r.split()[0] for r in rows[1:]] == EXAMPLE_IDS
    # the README shows this very table (its first code block after the commands): it must not
    # promise rows the shipped examples do not give
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("The third command prints", 1)[1].split("```\n", 2)[1]
    assert [r.split() for r in block.splitlines()] == [r.split() for r in rows], p.stdout
    # every entity kind the README claims, and a NIL, linked right
    right = {r.split()[0] for r in rows[1:] if " yes " in r}
    assert {"un-haiti", "newyork-rents", "walters-abc", "walters-later"} <= right, p.stdout
    jordan = rows[1].split()
    assert jordan[:5] == ["jordan-nba", "Jordan", "Michael", "Jordan", "Michael"]
    assert jordan[-2] in ("yes", "no") and jordan[-1] == "text_only"
    err = p.stderr
    order = [err.index("loading models"), err.index("embedding texts"), err.index("linking:")]
    assert order == sorted(order)
    assert "i2cr: linking " in err and "mentions/s; whole run " in err
    js = cli("link", str(EXAMPLES / "mentions.json"), "--json", "--no-progress")
    recs = [json.loads(x) for x in js.stdout.splitlines()]
    assert [r["id"] for r in recs] == EXAMPLE_IDS
    assert "events" not in recs[0] and recs[0]["answer"] == "Michael Jordan"


def test_table_cells_neutralise_terminal_escapes():
    from i2cr.cli import table_row

    row = table_row({"id": "x\x1b]52;c;AAAA\x07", "mention": "\x1b[2J", "answer": "A\nB",
                     "final_reason": "r\x9b31m"})
    assert not any(ord(c) < 32 or 127 <= ord(c) < 160 for c in row)


def test_every_image_the_examples_name_is_shipped():
    from PIL import Image

    data = json.loads((EXAMPLES / "mentions.json").read_text())
    named = [s["mention_imgpath"] for s in data.values() if s.get("mention_imgpath")]
    assert len(named) >= 2
    for rel in named:
        with Image.open(EXAMPLES / rel) as im:
            im.verify()
        assert (EXAMPLES / rel).stat().st_size < 50_000


def test_eval_and_bench_options_have_help():
    from i2cr.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name in ("eval", "bench", "link"):
        p = sub.choices[name]
        assert p.description, name
        for a in p._actions:
            if a.dest != "help":
                assert a.help, f"i2cr {name} {a.option_strings or a.dest} has no help"


def test_packaging_builds_with_its_license_field():
    py = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert py["project"]["license"] == "Apache-2.0"
    req = next(r for r in py["build-system"]["requires"] if r.startswith("setuptools"))
    assert int(req.split(">=")[1].split(".")[0]) >= 77  # PEP 639 license strings
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text


# --- an image that cannot be used is counted and reported; a failed download fails the run ------

def reads_images(settings: dict) -> list[str]:
    """``--set`` flags of settings under which IAV reads the images (conftest's image_reading)."""
    return [x for k, v in settings.items() for x in ("--set", f"{k}={v}")]


def test_images_that_could_not_be_used_are_reported_and_a_failed_download_fails_the_run(
        tmp_path, image_reading):
    # a server that accepts and never answers: the download times out (image_timeout)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    url = f"http://127.0.0.1:{srv.getsockname()[1]}/x.png"
    data = write_json(tmp_path / "data.json", {
        "good": GOOD, "gone": {**GOOD, "mention_imgpath": str(tmp_path / "nope.jpg")},
        "slow": {**GOOD, "mention_imgpath": url}})
    labels = write_json(tmp_path / "labels.json", {k: "Michael Jordan" for k in ("good", "gone", "slow")})
    try:
        p = cli("link", str(data), "--no-progress", "--json", "--set", "allow_private_urls=true",
                "--set", "image_timeout=1", *reads_images(image_reading))
        assert p.returncode == 1, p.stderr[-2000:]  # was 0: the failed download went unreported
        recs = {r["id"]: r for r in map(json.loads, p.stdout.splitlines())}
        assert {k: (r["answer"], r["image_status"]) for k, r in recs.items()} == {
            "good": ("Michael Jordan", "absent"), "gone": ("Michael Jordan", "missing"),
            "slow": ("Michael Jordan", "timeout")}
        assert ("2 mention(s) had an image that could not be used (missing 1, timeout 1)"
                in one_line_error(p))
        assert "1 image download(s) failed (timeout 1): the exit code is 1" in p.stderr
        p = cli("eval", str(data), str(labels), "--no-progress", "--out-dir", str(tmp_path / "ev"),
                "--set", "allow_private_urls=true", "--set", "image_timeout=1",
                *reads_images(image_reading))
        assert p.returncode == 1, p.stderr[-2000:]
        assert "1 mention(s) whose image download failed (timeout 1" in one_line_error(p)
        metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
        assert metrics["image_failures"] == {"missing": 1, "timeout": 1}
    finally:
        srv.close()
    # an image missing from disk is the input's: reported, but the run did what it could
    gone = write_json(tmp_path / "gone.json", {"good": GOOD, "gone": {
        **GOOD, "mention_imgpath": str(tmp_path / "nope.jpg")}})
    p = cli("link", str(gone), "--no-progress", *reads_images(image_reading))
    assert p.returncode == 0, p.stderr[-2000:]
    assert "1 mention(s) had an image that could not be used (missing 1)" in p.stderr


def test_an_image_no_step_reads_is_not_fetched_and_does_not_fail_the_run(tmp_path):
    """With IAV off nothing reads a mention's image (VIF runs only after IAV): an unreachable URL
    and a missing file are not loaded at all, so they neither fail the run (the URL made the exit
    code 1) nor are reported as images that could not be used; each record says why."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0)
    url = f"http://127.0.0.1:{srv.getsockname()[1]}/x.png"
    data = write_json(tmp_path / "data.json", {
        "url": {**GOOD, "mention_imgpath": url},
        "gone": {**GOOD, "mention_imgpath": str(tmp_path / "nope.jpg")}})
    try:
        p = cli("link", str(data), "--no-progress", "--json", "--set", "iav_mode=off",
                "--set", "image_timeout=1")
        with pytest.raises(BlockingIOError):
            srv.accept()  # no connection was ever made to the image server
    finally:
        srv.close()
    assert p.returncode == 0, p.stderr[-2000:]
    recs = {r["id"]: r for r in map(json.loads, p.stdout.splitlines())}
    assert {k: (r["answer"], r["image_status"], r["image_reason"]) for k, r in recs.items()} == {
        k: ("Michael Jordan", "unused", "not loaded: no step of this run reads it (IAV switched off)")
        for k in ("url", "gone")}
    assert "could not be used" not in p.stderr and "download" not in p.stderr


def test_images_not_loaded_or_not_usable_are_said_by_link_eval_and_the_report(tmp_path, capsys,
                                                                             image_reading):
    """IAV set to CLIP without its weights reads no image: every image went unloaded and neither
    `link`, `eval` nor report.md said so (the run passed for one that checked its images);
    report.md did not name the images that could not be used either."""
    from i2cr.cli import main

    data = write_json(tmp_path / "data.json", {
        "a": {**GOOD, "mention_imgpath": str(tmp_path / "nope.jpg")},
        "b": {**GOOD, "mention_imgpath": str(tmp_path / "nope2.jpg")}, "c": GOOD})
    labels = write_json(tmp_path / "labels.json", {k: "Michael Jordan" for k in "abc"})
    unused = ("2 mention(s) had an image that no step of this run reads (IAV off or unable to "
              "run, or answered by precomputed clues): not loaded (see image_reason)")
    no_clip = ("--set", "iav_mode=clip", "--set", f"clip_pretrained={tmp_path / 'no.bin'}")
    assert main(["link", str(data), "--no-progress", *no_clip]) == 0
    assert unused in capsys.readouterr().err
    ev = tmp_path / "ev"
    assert main(["eval", str(data), str(labels), "--no-progress", "--out-dir", str(ev),
                 *no_clip]) == 0
    assert unused in capsys.readouterr().err
    assert json.loads((ev / "metrics.json").read_text())["images_unused"] == 2
    assert unused[0].upper() + unused[1:] + "." in (ev / "report.md").read_text()
    # images that were read and could not be used: in report.md too
    assert main(["eval", str(data), str(labels), "--no-progress", "--out-dir", str(tmp_path / "e2"),
                 *reads_images(image_reading)]) == 0
    report = (tmp_path / "e2" / "report.md").read_text()
    assert "2 mention(s) had an image that could not be used (missing 2)" in report
    assert "no step of this run reads" not in report


def test_a_served_linker_setting_given_to_the_cli_is_said_to_do_nothing_there(tmp_path):
    """``--set allow_private_urls=false`` was taken by `i2cr link` and did nothing (the CLI
    fetches any URL): a user who set it to keep the run off their network was not told."""
    data = write_json(tmp_path / "data.json", {"good": GOOD})
    p = cli("link", str(data), "--no-progress", "--set", "allow_private_urls=false")
    assert p.returncode == 0, p.stderr[-2000:]
    said = [ln for ln in p.stderr.splitlines() if "allow_private_urls" in ln]
    assert len(said) == 1 and "served linker only" in said[0] and "ignores it" in said[0]
    p = cli("link", str(data), "--no-progress", "--set", "image_timeout=5")
    assert p.returncode == 0 and "served linker only" not in p.stderr


# --- settings and flags a run cannot use are refused up front ---------------------------------

@pytest.mark.parametrize("setting", ["icr_threshold=nan", "nil_threshold=inf", "iav_threshold=-inf",
                                     "nil_threshold=-1", "nil_threshold=2",
                                     "image_timeout=-1", "image_timeout=0"])
def test_a_setting_no_run_can_use_is_refused(setting):
    name, value = setting.split("=")
    with pytest.raises(ValueError, match=name):  # a NaN threshold compared false with everything
        Context.from_overrides({name: value})


def test_a_wrong_image_root_or_resume_without_out_exit_2_before_linking(tmp_path):
    data = write_json(tmp_path / "data.json", {"good": GOOD})
    p = cli("link", str(data), "--image-root", str(tmp_path / "nope"), "--no-progress")
    assert p.returncode == 2 and p.stdout == ""  # was 0, every image 'missing', all linked
    assert "does not exist" in p.stderr and "Traceback" not in p.stderr
    p = cli("link", str(data), "--image-root", str(data), "--no-progress")
    assert p.returncode == 2 and "is not a folder" in p.stderr
    p = cli("link", str(data), "--resume", "--no-progress")
    assert p.returncode == 2 and "--resume goes on from an --out file" in one_line_error(p)
    p = cli("link", str(data), "--set", "icr_threshold=nan", "--no-progress")
    assert p.returncode == 2 and "must be a finite number" in one_line_error(p)


def test_a_corrupt_images_reason_is_the_same_in_every_run(tmp_path):
    from i2cr.images import ImageError, decode_image

    reasons = set()
    for _ in range(2):
        with pytest.raises(ImageError) as e:
            decode_image("x.png", b"not an image at all")
        reasons.add(e.value.reason)
    (reason,) = reasons  # PIL named the buffer by its address: a new reason every run
    assert "0x" not in reason and "cannot decode image" in reason


# --- a fresh clone's review: low-severity hostile use --------------------------------------------

def test_an_embedding_cache_that_cannot_be_made_is_a_bad_setting(tmp_path):
    """It was a cache failure at run time (exit 1, after linking): a folder that cannot be made
    (under a file, or where nothing can be written) is refused up front, one line naming it. A
    file where the folder should be is still a damaged cache (bypassed, exit 1; see
    test_hostile_inputs)."""
    a_file = tmp_path / "file"
    a_file.write_text("x")
    ex = str(EXAMPLES / "mentions.json")
    for folder, why in ((a_file / "emb", f"{a_file} is a file"),
                        ("/proc/i2cr-emb", "nothing can be written in /proc")):
        p = cli("link", ex, "--no-progress", "--set", f"embedding_cache={folder}")
        assert p.returncode == 2 and p.stdout == "", p.stderr[-2000:]
        assert p.stderr.splitlines() == [f"i2cr: setting 'embedding_cache': cannot make the folder "
                                         f"{folder}: {why}" + (" (No such file or directory)"
                                                               if "proc" in why else "")]
    from i2cr.cli import _check_cache_folder

    for fine in ("none", None, str(tmp_path / "new" / "emb"), str(a_file)):
        _check_cache_folder(fine, "embedding_cache")
    assert not (tmp_path / "new").exists()  # checked, not made: the run makes it


def _result(rid: str, image: str | None = None) -> dict:
    return {"id": rid, "mention": "Jordan", "answer": None, "error": "ValueError: x",
            "image": image}


def test_trace_of_a_file_without_trace_records_exits_2(tmp_path):
    """`i2cr trace` given the input instead of its results exited 0 (the JSON one after a
    warning per line): one line saying the file holds no trace records, exit 2."""
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text(json.dumps({"id": "a", **GOOD}) + "\n")
    for f in (EXAMPLES / "mentions.json", jsonl):
        for extra in ((), ("--html", str(tmp_path / "p.html"))):
            p = cli("trace", str(f), *extra)
            assert p.returncode == 2, (f, extra, p.stderr[-2000:])
            assert p.stderr.splitlines() == [
                f"i2cr: {f} holds no trace records (the results of `i2cr link --out` or of "
                "`i2cr eval`: one JSON record per line with id, answer and error)"]
            assert not (tmp_path / "p.html").exists()
    results = tmp_path / "r.jsonl"
    results.write_text(json.dumps(_result("a")) + "\nnot json\n")
    p = cli("trace", str(results))
    assert p.returncode == 0 and "a: no trace (error: ValueError: x)" in p.stdout
    assert "line 2: not JSON; skipped" in p.stderr  # the skipped lines are still said


def test_trace_html_hints_image_root_only_for_local_images(tmp_path):
    """The --image-root hint was printed for every page, images or none."""
    page = str(tmp_path / "p.html")
    results = tmp_path / "r.jsonl"
    results.write_text("".join(json.dumps(_result(f"r{i}", img)) + "\n" for i, img in enumerate(
        (None, "https://example.org/x.jpg"))))
    p = cli("trace", str(results), "--html", page)
    assert p.returncode == 0 and "--image-root" not in p.stderr, p.stderr
    with results.open("a") as fh:
        fh.write(json.dumps(_result("r2", str(tmp_path / "x.png"))) + "\n")
    p = cli("trace", str(results), "--html", page)
    assert p.returncode == 0
    assert "i2cr: 1 local image(s) are not embedded: give --image-root" in p.stderr
    p = cli("trace", str(results), "--html", page, "--image-root", str(tmp_path))
    assert p.returncode == 0 and "--image-root" not in p.stderr


def test_errors_name_a_records_fields_as_it_wrote_them(tmp_path):
    """A record written with the short names (context, image, candidates, clues) was told about
    'Candentity' or 'mention_imgpath'."""
    short = {"id": "s", "mention": "Jordan", "context": "Jordan dunks.",
             "candidates": JORDAN_CANDIDATES}
    long = {"mention": "Jordan", "mention_context": "Jordan dunks.",
            "Candentity": JORDAN_CANDIDATES}
    cases = [({k: v for k, v in short.items() if k != "candidates"}, "candidates", "is missing"),
             ({**short, "image": 5}, "image", "string path"),
             ({**short, "clues": "OCR"}, "clues", "clue type"),
             ({k: v for k, v in short.items() if k != "context"}, "context", "is missing"),
             ({k: v for k, v in long.items() if k != "Candentity"}, "Candentity", "is missing"),
             ({**long, "mention_imgpath": 5}, "mention_imgpath", "string path"),
             ({k: v for k, v in long.items() if k != "mention_context"}, "mention_context",
              "is missing")]
    for rec, field, why in cases:
        with pytest.raises(DataError) as e:
            parse_record(rec, "r", source="in.jsonl")
        assert e.value.field == field and f"field {field!r}: " in str(e.value) and why in \
            str(e.value), (rec, str(e.value))
    # through the loader, as a run meets it
    from i2cr.data import load_mentions

    f = tmp_path / "in.jsonl"
    f.write_text(json.dumps(cases[0][0]) + "\n")
    (err,) = load_mentions(f, strict=False)
    assert str(err) == f"{f}: record 's': field 'candidates': is missing"


def test_unknown_i2cr_environment_variables_are_named_once(tmp_path):
    """A misspelt I2CR_* variable was ignored without a word: one warning line names it (with
    the name it is closest to); known names are not warned about; the exit code is unchanged."""
    p = cli("graph", env={"I2CR_ICR_TRESHOLD": "0.3", "I2CR_NOT_A_THING": "1",
                          "I2CR_MAX_BATCH": "3", "I2CR_LLM_THREADS": "1"})
    assert p.returncode == 0 and "graph" in p.stdout
    assert p.stderr.splitlines() == [
        "i2cr: warning: unknown environment variable(s) I2CR_ICR_TRESHOLD (did you mean "
        "I2CR_ICR_THRESHOLD?), I2CR_NOT_A_THING: ignored (i2cr reads I2CR_<SETTING> for each "
        "setting of --set, and a few others named in the README)"]
    p = cli("graph", env={"I2CR_ICR_THRESHOLD": "0.3", "I2CR_API_KEYS": "k"})
    assert p.returncode == 0 and p.stderr == ""
    # every I2CR_* name the code, the scripts and the README mention is a known one
    from i2cr.envvars import known

    said = set()
    for f in [*(ROOT / "i2cr").rglob("*.py"), *(ROOT / "scripts").iterdir(), ROOT / "README.md"]:
        if f.is_file() and f.name != "envvars.py":
            said |= set(re.findall(r"\bI2CR_[A-Z0-9_]*[A-Z0-9]", f.read_text(errors="replace")))
    assert said and said <= known(), said - known()


def test_a_missing_or_damaged_ranker_weights_file_is_a_bad_setting(tmp_path):
    bad = tmp_path / "w.json"
    spec = json.loads((ROOT / "i2cr" / "ranker" / "weights.json").read_text())
    spec["models"]["prior"]["coef"][0] = float("nan")
    bad.write_text(json.dumps(spec))
    for path in (bad, tmp_path / "none.json"):
        p = cli("link", str(EXAMPLES / "mentions.json"), "--set", f"ranker_weights={path}")
        # was exit 1 with every mention an error (missing) or exit 0 ranked at random (NaN)
        assert p.returncode == 2 and p.stdout == "", p.stderr[-2000:]
        assert str(path) in one_line_error(p)


# --- candidates over max_candidates: the cut is in the record's truncated and counted ----------

def test_candidates_cut_to_max_candidates_are_listed_in_truncated_and_counted(tmp_path):
    few = {**GOOD, "Candentity": JORDAN_CANDIDATES[:3]}  # within max_candidates=3
    data = write_json(tmp_path / "data.json", {"many": GOOD, "few": few})  # many: 4 candidates
    labels = write_json(tmp_path / "labels.json", {"many": "Michael Jordan", "few": "Michael Jordan"})
    line = "i2cr: 1 mention(s) had more than max_candidates=3 candidates: only the first 3 were ranked"
    p = cli("link", str(data), "--no-progress", "--json", "--set", "max_candidates=3")
    assert p.returncode == 0, p.stderr[-2000:]  # not an error: the input's, reported
    recs = {r["id"]: r for r in map(json.loads, p.stdout.splitlines())}
    assert recs["many"]["truncated"] == [{"field": "candidates", "from": 4, "to": 3}]
    assert "truncated" not in recs["few"]
    assert [x for x in p.stderr.splitlines() if "max_candidates" in x] == [line + " (see truncated)"]
    p = cli("eval", str(data), str(labels), "--no-progress", "--out-dir", str(tmp_path / "ev"),
            "--set", "max_candidates=3")
    assert p.returncode == 0, p.stderr[-2000:]
    assert [x for x in p.stderr.splitlines() if "max_candidates" in x] == [line + " (see truncated)"]
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["candidate_cuts"] == {"3": 1}
    assert "1 mention(s) had more than max_candidates=3" in (tmp_path / "ev" / "report.md").read_text()
    p = cli("link", str(write_json(tmp_path / "few.json", {"few": few})), "--no-progress", "--json",
            "--set", "max_candidates=3")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "truncated" not in json.loads(p.stdout) and "max_candidates" not in p.stderr


# --- labels that name no record: one warning line, in eval's report too ------------------------

def test_labels_that_name_no_record_are_counted_in_one_warning_line(tmp_path, capsys):
    """A labels file with a typo in an id, or of another split, was read without a word: only a
    file naming no record at all was said (eval's 'none of the records has a gold label'). Each
    command now says how many labels name no record, quoting the first five, in one line; the
    exit code is unchanged; eval's metrics.json and report.md say it too. Counted against every
    record of the file, not only those a --limit keeps."""
    from i2cr.cli import main

    data = write_json(tmp_path / "data.json", {k: GOOD for k in ("a", "b", "c")})
    long_id = "x" * 500
    typos = ["A", "bb", long_id, "d", "e", "f"]  # six labels of no record
    labels = write_json(tmp_path / "labels.json", {"a": "Michael Jordan", "b": "Michael Jordan",
                                                   "c": "Michael Jordan",
                                                   **{t: "Michael Jordan" for t in typos}})
    line = (f"i2cr: warning: 6 of the 9 label(s) name no record of the data ('A', 'bb', "
            f"'{'x' * 100}'… (500 characters), 'd', 'e', ...): they are not scored (a typo in an "
            "id, or labels of another split?)")

    def said(err: str) -> list[str]:
        return [x for x in err.splitlines() if "label(s)" in x]

    assert main(["link", str(data), "--labels", str(labels), "--no-progress", "--limit", "1"]) == 0
    assert said(capsys.readouterr().err) == [line]  # ('b' and 'c' are records, past the limit)
    ev = tmp_path / "ev"
    assert main(["eval", str(data), str(labels), "--no-progress", "--out-dir", str(ev),
                 "--limit", "2"]) == 0
    assert said(capsys.readouterr().err) == [line]
    m = json.loads((ev / "metrics.json").read_text())
    assert m["labels_unmatched"] == {"labels": 9, "count": 6, "first": typos[:5]}
    assert line.removeprefix("i2cr: warning: ") + ".\n" in (ev / "report.md").read_text()
    # every label of the file names a record: nothing said
    good = write_json(tmp_path / "good.json", {k: "Michael Jordan" for k in "abc"})
    assert main(["link", str(data), "--labels", str(good), "--no-progress"]) == 0
    assert said(capsys.readouterr().err) == []
    # none does (labels of another dataset): link says so in the same words (it said nothing),
    # and an unusable label (null) of no record counts as one
    other = write_json(tmp_path / "other.json", {"q1": "Michael Jordan", "q2": None})
    assert main(["link", str(data), "--labels", str(other), "--no-progress"]) == 0
    assert said(capsys.readouterr().err) == [
        "i2cr: warning: none of the 2 label(s) names a record of the data ('q1', 'q2'): nothing "
        "is scored against them (labels of another dataset or split?)"]
    assert main(["eval", str(data), str(other), "--no-progress", "--out-dir",
                 str(tmp_path / "e2")]) == 1  # (no record labelled: a failure, as it was)
    err = capsys.readouterr().err
    assert len(said(err)) == 1 and "none of the 3 record(s) has a gold label" in err


def _labels_with_typos(tmp_path: Path) -> Path:
    """The examples' labels and two of no record ('typo-1', 'typo-2')."""
    gold = json.loads((EXAMPLES / "labels.json").read_text())
    return write_json(tmp_path / "labels.json", {**gold, "typo-1": "nil",
                                                 "typo-2": "Barack Obama"})


def _label_lines(err: str) -> list[str]:
    return [x for x in err.splitlines() if "label(s)" in x]


@pytest.mark.parametrize("prog", ["calibrate", "crossval"])
def test_fitting_warns_of_the_labels_that_name_no_record(tmp_path, capsys, prog):
    """calibrate and crossval read labels without checking that each names a record (link and
    eval did): they now run the input checks every driver runs (runner.check_input), in one
    line in their own words."""
    import importlib

    main = importlib.import_module(f"i2cr.eval.{prog}").main
    labels = _labels_with_typos(tmp_path)
    args = ["--folds", "2", *(["--out", str(tmp_path / "w.json")] if prog == "calibrate"
                              else ["--out-dir", str(tmp_path / "cv")])]
    assert main([str(EXAMPLES / "mentions.json"), str(labels), *args]) == 0
    assert _label_lines(capsys.readouterr().err) == [
        f"{prog}: warning: 2 of the {len(EXAMPLE_IDS) + 2} label(s) name no record of the data "
        "('typo-1', 'typo-2'): they are not used (a typo in an id, or labels of another split?)"]


def test_sft_export_warns_of_the_labels_that_name_no_record(tmp_path, capsys):
    """The SFT export read labels without checking that each names a record: it now says them
    in one line, as link and eval do (runner.check_input), the export unchanged."""
    from i2cr.cli import main

    out = tmp_path / "train.jsonl"
    assert main(["sft", "export", str(EXAMPLES / "mentions.json"),
                 str(_labels_with_typos(tmp_path)), "--out", str(out)]) == 0
    assert _label_lines(capsys.readouterr().err) == [
        f"i2cr: warning: 2 of the {len(EXAMPLE_IDS) + 2} label(s) name no record of the data "
        "('typo-1', 'typo-2'): they give no example (a typo in an id, or labels of another split?)"]
    assert out.read_text().count("\n") >= 4


# --- eval's report.md and metrics.json say the caches that failed ------------------------------

def test_eval_report_and_metrics_say_the_caches_that_failed(tmp_path, capsys):
    """A cache that failed was said on stderr and in the exit code, but report.md and
    metrics.json (what is kept of the run) did not say it: they now count the caches that
    failed and give each one's reason, in the closing line's words (the folder is in the
    warning only). stderr says each once, as before."""
    from i2cr.cli import main

    bad = tmp_path / "emb"
    bad.write_text("a file where the cache folder should be")
    ev = tmp_path / "ev"
    assert main(["eval", str(EXAMPLES / "mentions.json"), str(EXAMPLES / "labels.json"),
                 "--no-progress", "--out-dir", str(ev), "--set", f"embedding_cache={bad}",
                 "--set", "clue_cache=none"]) == 1
    err = capsys.readouterr().err
    closing = [x for x in err.splitlines() if x.startswith("i2cr: cache failure, ")]
    assert len(closing) == 1 and closing[0].startswith(
        "i2cr: cache failure, embedding cache: is unusable ("), err[-2000:]
    phrase = closing[0].removeprefix("i2cr: cache failure, ")
    m = json.loads((ev / "metrics.json").read_text())
    assert m["cache_failures"] == {"count": 1, "reasons": [phrase]}
    report = (ev / "report.md").read_text()
    assert f"**Cache failure, {phrase}**" in report
    assert str(bad) not in report.replace(phrase, "") and m["labelled"] == len(EXAMPLE_IDS)
    # a run whose caches are sound says none
    assert main(["eval", str(EXAMPLES / "mentions.json"), str(EXAMPLES / "labels.json"),
                 "--no-progress", "--out-dir", str(tmp_path / "ok"), "--set",
                 "clue_cache=none"]) == 0
    assert json.loads((tmp_path / "ok" / "metrics.json").read_text())["cache_failures"] == {
        "count": 0, "reasons": []}
    assert "Cache failure" not in (tmp_path / "ok" / "report.md").read_text()
