"""Steering validation pages (steer validate, probe --validate): coefficients in units of the
activations' spread, a sample of texts, and pages rendered in Chromium that show the causal
result, the model, the data and both sites."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TEXTS, make_tiny, save_tiny
from report_dom import assert_shows

from reprlab.steering import Readout, SteeringVector, validate
from reprlab.steering.validate import projection_sd, run_validation, sample_texts


def _unit(seed=0, d=32):
    u = torch.randn(d, generator=torch.Generator().manual_seed(seed))
    return u / u.norm()


def test_sd_units_equal_unit_coefficients_times_the_projection_sd():
    lm = make_tiny("bert")
    u = _unit()
    vec = SteeringVector({"layers.1": u}, {"layers.1": 1.0}, position="mean")
    readout = Readout("layers.2", u * 3.0, bias=0.5, position="mean")
    sd = projection_sd(lm, vec, "layers.1", TEXTS)
    from reprlab.steering.fit import collect

    h = collect(lm, TEXTS, ["layers.1"], "mean", progress=False)["layers.1"].double()
    assert sd == pytest.approx(float((h @ u.double()).std()), rel=1e-6)
    a = validate(lm, vec, "layers.1", [-2.0, 0.0, 2.0], texts=TEXTS, readout=readout,
                 unit="sd", side_effects=False, progress=False)
    b = validate(lm, vec, "layers.1", [-2.0 * sd, 0.0, 2.0 * sd], texts=TEXTS, readout=readout,
                 unit="unit", side_effects=False, progress=False)
    assert a["coeffs"] == [-2.0, 0.0, 2.0] and a["unit_sd"] == pytest.approx(sd)
    assert a["metrics"]["readout_score"]["mean"] == pytest.approx(
        b["metrics"]["readout_score"]["mean"], rel=1e-9)
    with pytest.raises(Exception, match="unknown unit"):
        validate(lm, vec, "layers.1", [1.0], texts=TEXTS, readout=readout, unit="furlong")


def test_sample_texts_is_seeded_balanced_and_ordered():
    class DS:
        texts = [f"t{i}" for i in range(100)]
        labels = [int(i < 20) for i in range(100)]  # 20 positives, 80 negatives

    picked, total = sample_texts(DS(), 10, seed=1)
    assert total == 100 and len(picked) == 10 and picked == sample_texts(DS(), 10, seed=1)[0]
    idx = [int(t[1:]) for t in picked]
    assert idx == sorted(idx) and sum(i < 20 for i in idx) == 5
    assert sample_texts(DS(), 0)[0] == DS.texts and sample_texts(DS(), 500)[1] == 100


def test_steer_validate_page_shows_result_model_data_and_sites(tmp_path):
    lm = make_tiny("bert")
    u = _unit()
    vec = SteeringVector({"layers.1": u}, {"layers.1": 1.0}, method="probe",
                         source="runs/probe", position="mean")
    readout = Readout("layers.2", u * 3.0, bias=0.5, position="mean")
    out = tmp_path / "sv"
    res = run_validation(lm, vec, "layers.1", "-4:4:3", out, texts=TEXTS, readout=readout,
                         unit="sd", progress=False,
                         inputs={"data": {"name": "builtin:cities", "hash": "abc", "rows": 12},
                                 "pairs": None})
    man = json.loads((out / "manifest.json").read_text())
    assert man["data"]["name"] == "builtin:cities" and man["readout_site"] == "layers.2"
    assert "pairs" not in man["inputs"]  # nothing recorded as None
    top = res["metrics"]["readout_score"]["mean"][-1]
    from reprlab.report.fmt import num

    text = assert_shows(out / "report.html", num(top, 3), lm.name, "builtin:cities",
                        "steered site: layers.1", "readout site: layers.2",
                        "Steering: probe readout", "Steering: side effects on neutral text",
                        "moves monotonically with the coefficient")
    assert "None" not in text and "steer_" not in text


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny-gpt2-steer"), hidden=32, layers=2)


def test_probe_validate_page_states_the_causal_result_on_a_sample(tiny_dir, tmp_path, capsys):
    from reprlab.cli import main

    rows = [{"text": f"What a {w} day it was, number {i}.", "label": lab}
            for i in range(30) for w, lab in (("good", "positive"), ("awful", "negative"))]
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "run"
    rc = main(["probe", "--model", str(tiny_dir), "--data", str(data), "--sites", "layers.*",
               "--positions", "mean", "--probes", "logistic", "--out", str(out),
               "--bootstrap", "0", "--validate", "--validate-coeffs", "-2:2:3",
               "--validate-rows", "16", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    res = json.loads((out / "results.json").read_text())
    v = res["steering_validation"]
    assert v["n_texts"] == 16 and v["n_texts_total"] == 60 and v["unit"] == "sd"
    assert res["summary"].startswith("Steering ")
    text = assert_shows(out / "report.html", "on a seeded sample of 16 of the 60 texts",
                        f"Steering {v['site']} along the direction", v["readout_site"],
                        "Steering: probe readout", str(tiny_dir.name), "d.jsonl")
    assert "steer_readout" not in text and "steer_side" not in text
