"""The thread policy at the model-forward entry points: capture, sessions / patching, steering.

Each forward runs at the count :mod:`reprlab._threads` chooses (one thread for the tiny test
models; ``threads=`` / ``set_threads`` / ``REPRLAB_THREADS`` override it), the caller's torch
thread count comes back afterwards (also after an exception), and the numbers do not depend
on going through the policy.
"""

from __future__ import annotations

import functools

import pytest
import torch
from conftest import make_tiny, save_lm

from reprlab import _threads
from reprlab.capture import capture
from reprlab.sessions.patching import patch, sweep
from reprlab.steering import SteeringFitter, validate

CALLER = 3  # the caller's own count: neither the policy's 1 nor the override's 2
TEXTS = ["The city of Paris is in France.", "Hello.", "A longer sentence with more tokens.",
         "The city of Tokyo is in Japan."]
POS = ["I love this film", "What a wonderful day", "This is great news"]
NEG = ["I hate this film", "What an awful day", "This is terrible news"]
SRC, TGT = "The city of Paris is", "The city of Tokyo is"


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    monkeypatch.delenv(_threads.ENV_VAR, raising=False)
    _threads.set_threads(None)
    before = torch.get_num_threads()
    torch.set_num_threads(CALLER)
    yield
    _threads.set_threads(None)
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def lm():
    return make_tiny("gpt2")


class Spy:
    """Records torch's thread count inside every forward of the first block; can fail it."""

    def __init__(self, lm):
        self.seen: list[int] = []
        self.fail = False
        block = lm.model.get_submodule(lm.arch.layers_path)[0]
        self.handle = block.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.seen.append(torch.get_num_threads())
        if self.fail:
            raise RuntimeError("planted failure inside the forward")

    def take(self) -> list[int]:
        out, self.seen = self.seen, []
        return out


@pytest.fixture
def spy(lm):
    s = Spy(lm)
    yield s
    s.handle.remove()


def _capture(lm, tmp_path, name, **kw):
    store = capture(lm, TEXTS, "layers.*", "last,mean", tmp_path / name, batch_size=2,
                    progress=False, **kw)
    return {k: store[s, p].clone() for s in store.sites for p in store.positions
            for k in [(s, p)]}


def _patch(lm, **kw):
    return patch(lm, SRC, TGT, "layers.1", pos=-1, k=3, **kw)


def _steer(lm, **kw):
    vec = SteeringFitter(lm, "layers.*", "pca-center", batch_size=4, progress=False,
                         **kw).fit_pairs(POS, NEG)
    return {s: vec.direction(s).clone() for s in vec.sites}


def _validate(lm, vec, **kw):
    res = validate(lm, vec, "layers.1", [-2.0, 0.0, 2.0], neutral=TEXTS, batch_size=2,
                   progress=False, **kw)
    return {k: m["mean"] for k, m in res["metrics"].items()}


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


RUNS = {"capture": lambda lm, vec, tmp, tag, **kw: _capture(lm, tmp, tag, **kw),
        "patch": lambda lm, vec, tmp, tag, **kw: _patch(lm, **kw),
        "steer-fit": lambda lm, vec, tmp, tag, **kw: _steer(lm, **kw),
        "steer-validate": lambda lm, vec, tmp, tag, **kw: _validate(lm, vec, **kw)}


@pytest.fixture(scope="module")
def vec(lm):
    """The vector validation steers along (fitted before the spy is on)."""
    return SteeringFitter(lm, "layers.1", "mean-diff", batch_size=6, progress=False,
                          threads=1).fit_pairs(POS, NEG)


@pytest.mark.parametrize("what", list(RUNS))
def test_forwards_run_at_the_policy_count_and_the_caller_keeps_its_own(what, lm, vec, spy,
                                                                       tmp_path, monkeypatch):
    run = functools.partial(RUNS[what], lm, vec)
    ref = run(tmp_path, "one", threads=1)
    spy.take()
    default = run(tmp_path, "default")
    seen = spy.take()
    # tiny model, small batches: the policy's one thread in every forward, not the caller's 3
    assert seen and set(seen) == {1}
    assert torch.get_num_threads() == CALLER
    assert _same(default, ref)  # going through the policy changes no number

    run(tmp_path, "two", threads=2)
    assert set(spy.take()) == {2} and torch.get_num_threads() == CALLER

    _threads.set_threads(2)
    run(tmp_path, "set", threads=None)
    assert set(spy.take()) == {2} and torch.get_num_threads() == CALLER
    _threads.set_threads(None)

    monkeypatch.setenv(_threads.ENV_VAR, "1")
    torch.set_num_threads(2)
    env = run(tmp_path, "env")
    assert set(spy.take()) == {1} and torch.get_num_threads() == 2
    assert _same(env, ref)


@pytest.mark.parametrize("what", list(RUNS))
def test_the_caller_count_comes_back_after_an_exception(what, lm, vec, spy, tmp_path):
    spy.fail = True
    with pytest.raises(RuntimeError, match="planted failure"):
        RUNS[what](lm, vec, tmp_path, "boom", threads=2)
    assert spy.take() == [2]
    assert torch.get_num_threads() == CALLER


def test_session_ops_and_probe_training_use_the_policy(lm, spy):
    from reprlab.sessions.remote_probe import train_probe_in_session

    labels = [0, 1, 0, 1]
    one = train_probe_in_session(lm, TEXTS, labels, "layers.1", epochs=2, batch_size=2,
                                 progress=False, threads=1)
    spy.take()
    default = train_probe_in_session(lm, TEXTS, labels, "layers.1", epochs=2, batch_size=2,
                                     progress=False)
    assert set(spy.take()) == {1} and torch.get_num_threads() == CALLER
    assert torch.equal(one.weight, default.weight) and torch.equal(one.losses, default.losses)
    sweep(lm, SRC, TGT, "layers.0,layers.1", [-1], tokens=["paris", "tokyo"], threads=2)
    assert set(spy.take()) == {2} and torch.get_num_threads() == CALLER


def test_nnsight_backend_runs_local_sessions_under_the_policy(lm, spy):
    pytest.importorskip("nnsight")
    ref = _patch(lm, threads=1)
    spy.take()
    out = _patch(lm, backend="nnsight", threads=2)
    seen = spy.take()
    assert seen and set(seen) == {2}
    assert torch.get_num_threads() == CALLER
    assert [r["id"] for r in out["patched_top"]] == [r["id"] for r in ref["patched_top"]]


def test_forward_flops_reads_the_config_and_big_batches_get_the_free_cores(monkeypatch):
    llama = make_tiny("llama")  # intermediate_size = 2 x hidden
    assert _threads.forward_flops(llama, 10) == 2 * 10 * 32 * 64
    assert _threads.forward_flops(make_tiny("gpt2"), 10) == 2 * 10 * 32 * 128  # 4 x hidden
    assert _threads.forward_flops(768, 100) == 2 * 100 * 768 * 3072
    monkeypatch.setattr(_threads, "cores", lambda: 8)
    monkeypatch.setattr(_threads, "own_load", lambda: 1.0)
    monkeypatch.setattr(_threads.os, "getloadavg", lambda: (3.0, 3.0, 3.0))
    with _threads.for_forward(768, 16) as n:  # 7.5e7 flops per product: one thread
        assert n == 1 and torch.get_num_threads() == 1
    with _threads.for_forward(768, 16 * 64) as n:  # 4.8e9: the 6 cores the load leaves
        assert n == 6 and torch.get_num_threads() == 6
    with _threads.for_forward(768, 16, threads=2) as n:
        assert n == 2
    assert torch.get_num_threads() == CALLER


@pytest.fixture(scope="module")
def saved(lm, tmp_path_factory):
    return str(save_lm(lm, tmp_path_factory.mktemp("tiny-gpt2")))


@pytest.mark.parametrize("argv", [
    ["capture", "--data", "builtin:cities", "--limit", "6", "--sites", "layers.1",
     "--positions", "last", "--no-progress", "--out", "{tmp}/cap"],
    ["patch", "--source", SRC, "--target", TGT, "--from", "layers.1", "--k", "2",
     "--out", "{tmp}/patch"],
    ["steer", "vector", "--pairs", "builtin:pairs-sentiment", "--limit", "4",
     "--sites", "layers.1", "--no-progress", "--out", "{tmp}/vec"],
], ids=["capture", "patch", "steer-vector"])
def test_cli_threads_flag_reaches_every_forward(argv, saved, tmp_path, monkeypatch, capsys):
    from reprlab.cli import main

    asked: list = []
    real = _threads.for_forward

    def recording(model, tokens, threads=None):
        asked.append(threads)
        return real(model, tokens, threads)

    monkeypatch.setattr(_threads, "for_forward", recording)
    words = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    cmd = words[:2] if words[0] == "steer" else words[:1]
    assert main([*cmd, "--model", saved, *words[len(cmd):], "--threads", "2"]) == 0
    assert asked and set(asked) == {2}
    assert torch.get_num_threads() == CALLER
    assert main([*cmd, "--model", saved, *words[len(cmd):], "--threads", "-1"]) == 2
    assert "--threads must be 0" in capsys.readouterr().err
