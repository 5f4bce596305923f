"""Drift pages (layers, checkpoints, train) rendered in Chromium: the headline number, the model,
the data and the sites are visible text; every layer pair is in the table; a run that never
reaches 50% test accuracy says so instead of printing None."""

from __future__ import annotations

import json
import re

import torch
from conftest import make_tiny, save_lm, save_tiny
from report_dom import assert_shows

from reprlab.cli import main
from reprlab.drift import analysis as an
from reprlab.drift import report as rep


def test_layers_page(tmp_path, capsys):
    mdir = save_tiny(tmp_path / "tiny")
    out = tmp_path / "run"
    rc = main(["drift", "layers", "--model", str(mdir), "--data", "builtin:cities",
               "--limit", "40", "--points", "200", "--out", str(out), "--no-progress",
               "--measures", "sinkhorn,cka,procrustes,displacement"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["headline"] in capsys.readouterr().out
    sites = res["sites"]
    text = assert_shows(out / "report.html", res["headline"], str(mdir), "builtin:cities",
                        ", ".join(sites), "Layer pairs (all 6)", "sinkhorn ÷ floor")
    # every pair of sites has its row: nothing cut (6 pairs x 4 measures = 24 rows before)
    for i, a in enumerate(sites):
        for b in sites[i + 1:]:
            assert f"{a}\n{b}" in text
    assert "None" not in text and "e+0" not in text


def _ckpts(tmp_path, steps=(0, 10, 20)):
    base = make_tiny("gpt2", hidden=32)
    for k, step in enumerate(steps):
        with torch.no_grad():
            for p in base.model.parameters():
                p.add_(0.05 * k * torch.randn_like(p))
        save_lm(base, tmp_path / "ckpts" / f"step-{step}")
    return tmp_path / "ckpts"


def test_checkpoints_page_one_floor_panel_per_site(tmp_path, capsys):
    ck = _ckpts(tmp_path)
    data = tmp_path / "eval.txt"
    data.write_text("\n".join(f"an ordinary sentence about item {i}" for i in range(30)))
    out = tmp_path / "run"
    rc = main(["drift", "checkpoints", "--checkpoints", str(ck / "step-*"), "--data", str(data),
               "--out", str(out), "--no-progress", "--measures", "sinkhorn,cka"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    printed = capsys.readouterr().out
    assert res["headline"] in printed and "note: " in printed
    text = assert_shows(out / "report.html", res["headline"], str(data), "layers.0, layers.1",
                        "fewer than --points 1000", "One panel per site",
                        "more than 100× the floor")
    assert "None" not in text
    # the step-0 floor is ~0 (near-identical clouds at init): no four-digit ratio is claimed
    assert not re.search(r"\d{4,}(\.\d+)?× the floor", text)


def test_grokking_page_says_did_not_reach(tmp_path, capsys):
    out = tmp_path / "grok"
    rc = main(["drift", "train", "--task", "grokking", "--preset", "tiny", "--epochs", "20",
               "--every", "5", "--out", str(out), "--no-progress", "--measures", "sinkhorn,cka"])
    assert rc == 0
    printed = capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    assert res["acc_crosses_50pct"]["test_acc"] is None
    assert "test accuracy did not reach 50%" in printed and "None" not in printed
    text = assert_shows(out / "report.html", "test accuracy did not reach 50%",
                        "grokking-tiny", "modular addition mod 23", "attn, mlp, mlp_hidden",
                        res["headline"], "Training curves",
                        "1 − CKA between the two checkpoints' activations",
                        "This measure pairs the same rows at both checkpoints and has no noise "
                        "floor.")
    assert "None" not in text


def _series(half, floor, sd, change_index):
    steps = list(range(0, 10 * (len(half) + 1), 10))
    tr = {"index": change_index, "step": steps[1:][change_index], "before": 0.1, "after": 0.3,
          "magnitude": 0.2}
    return {"steps": steps, "sites": {"mlp": {
        "consecutive": {"sinkhorn": {"steps": steps[1:], "drift": half, "half": half,
                                     "floor": floor, "floor_sd": sd}},
        "change_points": {"sinkhorn": [tr]},
        "transition": {"sinkhorn": {**tr, "above_floor": an.above_floor(
            torch.tensor(half), torch.tensor(floor), torch.tensor(sd), change_index)}}}}}


def test_series_headline_reports_change_points_above_the_floor_only():
    # drift inside the split-half floor throughout: the change point is named as below it
    low = _series([0.1, 0.1, 0.3, 0.3], [0.5] * 4, [0.05] * 4, 2)
    assert low["sites"]["mlp"]["transition"]["sinkhorn"]["above_floor"] is False
    line = rep.series_headline(low)
    assert "Strongest upward change point" not in line
    assert "lies within the split-half noise floor, so no change point is reported" in line
    assert rep.transitions_table(low)[0]["above noise floor"] == "no"
    # the same change standing out of a small floor is headlined
    high = _series([0.1, 0.1, 0.3, 0.3], [0.01] * 4, [0.001] * 4, 2)
    line = rep.series_headline(high)
    assert line.startswith("Strongest upward change point of the drift: step 30 at mlp")
    # a floor of ~0 gives no astronomic ratio
    tiny = _series([0.1, 0.1, 0.3, 0.3], [1e-315, 0.01, 0.01, 0.01], [0.0] * 4, 2)
    line = rep.series_headline(tiny)
    assert "more than 100× the floor" in line and "e+" not in line
