"""Start ``python -m reprlab ...`` under a multi-process launcher for the data-parallel tests:
``torchrun`` (``torch.distributed.run``) or ``accelerate launch`` (torchrun underneath; gloo on
the CPU), two processes, a free port, one thread each, offline, in a private home."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _absolute_path_list(value: str) -> str:
    """``PYTHONPATH`` with each entry made absolute: the launched processes run in another
    working directory, where a relative entry (``PYTHONPATH=src``) would name nothing and
    Python would fall back silently to whatever copy of the package is installed."""
    return os.pathsep.join(str(Path(p).resolve()) if p else p for p in value.split(os.pathsep))


def launch_env(home: Path) -> dict:
    env = dict(os.environ)
    if env.get("PYTHONPATH"):
        env["PYTHONPATH"] = _absolute_path_list(env["PYTHONPATH"])
    return {**env, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false", "REPRLAB_HOME": str(home),
            "HF_HOME": str(home / "hf"), "MPLBACKEND": "Agg"}


def launcher_head(launcher: str = "torchrun", processes: int = 2) -> list[str]:
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                str(processes), "--master_port", str(free_port())]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
            "--num_processes", str(processes), "--num_machines", "1", "--mixed_precision",
            "no", "--dynamo_backend", "no", "--main_process_port", str(free_port())]


def launch(argv: list[str], home: Path, cwd: Path, launcher: str = "torchrun",
           timeout: int = 240) -> subprocess.CompletedProcess:
    """Run ``reprlab argv`` in two processes; assert it exits 0 (the output tail otherwise)."""
    cwd.mkdir(parents=True, exist_ok=True)
    res = subprocess.run([*launcher_head(launcher), "-m", "reprlab", *argv],
                         env=launch_env(home), cwd=cwd, capture_output=True, text=True,
                         timeout=timeout)
    said = [ln for ln in (res.stdout + res.stderr).splitlines() if "error: " in ln]
    assert res.returncode == 0, ("\n".join(said[:4]) + "\n" + res.stdout[-1500:]
                                 + res.stderr[-3000:])
    return res


def files(root: Path) -> set[str]:
    """Every file below ``root``, relative to it."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
