"""Thread policy: one thread for small batched work, the free cores for large work, overrides."""

from __future__ import annotations

import pytest
import torch

from reprlab import _threads
from reprlab.probes import lbfgs
from reprlab.probes.logistic import fit_logistic


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    monkeypatch.delenv(_threads.ENV_VAR, raising=False)
    _threads.set_threads(None)
    before = torch.get_num_threads()
    yield
    _threads.set_threads(None)
    torch.set_num_threads(before)


def test_small_work_runs_on_one_thread_large_work_on_the_free_cores(monkeypatch):
    monkeypatch.setattr(_threads, "cores", lambda: 8)
    monkeypatch.setattr(_threads, "own_load", lambda: 1.0)  # this process: one busy thread
    monkeypatch.setattr(_threads.os, "getloadavg", lambda: (2.2, 2.0, 2.0))
    assert _threads.free_cores() == 7  # 8 cores, load 2.2 of which one is ours
    assert _threads.choose("matmul", 1e6) == 1
    assert _threads.choose("matmul", 1e10) == 7
    assert _threads.choose("eigh", 1e10) == 1  # eigensolvers need much more to scale
    assert _threads.choose() == 1
    monkeypatch.setattr(_threads.os, "getloadavg", lambda: (30.0, 30.0, 30.0))
    assert _threads.choose("matmul", 1e12) == 1  # a saturated machine: never oversubscribe


def test_this_process_own_recent_threads_do_not_count_as_another_jobs(monkeypatch):
    # a process that ran on both cores for the last minute sees load 2.0 on 2 cores: that
    # load is its own, so the cores are still free to it; another job's load is not
    clock = {"wall": 1000.0, "cpu": 50.0}
    monkeypatch.setattr(_threads.time, "monotonic", lambda: clock["wall"])
    monkeypatch.setattr(_threads.time, "process_time", lambda: clock["cpu"])
    monkeypatch.setattr(_threads, "_own", {"t": 1000.0, "cpu": 50.0, "avg": 1.0})
    monkeypatch.setattr(_threads, "cores", lambda: 2)
    monkeypatch.setattr(_threads.os, "getloadavg", lambda: (2.0, 2.0, 2.0))
    assert _threads.free_cores() == 1  # nothing known yet: one thread of it is ours
    for _ in range(24):  # two busy threads for two minutes, sampled every 5 s
        clock["wall"] += 5.0
        clock["cpu"] += 10.0
        _threads.own_load()
    assert 1.8 < _threads.own_load() <= 2.0
    assert _threads.free_cores() == 2 and _threads.choose("matmul", 1e12) == 2
    monkeypatch.setattr(_threads.os, "getloadavg", lambda: (3.0, 3.0, 3.0))
    assert _threads.free_cores() == 1  # one more runnable thread is another job's
    for _ in range(60):  # five idle minutes: its own part fades to the asking thread
        clock["wall"] += 5.0
        _threads.own_load()
    assert _threads.own_load() == 1.0


def test_overrides_take_precedence(monkeypatch):
    monkeypatch.setenv(_threads.ENV_VAR, "3")
    assert _threads.choose("matmul", 1.0) == 3
    _threads.set_threads(2)
    assert _threads.choose("matmul", 1e12) == 2  # set_threads beats the environment
    _threads.set_threads(None)
    monkeypatch.setenv(_threads.ENV_VAR, "auto")
    assert _threads.configured() is None
    monkeypatch.setenv(_threads.ENV_VAR, "many")
    assert _threads.configured() is None  # ignored, with a warning
    with pytest.raises(ValueError, match="at least 1"):
        _threads.set_threads(0)


def test_scopes_restore_the_callers_setting():
    torch.set_num_threads(2)
    with _threads.num_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with _threads.num_threads(None):  # the policy: one thread for small work
        assert torch.get_num_threads() == 1
    with _threads.for_work("matmul", 1.0, threads=2) as n:
        assert n == 2 and torch.get_num_threads() == 2
    assert torch.get_num_threads() == 2


def test_probe_fit_uses_the_policy_and_the_option(monkeypatch):
    seen = []
    real = lbfgs.minimize

    def spy(*a, **k):
        seen.append(torch.get_num_threads())
        return real(*a, **k)

    monkeypatch.setattr(lbfgs, "minimize", spy)
    torch.set_num_threads(2)
    X = torch.randn(2, 50, 8, dtype=torch.float64)
    y = (X[0, :, 0] > 0).long()
    fit_logistic(X, y, n_classes=2)  # a few kilo-flops per product: one thread
    fit_logistic(X, y, n_classes=2, threads=2)
    _threads.set_threads(2)
    fit_logistic(X, y, n_classes=2)
    assert seen == [1, 2, 2]
    assert torch.get_num_threads() == 2
