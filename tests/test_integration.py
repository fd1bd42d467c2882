"""End to end with real services: the embedded llama.cpp server (SmolLM2-135M) and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import EXAMPLE_IDS, EXAMPLES, JORDAN_CANDIDATES, ROOT

from i2cr import Context, link
from i2cr.llm import embedded_server, shutdown

pytestmark = pytest.mark.integration


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:  # a zombie is not alive
        return fh.read().split()[2] != "Z"


def test_smollm2_links_one_mention_end_to_end():
    srv = embedded_server()
    pid = srv.pid
    assert pid and _alive(pid)
    try:
        res = link("Jordan", "Jordan dunks during the 1991 NBA Finals.", JORDAN_CANDIDATES,
                   settings=Context(llm="embedded", iav_mode="off", llm_max_tokens=48))
    finally:
        shutdown()
    assert res["answer"] in {c["name"] for c in JORDAN_CANDIDATES}
    assert res["llm_calls"] >= 1
    answers = [e for e in res["events"] if e["type"] == "tes_answer"]
    assert answers and answers[0]["raw"].strip()  # the real model said something
    assert res["path"][:3] == ["prepare", "tes", "icr"] and res["path"][-1] == "final"
    assert not _alive(pid)  # the server is stopped


def test_langgraph_json_names_the_compiled_graph():
    import importlib.util

    from langgraph.graph.state import CompiledStateGraph

    spec = json.loads((ROOT / "langgraph.json").read_text())
    path, _, attr = spec["graphs"]["i2cr"].partition(":")
    mod_spec = importlib.util.spec_from_file_location("lg_entry", ROOT / path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    g = getattr(mod, attr)
    assert isinstance(g, CompiledStateGraph)
    assert {"prepare", "tes", "icr", "iav", "vif", "final"} <= set(g.get_graph().nodes)


def test_cli_graph_prints_mermaid():
    out = subprocess.run([sys.executable, "-m", "i2cr.cli", "graph"], capture_output=True,
                         text=True, check=True).stdout
    assert "graph TD" in out and "icr -.-> tes" in out and "vif -.-> tes" in out


def test_cli_links_the_shipped_example_offline(tmp_path):
    out = tmp_path / "res.jsonl"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    p = subprocess.run([sys.executable, "-m", "i2cr.cli", "link", str(EXAMPLES / "mentions.json"),
                        "--labels", str(EXAMPLES / "labels.json"), "--out", str(out),
                        "--no-progress"], capture_output=True, text=True, env=env, timeout=900)
    assert p.returncode == 0, p.stderr[-2000:]
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in recs] == EXAMPLE_IDS
    for r in recs:
        assert r["error"] is None and r["path"][0] == "prepare" and r["path"][-1] == "final"
        assert r["answer"] == "nil" or r["answer"] in json.loads(
            (EXAMPLES / "mentions.json").read_text())[r["id"]]["Candentity"].__str__()
    assert f"{len(EXAMPLE_IDS)} mention(s) linked, 0 error(s)" in p.stderr
    # resume: nothing left to do, nothing repeated
    p2 = subprocess.run([sys.executable, "-m", "i2cr.cli", "link", str(EXAMPLES / "mentions.json"),
                         "--out", str(out), "--resume", "--no-progress"], capture_output=True,
                        text=True, env=env, timeout=300)
    assert p2.returncode == 0 and len(out.read_text().splitlines()) == len(EXAMPLE_IDS)


def test_cli_reports_malformed_input(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"x": {"mention": "a", "mention_context": "b", "Candentity": [{"desc": "no name"}]}}')
    p = subprocess.run([sys.executable, "-m", "i2cr.cli", "link", str(bad), "--json",
                        "--no-progress"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 1
    rec = json.loads(p.stdout)
    assert rec["id"] == "x" and "Candentity[0]" in rec["error"]
    table = subprocess.run([sys.executable, "-m", "i2cr.cli", "link", str(bad), "--no-progress"],
                           capture_output=True, text=True, timeout=300)
    assert table.returncode == 1
    row = table.stdout.splitlines()[1]
    assert row.startswith("x ") and "(error)" in row and "Candentity[0]" in row


def test_the_readme_command_serves_the_embedded_gguf_for_openai_compat():
    """The README's `python -m llama_cpp.server` command, run as written (on a free port), serves
    the wheel's GGUF to the `openai-compat` backend."""
    import re
    import shlex
    import socket
    import time

    import httpx

    from i2cr.llm import smollm2_gguf

    readme = (ROOT / "README.md").read_text()
    m = re.search(r"^python -m llama_cpp\.server (.*?)\n(i2cr link .*?)$", readme.replace("\\\n", " "),
                  re.M)
    assert m, "the README shows the llama_cpp.server command and the link that uses it"
    argv = shlex.split(m.group(1))
    assert argv[argv.index("--model") + 1] == (
        "$(python -c 'from i2cr.llm import smollm2_gguf; print(smollm2_gguf())')")
    argv[argv.index("--model") + 1] = str(smollm2_gguf())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv[argv.index("--port") + 1] = str(port)
    spec = shlex.split(m.group(2))[shlex.split(m.group(2)).index("--llm") + 1]
    spec = spec.replace(":8000/", f":{port}/")
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", *argv],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        give_up = time.monotonic() + 900  # only against a server that hangs without a word
        while proc.poll() is None and time.monotonic() < give_up:  # wait on it: up, or gone
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        assert proc.poll() is None, "llama_cpp.server exited"
        res = link("Jordan", "Jordan dunks during the 1991 NBA Finals.", JORDAN_CANDIDATES,
                   settings=Context(llm=spec, iav_mode="off", llm_max_tokens=48, tes_retries=0))
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert res["llm_calls"] >= 1 and res["error"] is None
    assert not [e for e in res["events"] if e["type"] == "llm_error"]
    answers = [e for e in res["events"] if e["type"] == "tes_answer"]
    assert answers and answers[0]["raw"].strip()
