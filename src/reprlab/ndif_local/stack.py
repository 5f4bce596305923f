"""A local NDIF: Redis, Ray with NDIF's controller and a CPU model actor, and NDIF's API.

``reprlab ndif up --model toy`` starts, in this order, each as a process of its own whose id is
recorded in ``$REPRLAB_HOME/ndif/state.json``:

- ``redis-server`` on 127.0.0.1 (NDIF's request queue and status pub/sub), no persistence;
- a Ray head (``ray start --head --block``). Ray 2.60's token auth is off
  (``RAY_AUTH_MODE=disabled``, for every process here). NDIF's controller places models only on
  nodes with a ``GPU`` resource and a ``cuda_memory_bytes`` resource, so the head declares one
  GPU and the machine's memory under that name; the model actor itself asks for no GPU
  (:mod:`reprlab.ndif_local.actor`, chosen with NDIF's own ``NDIF_MODEL_IMPORT_PATH``);
- NDIF's controller actor, then the model's deployment with an explicit size (the controller
  would ask the Hub otherwise) in float32, waited on until the replica is ready;
- NDIF's API under gunicorn bound to 127.0.0.1. With no ``NDIF_POSTGRES_URL`` any API key is
  accepted. No object store is started: blocking requests return their result inline through
  Redis; non-blocking requests and results over the inline cap would need an S3 store.

The model key is NDIF's key for a local folder (:func:`reprlab.ndif_local.core.local_model_key`),
the same one reprlab's client computes without the Hub. ``reprlab ndif down`` stops what was
recorded (each process with its children, SIGTERM then SIGKILL: Ray's gcs_server and raylet
ignore SIGTERM); ``ray stop`` is never used, since it kills every Ray process on the machine.

Ray advertises the host's interface address even when told 127.0.0.1; on a shared machine run
the stack and its client inside a network namespace whose only interface is loopback
(``unshare -rn`` then ``ip link set lo up``), as the tests do.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from reprlab.errors import ConfigError

logger = logging.getLogger(__name__)

ACTOR = "reprlab.ndif_local.actor.CpuModelActor"


def state_dir() -> Path:
    from reprlab.io import reprlab_home

    return Path(reprlab_home()) / "ndif"


def _state_file() -> Path:
    return state_dir() / "state.json"


def _free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def resolve_folder(model: str) -> Path:
    """``toy`` / ``toy-mini`` (built in the reprlab cache) or a local model folder."""
    from reprlab.models import TOY_MODELS

    if model.lower() in TOY_MODELS:
        from reprlab.toy.variants import resolve_alias

        try:
            folder = Path(resolve_alias(model))
        except Exception as exc:
            raise ConfigError(f"--model {model}: {str(exc).splitlines()[0]}") from None
    else:
        folder = Path(model)
    if not (folder.is_dir() and (folder / "config.json").is_file()):
        raise ConfigError(f"--model {model}: not a model folder (no config.json there); give "
                          "toy, toy-mini or a local Hugging Face model folder")
    return folder.resolve()


def _env(ray_port: int, client_port: int, redis_port: int) -> dict:
    src = str(Path(__file__).resolve().parents[2])
    return dict(os.environ, RAY_AUTH_MODE="disabled", GRPC_ENABLE_FORK_SUPPORT="0",
                RAY_USAGE_STATS_ENABLED="0", NDIF_MODEL_IMPORT_PATH=ACTOR,
                NDIF_REDIS_URL=f"redis://127.0.0.1:{redis_port}",
                NDIF_RAY_ADDRESS=f"ray://127.0.0.1:{client_port}",
                NDIF_CONTROLLER_SYNC_INTERVAL_S="5", NDIF_DEFAULT_DTYPE="float32",
                PYTHONPATH=os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p),
                OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")


def _descendants(pids: list[int]) -> list[int]:
    import psutil

    out = []
    for pid in pids:
        try:
            out += [c.pid for c in psutil.Process(pid).children(recursive=True)]
        except psutil.Error:
            pass
    return out


def up(model: str = "toy", port: int = 8001, redis_port: int = 6379, ray_port: int = 6385,
       timeout: float = 300.0) -> str:
    """Start the stack with ``model`` deployed; returns the host URL for ``--ndif-host``."""
    folder = resolve_folder(model)
    if shutil.which("redis-server") is None:
        raise ConfigError("redis-server is not installed (Debian: apt-get install "
                          "redis-server, or bash tests/tools/install_ndif.sh)")
    try:
        import ndif.services.api.app  # noqa: F401
        import ray  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"the NDIF stack is not installed ({exc}); run "
                          "bash tests/tools/install_ndif.sh") from None
    if _state_file().exists():
        st = json.loads(_state_file().read_text())
        if any(_alive(p) for p in st.get("pids", [])):
            raise ConfigError(f"a local NDIF is already running at {st['host']}; "
                              "run `reprlab ndif down` first")
        _state_file().unlink()
    client_port = ray_port + 1
    for p in (port, redis_port, ray_port, client_port, ray_port + 2):
        if not _free(p):
            raise ConfigError(f"port {p} on 127.0.0.1 is in use; stop what holds it or "
                              "choose other ports (--port, --redis-port, --ray-port)")
    state_dir().mkdir(parents=True, exist_ok=True)
    logs = state_dir() / "logs"
    logs.mkdir(exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="rl-ray-")  # Ray's socket paths must stay short
    env = _env(ray_port, client_port, redis_port)
    host = f"http://127.0.0.1:{port}"
    state = {"host": host, "pids": [], "ray_temp": tmp, "model": str(folder)}

    def spawn(name: str, argv: list[str], **kw) -> subprocess.Popen:
        log = open(logs / f"{name}.log", "wb")
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, **kw)
        state["pids"].append(proc.pid)
        _state_file().write_text(json.dumps(state))
        return proc

    from reprlab.ndif_local.core import local_model_key

    key = local_model_key(folder)
    size = sum(f.stat().st_size for f in folder.glob("*.safetensors")) or 10**8
    t0 = time.time()
    try:
        spawn("redis", ["redis-server", "--bind", "127.0.0.1", "--port", str(redis_port),
                        "--save", "", "--appendonly", "no"])
        import psutil

        mem = psutil.virtual_memory().total
        resources = json.dumps({"head": 10, "cuda_memory_bytes": mem, "cpu_memory_bytes": mem})
        spawn("ray", [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
                      "--node-ip-address=127.0.0.1", f"--port={ray_port}",
                      f"--ray-client-server-port={client_port}", "--num-gpus=1",
                      f"--resources={resources}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                      f"--dashboard-port={ray_port + 2}",
                      "--disable-usage-stats", f"--temp-dir={tmp}"])
        deploy = subprocess.run(
            [sys.executable, "-m", "reprlab.ndif_local.stack", "deploy", f"127.0.0.1:{ray_port}",
             key, str(size), str(timeout)], env=env, capture_output=True, text=True,
            timeout=timeout + 30)
        (logs / "deploy.log").write_text(deploy.stdout + deploy.stderr)
        if deploy.returncode != 0:
            tail = (deploy.stderr.strip() or deploy.stdout.strip() or "no output").splitlines()
            raise ConfigError(f"the model did not deploy: {tail[-1]} (logs: {logs})")
        spawn("api", [sys.executable, "-m", "gunicorn", "--config",
                      "python:ndif.services.api.gunicorn_conf", "--bind", f"127.0.0.1:{port}",
                      "ndif.services.api.app:app"])
        _wait_http(host, timeout=180)
    except BaseException:
        down()
        raise
    state["pids"] += _descendants(state["pids"])
    state["started_s"] = round(time.time() - t0, 1)
    state["model_key"] = key
    _state_file().write_text(json.dumps(state))
    logger.info("local NDIF up in %.1f s", state["started_s"])
    return host


def _wait_http(host: str, timeout: float) -> None:
    """Wait until the API answers ``/connected`` with 200: its dispatcher has reached Ray.

    ``/ping`` answers as soon as gunicorn serves, while requests still get 503
    ("compute backend is reconnecting") until the dispatcher's first Ray connection,
    which takes longer on a loaded machine.
    """
    import urllib.request

    end = time.time() + timeout
    last = "no answer"
    while time.time() < end:
        try:
            urllib.request.urlopen(host + "/connected", timeout=2)
            return
        except Exception as exc:
            last = f"HTTP {exc.code}" if getattr(exc, "code", None) else type(exc).__name__
            time.sleep(0.5)
    raise ConfigError(f"NDIF's API at {host} did not report its compute backend connected "
                      f"within {timeout:.0f} s (last: {last}; logs: {state_dir() / 'logs'})")


def down() -> list[int]:
    """Stop every process ``up`` recorded (and their children); returns the ids stopped."""
    if not _state_file().exists():
        return []
    st = json.loads(_state_file().read_text())
    pids = list(dict.fromkeys(st.get("pids", []) + _descendants(st.get("pids", []))))
    live = [p for p in pids if _alive(p)]
    # the API's queue dispatcher before the gunicorn master; children before parents
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in reversed(live):
            try:
                os.kill(p, sig)
            except OSError:
                pass
        end = time.time() + 5
        while time.time() < end and any(_alive(p) for p in live):
            time.sleep(0.2)
        live = [p for p in live if _alive(p)]
        if not live:
            break
    for p in pids:  # reap our own children
        try:
            os.waitpid(p, os.WNOHANG)
        except OSError:
            pass
    if st.get("ray_temp"):
        shutil.rmtree(st["ray_temp"], ignore_errors=True)
    _state_file().unlink()
    return pids


def _deploy(address: str, key: str, size: int, timeout: float) -> None:
    """Runs in its own process: start NDIF's controller and deploy ``key`` on the CPU actor."""
    import ray
    from ndif.common.schema.controller import DeploymentConfig
    from ndif.services.ray.deployments.controller.controller import app

    end = time.time() + timeout
    while True:
        try:
            ray.init(address=address, namespace="NDIF", logging_level="ERROR")
            break
        except Exception:
            if time.time() > end:
                raise
            time.sleep(1)
    app(deployments=[""], model_import_path=ACTOR)
    controller = ray.get_actor("Controller", namespace="NDIF")
    config = DeploymentConfig(pinned=True, size_bytes=size, dtype="float32", padding_bias=0,
                              actor_class=ACTOR)
    response = ray.get(controller._deploy.remote(deployments={key: config}))
    result = response.results.get(key)
    if result is None or result.error or not result.replicas:
        raise SystemExit(f"not placed: {result.error if result else 'no result'}")
    from ndif.cli.lib.models import wait_for_replica_ready

    for rid in result.replicas:
        wait_for_replica_ready(key, rid)
    print("ready", key)


if __name__ == "__main__":
    if sys.argv[1] == "deploy":
        _deploy(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]))
