"""Inside a network namespace of its own (loopback only): a local NDIF on a model folder,
seed 001's patching session and the session probe run remotely through nnsight's
RemoteBackend and locally, an unknown model asked for; prints one JSON line of figures.

Usage: unshare -n python tests/tools/ndif_stack_run.py MODEL_FOLDER
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import torch

subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
torch.set_num_threads(1)

import reprlab  # noqa: E402
from reprlab.ndif_local import stack  # noqa: E402
from reprlab.sessions.errors import RemoteError  # noqa: E402

SRC = "The Eiffel Tower is in the city of"
TGT = "Buckingham Palace is in the city of"


def seed001(lm, backend, **kw):
    with reprlab.session(lm, backend=backend, **kw) as s:
        with s.trace(SRC) as t1:
            h = t1.read("layers.-2", pos=-1)
        with s.trace(TGT) as t2:
            t2.write("layers.-2", h, pos=-1)
            t2.save(t2.logits[:, -1].argmax(-1), "top")
            t2.save(t2.logits, "logits")
    return s.results


def main(folder: str) -> dict:
    out: dict = {}
    t0 = time.time()
    host = stack.up(folder)
    out["start_s"] = round(time.time() - t0, 1)
    os.environ["NDIF_HOST"] = host
    os.environ.setdefault("NDIF_API_KEY", "local-key")
    try:
        lm = reprlab.load_model(folder)
        local = seed001(lm, "local")
        t = time.time()
        far = seed001(lm, "nnsight", remote=True)
        out["session_s"] = round(time.time() - t, 2)
        out["session_keys"] = sorted(far)
        out["session_equal"] = bool(torch.equal(far["logits"], local["logits"])
                                    and torch.equal(far["top"], local["top"]))
        out["session_maxdiff"] = float((far["logits"] - local["logits"]).abs().max())
        out["top"] = lm.tokenizer.decode(far["top"])

        from reprlab.sessions.remote_probe import train_probe_in_session

        texts = ["Paris is in France.", "Rome is in Italy.", "Tokyo is in Japan.",
                 "The cat sat.", "A dog ran.", "Birds fly high.", "Lima is in Peru.",
                 "Fish swim."]
        labels = [1, 1, 1, 0, 0, 0, 1, 0]
        kw = dict(site="layers.0", epochs=2, batch_size=4, lr=0.05, seed=3, mode="session",
                  progress=False)
        lp = train_probe_in_session(lm, texts, labels, backend="local", **kw)
        t = time.time()
        fp = train_probe_in_session(lm, texts, labels, backend="nnsight", remote=True, **kw)
        out["probe_s"] = round(time.time() - t, 2)
        out["probe_equal"] = bool(torch.equal(fp.weight, lp.weight)
                                  and torch.equal(fp.bias, lp.bias)
                                  and torch.equal(fp.losses, lp.losses))
        out["probe_maxdiff"] = float((fp.weight - lp.weight).abs().max())
        out["probe_trained"] = float(fp.weight.abs().sum())

        from reprlab.sessions import nnsight_backend as nb

        tm = nb.wrap_remote(lm)
        real = tm.repo_id
        tm.repo_id = real + "-not-deployed"
        from nnsight.modeling.huggingface import _ID_CACHE

        _ID_CACHE.setdefault(tm.repo_id, tm.repo_id)
        try:
            seed001(lm, "nnsight", remote=True)
            out["unknown_model"] = None
        except RemoteError as exc:
            out["unknown_model"] = str(exc)
        finally:
            tm.repo_id = real
    finally:
        pids = stack.down()
        out["stopped"] = len(pids)
        out["left"] = [p for p in pids if stack._alive(p)]
    return out


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(sys.argv[1])), flush=True)
