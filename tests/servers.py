"""Starting ``langgraph dev`` for tests: offline, on 127.0.0.1 on a free port, from the repository
root, stopped with its whole process group afterwards. Modules wrap :func:`langgraph_dev` in a
module-scoped fixture, so the server starts once per module."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ROOT

SERVER_CAP_S = 300.0  # only so that a broken server cannot hang the suite; startup is awaited


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    """Stop the server's whole process group (the CLI, uvicorn and its workers)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    try:  # anything of the group left behind
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@dataclass
class DevServer:
    url: str
    log: Path
    proc: subprocess.Popen

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def langgraph_dev(workdir: Path, env: dict[str, str] | None = None) -> Iterator[DevServer]:
    """``langgraph dev`` serving ``langgraph.json`` with ``env`` added to the environment; yields
    once ``/ok`` answers (waiting on the server, not on a clock), stops it on exit."""
    pytest.importorskip("langgraph_api", reason="needs langgraph-cli[inmem] (the test extra)")
    pytest.importorskip("langgraph_sdk", reason="needs langgraph-sdk (the test extra)")
    import httpx

    cli = Path(sys.executable).parent / "langgraph"
    assert cli.exists(), f"no langgraph command next to {sys.executable}"
    port = free_port()
    log = workdir / "server.log"
    full = dict(os.environ, LANGGRAPH_CLI_NO_ANALYTICS="1", LANGSMITH_TRACING="false",
                LANGCHAIN_TRACING_V2="false", LANGSMITH_API_KEY="", LANGCHAIN_API_KEY="",
                PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH"))
                                           if p))
    full.update(env or {})
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(cli), "dev", "--host", "127.0.0.1", "--port", str(port),
                                 "--no-browser", "--no-reload"], cwd=ROOT, env=full,
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    server = DevServer(f"http://127.0.0.1:{port}", log, proc)
    try:
        cap = time.monotonic() + SERVER_CAP_S
        while True:  # wait for the event: the server answers /ok, or it exits
            if proc.poll() is not None:
                pytest.fail(f"langgraph dev exited with {proc.returncode}:\n"
                            + server.log_text()[-3000:])
            try:
                if httpx.get(f"{server.url}/ok", timeout=10).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > cap:
                pytest.fail("langgraph dev never answered /ok:\n" + server.log_text()[-3000:])
            time.sleep(0.5)
        yield server
    finally:
        stop(proc)
