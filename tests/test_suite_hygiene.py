"""The test suite cleans up after itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_a_test_session_leaves_no_cache_folder_behind(tmp_path):
    """conftest's per-session cache folder (clues, embeddings) is removed when the session ends;
    it used to stay in the temporary folder after every run."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    p = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/test_names.py::test_stage_change_judges_correct_as_the_record_does"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert "passed" in p.stdout
    assert sorted(x.name for x in tmp_path.glob("i2cr-tests-*")) == []
