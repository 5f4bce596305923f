"""`.ci/run`: installs from the project's files, runs the default suite and the slow checks as
two bounded steps, prints pytest's summary lines, and exits non-zero on a failure or overrun.
Exercised on a throwaway project with a stand-in `pip` (no network, no install)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TESTS = """
import os, time, pytest

def test_fast():
    assert os.environ.get("FAST_FAIL") != "1"

@pytest.mark.slow
def test_slow():
    time.sleep(float(os.environ.get("SLOW_SLEEP", "0")))
"""


def _project(tmp: Path) -> Path:
    (tmp / ".ci").mkdir()
    shutil.copy(ROOT / ".ci" / "run", tmp / ".ci" / "run")
    (tmp / "tests" / "tools").mkdir(parents=True)
    (tmp / "tests" / "tools" / "ensure_chromium.sh").write_text("echo chromium-checked\n")
    (tmp / "tests" / "tools" / "install_ndif.sh").write_text("echo ndif-checked\n")
    (tmp / "tests" / "test_x.py").write_text(TESTS)
    pyproject = (ROOT / "pyproject.toml").read_text()
    pytest_table = pyproject[pyproject.index("[tool.pytest.ini_options]"):]
    (tmp / "pyproject.toml").write_text(pytest_table[:pytest_table.index("\n[", 1)] + "\n")
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    (bin_dir / "pip").write_text('#!/bin/sh\necho "pip $*" >> "$(dirname "$0")/pip.log"\n')
    (bin_dir / "pip").chmod(0o755)
    (bin_dir / "python").symlink_to(sys.executable)
    return tmp


def _ci(project: Path, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "PATH": f"{project / 'bin'}:{os.environ['PATH']}", **env}
    full.pop("PYTEST_ADDOPTS", None)
    return subprocess.run(["bash", str(project / ".ci" / "run")], capture_output=True,
                          text=True, env=full, timeout=240)


def test_ci_installs_from_the_project_files():
    text = (ROOT / ".ci" / "run").read_text()
    assert 'pip install torch==2.13.0 && pip install -e ".[dev]"' in text
    assert "set -euo pipefail" in text


def test_ci_passes_and_prints_both_summaries(tmp_path):
    project = _project(tmp_path)
    res = _ci(project)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (project / "bin" / "pip.log").read_text().splitlines() == [
        "pip install torch==2.13.0", "pip install -e .[dev]"]
    assert "chromium-checked" in res.stdout
    assert res.stdout.count("1 passed, 1 deselected") == 2  # the default suite, then slow


def test_ci_fails_on_a_failure_and_on_an_overrun(tmp_path):
    project = _project(tmp_path)
    res = _ci(project, FAST_FAIL="1", SLOW_SLEEP="60", REPRLAB_CI_SLOW_S="4")
    assert res.returncode == 1
    assert "1 failed, 1 deselected" in res.stdout
    assert "default suite: failed" in res.stdout
    assert "slow checks: stopped after 4 s" in res.stdout
