"""Defaults that learn and runs that say when they did not, on the mini toy SFT model."""

from __future__ import annotations

import logging

import pytest

from reprlab.io import read_json
from reprlab.prefs.methods import MethodOptions, build_method


@pytest.mark.parametrize("method", ["dpo", "innerdpo", "prefvec", "projgrad"])
def test_default_run_moves_the_adapter(toy_mini, tmp_path, method):
    """The default run (lr 5e-4, 4 passes over the 80 built-in pairs) moves the policy's
    log-probs away from the base's; at the former defaults (lr 5e-5, one pass) DPO moved them
    by 0.016 nats and innerdpo by 0.009 on this model."""
    from reprlab.prefs.repr_train import train as rtrain
    from reprlab.prefs.trainer import train

    fn = rtrain if method in ("innerdpo", "prefvec") else train
    res = fn(str(toy_mini.sft), "builtin:toy-prefs", out=tmp_path / method, method=method,
             ref_cache=str(tmp_path / "cache"), progress=False)
    assert res.steps == 80
    assert res.checks["adapter_moved"] and res.checks["logp_change_nats"] > 0.2
    assert abs(res.final["rewards/margins"]) > 0 and not res.warnings
    saved = read_json(tmp_path / method / "results.json")
    assert saved["checks"]["adapter_moved"] and saved["warnings"] == []


def test_a_run_that_did_not_move_says_so(toy_mini, tmp_path, caplog):
    from reprlab.prefs.trainer import train

    with caplog.at_level(logging.WARNING, logger="reprlab.prefs.trainer"):
        res = train(str(toy_mini.sft), "builtin:toy-prefs", out=tmp_path / "still", lr=1e-7,
                    steps=3, ref_cache=str(tmp_path / "cache"), progress=False)
    lines = [r.getMessage() for r in caplog.records if "did not move" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert res.checks["adapter_moved"] is False
    saved = read_json(tmp_path / "still" / "results.json")
    assert saved["warnings"] == [lines[0]]
    assert "did not move" in (tmp_path / "still" / "report.html").read_text()


@pytest.mark.parametrize("name,extra", [("innerdpo", {"alpha": 0, "sites": "layers.0"}),
                                        ("projgrad", {"orth": 1.0, "slope": 1.0})])
def test_an_option_that_zeroes_the_method_warns(name, extra, caplog):
    import reprlab.prefs.repr  # noqa: F401 - registers the methods

    with caplog.at_level(logging.WARNING, logger="reprlab.prefs.repr"):
        build_method(name, MethodOptions(extra=extra))
    assert any("plain DPO" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="reprlab.prefs.repr"):
        build_method(name, MethodOptions(extra={"sites": "layers.0"} if name == "innerdpo"
                                         else {}))
    assert not any("plain DPO" in r.getMessage() for r in caplog.records)
