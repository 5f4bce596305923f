"""Change points, checkpoint ordering and validation, split-half floors."""

from __future__ import annotations

import pytest
import torch

from reprlab.drift import changepoints as cp
from reprlab.drift.checkpoints import (
    check_same_architecture,
    check_same_inputs,
    expand,
    order_checkpoints,
    step_of,
)
from reprlab.errors import ConfigError, DataError, ModelError


def planted(seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.cat([torch.zeros(30), 3 * torch.ones(25), torch.ones(20)])
    return y + 0.2 * torch.randn(len(y), generator=g)


@pytest.mark.parametrize("method", ["pelt", "binseg"])
def test_planted_change_points_found(method):
    y = planted()
    steps = torch.arange(len(y)) * 50
    pts = cp.detect(y, steps, method=method)
    assert [p.index for p in pts] == [30, 55]
    assert pts[0].step == 1500
    assert pts[0].magnitude == pytest.approx(3.0, abs=0.3)
    assert pts[1].magnitude == pytest.approx(-2.0, abs=0.3)
    assert cp.strongest(pts).index == 30


def test_no_change_in_pure_noise():
    g = torch.Generator().manual_seed(3)
    assert cp.detect(torch.randn(80, generator=g)) == []


def test_fallback_without_ruptures(monkeypatch):
    import builtins

    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "ruptures":
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    assert [p.index for p in cp.detect(planted())] == [30, 55]


def test_jump_one_finds_change_off_the_grid_of_five():
    y = torch.cat([torch.zeros(13), torch.ones(14)]) + 0.01 * torch.randn(27)
    assert [p.index for p in cp.detect(y)] == [13]


def test_checkpoints_ordered_by_step(tmp_path):
    names = ["step_100", "step_50", "step_1000", "step_5"]
    for n in names:
        (tmp_path / n).mkdir()
    assert [s for s, _ in order_checkpoints(names)] == [5, 50, 100, 1000]
    assert [p.name for _, p in expand(str(tmp_path / "step_*"))] == [
        "step_5", "step_50", "step_100", "step_1000"]
    assert step_of("runs/checkpoint-1200/") == 1200
    assert step_of("ckpt-e3-step-400.safetensors") == 400
    with pytest.raises(ConfigError, match="step number"):
        step_of("final")
    with pytest.raises(ConfigError, match="share step"):
        order_checkpoints(["a/step-5", "b/step-5"])


def test_bad_checkpoint_sets_refused():
    with pytest.raises(ModelError, match="different architecture"):
        check_same_architecture({0: {"model_type": "gpt2", "n_embd": 32},
                                 50: {"model_type": "gpt2", "n_embd": 64}})
    check_same_architecture({0: {"n_embd": 32}, 50: {"n_embd": 32}})
    with pytest.raises(DataError, match="differs"):
        check_same_inputs({0: "aaaaaaaaaaaaaaaa", 50: "bbbbbbbbbbbbbbbb"})


def test_compare_floor_and_planted_shift():
    from reprlab.drift.compare import compare, matrix

    g = torch.Generator().manual_seed(0)
    base = torch.randn(400, 6, generator=g, dtype=torch.float64)
    same = base + 0.01 * torch.randn(400, 6, generator=g, dtype=torch.float64)
    shifted = base + torch.tensor([1.5, 0, 0, 0, 0, 0], dtype=torch.float64)
    clouds = torch.stack([base, same, shifted])
    res = compare(clouds, [(0, 1), (0, 2)], ["sinkhorn", "sliced", "bures", "emd", "cka",
                                              "procrustes", "displacement"], n_splits=2)
    s = res["sinkhorn"]
    assert s.converged.all()
    assert (s.floor > 0).all() and (s.cloud_floor > 0).all()
    assert float(s.half[0]) == pytest.approx(float(s.floor[0]), rel=0.3)  # near-copy: at floor
    assert float(s.half[1]) > 2 * float(s.floor[1])                   # shift: far above
    assert float(s.value[0]) < 0.01 * float(s.value[1])
    assert float(res["emd"].value[1]) == pytest.approx(1.5 ** 2, rel=0.05)
    assert float(res["cka"].value[0]) > 0.99
    m = matrix(s, 3)
    assert m[0, 2] == m[2, 0] and m[0, 0] == 0
    with pytest.raises(DataError, match="too small"):
        compare(clouds[:, :4], [(0, 1)], ["sliced"])
