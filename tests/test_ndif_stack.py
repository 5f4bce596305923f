"""The whole NDIF stack (Redis, Ray with NDIF's controller and a CPU model actor, NDIF's API)
on the mini toy model, driven through nnsight's real RemoteBackend over HTTP and the
websocket; stack and client run inside a network namespace of their own (loopback only).
Seed 001's patching session and the session probe must equal the local backend bit for bit."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
MINI = Path(os.environ.get("REPRLAB_HOME", Path.home() / ".cache" / "reprlab")) / "toy/mini/base"


def _unshare() -> list[str] | None:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return None
    argv = ["unshare", "-n"] if os.geteuid() == 0 else ["unshare", "-rn"]
    ok = subprocess.run(argv + ["true"], capture_output=True).returncode == 0
    return argv if ok else None


@pytest.fixture(scope="module")
def figures(tmp_path_factory, toy_mini):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (bash tests/tools/install_ndif.sh)")
    argv = _unshare()
    if argv is None:
        pytest.skip("no network namespace here (unshare -n / ip unavailable or not permitted)")
    pytest.importorskip("ndif.services.api.app", reason="bash tests/tools/install_ndif.sh")
    pytest.importorskip("ray")
    folder = MINI if (MINI / "config.json").is_file() else toy_mini.base
    home = tmp_path_factory.mktemp("ndif-home")
    env = dict(os.environ, REPRLAB_HOME=str(home), PYTHONPATH=str(ROOT / "src"))
    run = subprocess.run(argv + [sys.executable, str(ROOT / "tests/tools/ndif_stack_run.py"),
                                 str(folder)], env=env, capture_output=True, text=True,
                         timeout=600)
    lines = [x for x in run.stdout.splitlines() if x.startswith("RESULT ")]
    assert run.returncode == 0 and lines, run.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    out["state_left"] = (home / "ndif" / "state.json").exists()
    return out


def test_patching_session_equals_local_and_keeps_shared_values_on_the_server(figures):
    assert figures["session_keys"] == ["logits", "top"]    # h stayed on the server
    assert figures["session_equal"] and figures["session_maxdiff"] == 0.0


def test_session_probe_equals_local(figures):
    assert figures["probe_equal"] and figures["probe_maxdiff"] == 0.0
    assert figures["probe_trained"] > 0


def test_unknown_model_is_one_line(figures):
    msg = figures["unknown_model"]
    assert msg and "\n" not in msg and msg.startswith("the session failed on NDIF")


def test_down_stops_everything_it_started(figures):
    assert figures["stopped"] > 5 and figures["left"] == [] and not figures["state_left"]
