"""Causal validation: planted readouts move monotonically, answer and side-effect metrics are exact."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import TEXTS, make_tiny

from reprlab.steering import Readout, SteeringVector, validate, validate_probe_run
from reprlab.steering import metrics as M

COEFFS = [-8.0, -4.0, 0.0, 4.0, 8.0]


def _unit(seed=0, d=32):
    u = torch.randn(d, generator=torch.Generator().manual_seed(seed))
    return u / u.norm()


def test_mean_ci_and_spearman():
    x = torch.arange(100, dtype=torch.float64)
    mean, lo, hi = M.mean_ci(x, seed=0)
    assert mean == pytest.approx(49.5)
    # the standard error is 2.9; a 95% interval spans about +-1.96 of it
    assert lo < mean < hi and 4.5 < hi - lo < 13
    assert M.mean_ci(torch.tensor([3.0])) == (3.0, 3.0, 3.0)
    assert M.spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert M.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


@pytest.mark.parametrize("arch", ["gpt2", "bert"])
def test_planted_readout_moves_monotonically(arch):
    lm = make_tiny(arch)
    u = _unit()
    vec = SteeringVector({"layers.1": u}, {"layers.1": 1.0})
    readout = Readout("layers.2", u * 3.0, bias=0.5, position="mean")
    res = validate(lm, vec, "layers.1", COEFFS, texts=TEXTS, readout=readout, progress=False,
                   side_effects=False)
    score = res["metrics"]["readout_score"]
    assert all(b > a for a, b in zip(score["mean"], score["mean"][1:], strict=False))
    assert score["spearman"] == pytest.approx(1.0)
    shift = res["metrics"]["readout_shift"]
    assert shift["mean"][2] == pytest.approx(0.0, abs=1e-9)
    for m in res["metrics"].values():
        assert all(lo <= mean + 1e-9 and mean <= hi + 1e-9
                   for mean, lo, hi in zip(m["mean"], m["lo"], m["hi"], strict=True))
    # a random direction orthogonal to the readout moves it far less
    v = torch.randn(32, generator=torch.Generator().manual_seed(7))
    v = v - (v @ u) * u
    other = SteeringVector({"layers.1": v}, {"layers.1": 1.0})
    res2 = validate(lm, other, "layers.1", [-8.0, 8.0], texts=TEXTS, readout=readout,
                    progress=False, side_effects=False)
    span = score["mean"][-1] - score["mean"][0]
    span2 = abs(res2["metrics"]["readout_score"]["mean"][-1]
                - res2["metrics"]["readout_score"]["mean"][0])
    assert span > 5 * span2


def test_answer_and_side_effect_metrics_are_exact():
    lm = make_tiny("gpt2")
    pos = ["Question: is water wet? Answer: (A", "Is the sky green? Reply (A"]
    neg = ["Question: is water wet? Answer: (B", "Is the sky green? Reply (B"]
    vec = SteeringVector({"layers.1": _unit()}, {"layers.1": 1.0})
    diff = M.answer_shift(lm, vec, "layers.1", pos, neg, [0.0], progress=False)[0.0]
    # direct: full forward of each text, log-probs of the tokens after the shared prefix
    ref = []
    for a, b in zip(pos, neg, strict=True):
        ia, ib = lm.tokenizer(a)["input_ids"], lm.tokenizer(b)["input_ids"]
        k = next(i for i, (x, y) in enumerate(zip(ia, ib, strict=False)) if x != y)
        lps = []
        for ids in (ia, ib):
            with torch.no_grad():
                lp = F.log_softmax(lm.model(torch.tensor([ids])).logits[0].double(), -1)
            lps.append(sum(float(lp[t - 1, ids[t]]) for t in range(k, len(ids))))
        ref.append(lps[0] - lps[1])
    torch.testing.assert_close(diff, torch.tensor(ref, dtype=torch.float64), atol=1e-5, rtol=0)
    fx = M.side_effects(lm, vec, "layers.1", TEXTS, [0.0, 6.0], progress=False)
    assert fx["delta_loss"][0.0].abs().max() < 1e-9
    assert fx["kl_next"][0.0].abs().max() < 1e-9
    assert (fx["kl_next"][6.0] > 0).all()
    res = validate(lm, vec, "layers.1", "-2,0,2", pairs=(pos, neg), progress=False)
    p = res["metrics"]["answer_prob"]["mean"]
    assert all(0 < v < 1 for v in p)
    assert set(res["metrics"]) == {"answer_logit_diff", "answer_prob", "delta_loss", "kl_next"}


def test_validate_probe_run_from_generic_file(tmp_path):
    from safetensors.torch import save_file

    from reprlab.report import RunDir

    lm = make_tiny("bert")
    u = _unit(3)
    run_dir = tmp_path / "probe_run"
    run_dir.mkdir()
    save_file({"layers.1.direction": u * 2, "layers.1.bias": torch.tensor([0.1]),
               "layers.2.direction": u}, str(run_dir / "probes.safetensors"),
              metadata={"position": "mean"})
    (run_dir / "results.json").write_text(json.dumps({"best_site": "layers.1"}))
    report = RunDir.create(tmp_path / "report", workflow="probe")
    res = validate_probe_run(run_dir, lm, TEXTS, "-4:4:3", readout_site="layers.2",
                             report=report, progress=False)
    assert res["site"] == "layers.1" and res["readout_site"] == "layers.2"
    m = res["metrics"]["readout_score"]["mean"]
    assert m[0] < m[1] < m[2]
    assert "final_drift" in res["metrics"]
    report.finish({"steering": res})
    assert (tmp_path / "report" / "steer_dose_response_readout.png").exists()
    assert "steer_" in (tmp_path / "report" / "report.html").read_text()


@pytest.mark.slow
def test_real_minilm_cities_direction_moves_later_readout(minilm):
    from reprlab.data import load_dataset
    from reprlab.steering import SteeringFitter

    ds = load_dataset("builtin:cities", kind="labeled", limit=200)
    vec = SteeringFitter(minilm, "layers.3,layers.4", "mean-diff", position="mean",
                         progress=False).fit(ds)
    u4 = vec.direction("layers.4")
    readout = Readout("layers.4", u4, 0.0, "mean")
    res = validate(minilm, vec, "layers.3", "-8:8:5", texts=ds.texts[:64], readout=readout,
                   progress=False, side_effects=True)
    score = res["metrics"]["readout_score"]
    assert score["spearman"] == pytest.approx(1.0)
    assert score["mean"][-1] - score["mean"][0] > 1.0
    drift = res["metrics"]["final_drift"]["mean"]
    assert drift[2] == pytest.approx(0.0, abs=1e-9) and drift[0] > 0 and drift[-1] > 0
