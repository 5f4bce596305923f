"""`reprlab probe` end to end: tiny model on disk, report files, numbers, errors; the example;
and (slow) the bundled MiniLM with no arguments."""

from __future__ import annotations

import csv
import html
import json
import os
import random
import runpy
from pathlib import Path

import pytest
from conftest import save_tiny

from reprlab.cli import main

GOOD = ["good", "great", "fine", "lovely", "nice", "superb"]
BAD = ["bad", "awful", "poor", "nasty", "grim", "dreadful"]
NOUNS = ["day", "meal", "film", "trip", "book", "song", "game", "view", "room", "walk"]


def _write_csv(path: Path, n: int, seed: int) -> Path:
    rng = random.Random(seed)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label", "group"])
        for i in range(n // 2):
            noun = rng.choice(NOUNS)
            w.writerow([f"What a {rng.choice(GOOD)} {noun} it was.", "positive", f"g{i}"])
            w.writerow([f"What a {rng.choice(BAD)} {noun} it was.", "negative", f"g{i}"])
    return path


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny-gpt2"), hidden=32, layers=2)


def test_cli_end_to_end_tiny(tiny_dir, tmp_path, capsys):
    data = _write_csv(tmp_path / "train.csv", 160, 0)
    ood = _write_csv(tmp_path / "ood.csv", 40, 1)
    out = tmp_path / "run"
    rc = main(["probe", "--model", str(tiny_dir), "--data", str(data), "--sites", "layers.*",
               "--positions", "last,mean", "--probes", "logistic,mass-mean,mlp",
               "--eval", str(ood), "--out", str(out), "--bootstrap", "200",
               "--mlp-epochs", "30", "--no-progress"])
    printed = capsys.readouterr().out
    assert rc == 0
    assert "test acc [95% CI]" in printed and "selectivity" not in printed.split("\n")[0]
    assert f"report: {out / 'report.html'}" in printed
    for name in ("results.json", "manifest.json", "report.html", "layers.csv",
                 "predictions.csv", "accuracy.png", "curves.png", "directions.png",
                 "probes/layers.1__mean__logistic.safetensors",
                 "probes/layers.1__last__mlp.json"):
        assert (out / name).exists(), name
    results = json.loads((out / "results.json").read_text())
    rows = results["rows"]
    assert len(rows) == 2 * 2 * 3
    # the lexical signal is readable from mean-pooled states even in a random model
    mean_rows = [r for r in rows if r["position"] == "mean" and r["family"] == "logistic"]
    assert max(r["test_acc"] for r in mean_rows) > 0.8
    assert all(r["test_acc_lo"] <= r["test_acc"] <= r["test_acc_hi"] for r in rows)
    assert all(abs(r["selectivity"] - (r["test_acc"] - r["control_acc"])) < 1e-6 for r in rows)
    assert all("eval_ood_acc" in r for r in rows)
    # the adjective gives the label away: the bag-of-words baseline reads it on the same rows,
    # and no probe holds anything beyond it
    surface = results["surface"]
    assert surface["test_acc"] >= 0.95 and surface["n_test"] == rows[0]["n_test"]
    assert all(r["surface_acc"] == surface["test_acc"] for r in rows)
    assert all(r["beyond_surface"] <= 0.05 for r in rows)
    assert f"words: the bag-of-words baseline {surface['test_acc']:.3f}" in printed
    # best is the row with the highest validation accuracy
    best = max(rows, key=lambda r: (r["val_acc"], -r["val_log_loss"]))
    assert (results["best"]["site"], results["best"]["position"], results["best"]["family"]) \
        == (best["site"], best["position"], best["family"])
    assert "chosen on validation accuracy" in results["summary"]
    # layers.csv and report.html carry the same numbers as results.json
    with (out / "layers.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == len(rows)
    page = (out / "report.html").read_text()
    for r, t in zip(rows, table):
        assert (t["site"], t["position"], t["family"]) == (r["site"], r["position"], r["family"])
        for k in ("test_acc", "test_acc_lo", "control_acc", "selectivity", "test_auroc"):
            assert float(t[k]) == pytest.approx(r[k], rel=1e-5, abs=1e-6)
        assert f"<td>{html.escape(format(r['test_acc'], '.3f'))}</td>" in page
        assert f"<td>{r['test_acc_lo']:.3f}–{r['test_acc_hi']:.3f}</td>" in page
        assert float(t["surface_acc"]) == pytest.approx(r["surface_acc"])
    assert "<th>words acc</th>" in page and "<th>beyond words</th>" in page
    assert "bag-of-words baseline" in page
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 0 and manifest["inputs"]["data"]["hash"]
    assert manifest["inputs"]["model"]["spec"] == str(tiny_dir)
    assert "versions" in manifest and "command_line" in manifest
    with (out / "predictions.csv").open() as fh:
        preds = list(csv.DictReader(fh))
    assert {p["set"] for p in preds} == {"test", "ood"}
    assert all(abs(float(p["p_negative"]) + float(p["p_positive"]) - 1) < 1e-4 for p in preds[:50])

    # apply a saved probe to new text
    rc = main(["probe", "apply", str(out), "--site", "layers.1", "--position", "mean",
               "--probe", "logistic", "--text", "What a lovely walk it was."])
    assert rc == 0
    line = capsys.readouterr().out.strip()
    assert "What a lovely walk it was." in line and "positive=" in line

    # the same seed reproduces the numbers exactly (store reused, report rewritten)
    rc = main(["probe", "--store", str(out / "stores" / f"train-{data.stem}"), "--probes",
               "logistic", "--out", str(tmp_path / "again"), "--bootstrap", "200",
               "--no-progress"])
    assert rc == 0
    again = json.loads((tmp_path / "again" / "results.json").read_text())["rows"]
    first = [r for r in rows if r["family"] == "logistic"]
    assert [r["test_acc"] for r in again] == [r["test_acc"] for r in first]
    assert [r["test_acc_lo"] for r in again] == [r["test_acc_lo"] for r in first]


def test_cli_bad_input_one_line(tiny_dir, tmp_path, capsys):
    data = _write_csv(tmp_path / "d.csv", 160, 0)
    rc = main(["probe", "--model", str(tiny_dir), "--data", str(data), "--probes", "ridge"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: unknown probe family 'ridge'") and "mass-mean" in err
    assert len(err.splitlines()) == 1
    out = tmp_path / "r"
    rc = main(["probe", "--model", str(tiny_dir), "--data", str(data), "--sites", "layers.*",
               "--positions", "mean", "--probes", "mass-mean", "--out", str(out),
               "--bootstrap", "0", "--no-progress"])
    assert rc == 0
    capsys.readouterr()
    store = str(out / "stores" / "train-d")
    rc = main(["probe", "--store", store, "--sites", "layers.7", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "layers.7" in err and "layers.0, layers.1" in err
    rc = main(["probe", "--store", store, "--positions", "last", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "position 'last' is not in the store; it holds: mean" in err
    rc = main(["probe", "apply", str(out), "--site", "layers.0", "--position", "mean",
               "--probe", "mlp", "--text", "x"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "no probe layers.0 / mean / mlp" in err
    rc = main(["probe", "--split", "0.5,0.5"])
    assert rc == 2 and "--split" in capsys.readouterr().err


def test_validate_adds_steering_to_the_report(tiny_dir, tmp_path, capsys):
    import torch

    from reprlab.models import load_model
    from reprlab.probes import load_probes
    from reprlab.steering import validate_probe_run

    data = _write_csv(tmp_path / "v.csv", 120, 0)
    out = tmp_path / "run"
    rc = main(["probe", "--model", str(tiny_dir), "--data", str(data), "--sites", "layers.*",
               "--positions", "mean", "--probes", "logistic,mlp", "--out", str(out),
               "--bootstrap", "0", "--mlp-epochs", "5", "--validate", "--validate-coeffs",
               "-2:2:5", "--no-progress"])
    printed = capsys.readouterr().out
    assert rc == 0 and "steering along the best linear probe at" in printed
    results = json.loads((out / "results.json").read_text())
    v = results["steering_validation"]
    logistic = [r for r in results["rows"] if r["family"] == "logistic"]
    best = max(logistic, key=lambda r: r["test_acc"])["site"]
    assert v["site"] == best and v["coeffs"] == [-2.0, -1.0, 0.0, 1.0, 2.0]
    assert v["readout_site"] == {"layers.0": "layers.1", "layers.1": "layers.1"}[best]
    assert v["metrics"]["readout_shift"]["mean"][2] == 0.0
    for name in ("steer_dose_response.csv", "steer_dose_response_readout.png"):
        assert (out / name).exists() and name in (out / "report.html").read_text()

    # the run's linear probes drive steering: read at the steered site itself, the score
    # moves by exactly coefficient x |raw weight| (the unit direction is the weight's)
    probes = load_probes(out)
    assert set(probes) == {"layers.0", "layers.1"}
    assert {p.family for p in probes.values()} == {"logistic"}
    w, _ = probes["layers.1"].linear_readout()
    lm = load_model(str(tiny_dir))
    texts = [r[0] for r in csv.reader(data.open())][1:20]
    same = validate_probe_run(out, lm, texts, "-2:2:3", site="layers.1", side_effects=False,
                              progress=False)
    shift = same["metrics"]["readout_shift"]["mean"]
    norm = float(w.double().norm())
    assert shift == pytest.approx([-2 * norm, 0.0, 2 * norm], rel=1e-4, abs=1e-5)
    assert torch.equal(probes["layers.1"].params["weight"],
                       load_probes(out, position="mean", family="logistic")["layers.1"]
                       .params["weight"])

    # the steering CLI reads the same run: its dataset from the manifest, and by default the
    # probe of the next probed site as the readout
    capsys.readouterr()
    rc = main(["steer", "validate", "--model", str(tiny_dir), "--from-probe", str(out),
               "--site", "layers.0", "--coeffs", "-1,0,1", "--out", str(tmp_path / "sv"),
               "--no-side-effects", "--no-progress"])
    assert rc == 0 and "read by the probe at layers.1" in capsys.readouterr().out
    sv = json.loads((tmp_path / "sv" / "results.json").read_text())
    assert sv["site"] == "layers.0" and sv["readout_site"] == "layers.1"
    assert sv["metrics"]["readout_shift"]["mean"][1] == 0.0


def test_probe_trained_inside_a_session_same_on_both_backends(tiny_dir, tmp_path, capsys,
                                                               monkeypatch):
    import torch
    from safetensors.torch import load_file

    from reprlab.probes import load_probes

    data = _write_csv(tmp_path / "s.csv", 120, 0)
    runs = {}
    for backend in ("local", "nnsight"):
        out = tmp_path / backend
        rc = main(["probe", "--backend", backend, "--model", str(tiny_dir), "--data", str(data),
                   "--sites", "layers.1", "--positions", "mean", "--epochs", "20", "--lr", "2",
                   "--batch-size", "16", "--bootstrap", "100", "--out", str(out),
                   "--no-progress"])
        printed = capsys.readouterr().out
        assert rc == 0 and f"{backend} session(s)" in printed and "report:" in printed
        runs[backend] = json.loads((out / "results.json").read_text())
    a, b = runs["local"], runs["nnsight"]
    assert a["rows"] == b["rows"]
    assert a["training"]["loss_per_epoch"] == b["training"]["loss_per_epoch"]
    losses = a["training"]["loss_per_epoch"]
    assert losses[-1] < 0.6 * losses[0]  # it learns
    row = a["rows"][0]
    assert row["n_train"] + row["n_test"] == 120 and row["test_acc"] > 0.75
    # the bag-of-words baseline on the same test rows: the adjective gives the label away
    assert a["surface"]["n_test"] == row["n_test"] and row["surface_acc"] >= 0.9
    assert row["beyond_surface"] == pytest.approx(row["test_acc"] - row["surface_acc"])
    wa = load_file(str(tmp_path / "local" / "probes" / "layers.1__mean__logistic.safetensors"))
    wb = load_file(str(tmp_path / "nnsight" / "probes" / "layers.1__mean__logistic.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # the run reads like any probe run: apply and steering find the probe
    assert list(load_probes(tmp_path / "nnsight")) == ["layers.1"]
    rc = main(["probe", "apply", str(tmp_path / "nnsight"), "--text", "What a lovely walk it was."])
    assert rc == 0 and "positive=" in capsys.readouterr().out

    # NDIF without a key: one clear line, nothing that looks finished
    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    monkeypatch.setattr("nnsight.CONFIG.API.APIKEY", None, raising=False)
    out = tmp_path / "remote"
    rc = main(["probe", "--backend", "nnsight", "--remote", "--model", str(tiny_dir), "--data",
               str(data), "--sites", "layers.1", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("error: no NDIF API key")
    assert not (out / "results.json").exists()
    for bad, msg in ((["--sites", "layers.*"], "one --sites"),
                     (["--sites", "layers.1", "--remote"], "--remote needs --backend nnsight"),
                     (["--sites", "layers.1", "--validate"], "--validate")):
        rc = main(["probe", "--backend", "local", "--data", str(data), *bad])
        assert rc == 2 and msg in capsys.readouterr().err


def test_example_runs(tmp_path, capsys):
    mod = runpy.run_path(str(Path(__file__).parents[1] / "examples" / "probe_api.py"))
    res = mod["main"](str(tmp_path / "ex"), rows=160)
    assert res["best"]["test_acc"] > 0.6
    assert res["probs"].shape == (3, 2)
    assert "best:" in capsys.readouterr().out


@pytest.mark.slow
def test_cli_no_arguments_on_bundled_minilm(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = main(["probe", "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "logistic probe, position 'mean'" in printed and "best:" in printed
    rows = json.loads((tmp_path / "runs" / "probe" / "results.json").read_text())["rows"]
    get = {(r["site"], r["position"], r["family"]): r for r in rows}
    # Marks & Tegmark-style cities on MiniLM, balanced so that the words say nothing: the
    # embeddings and the bag-of-words baseline sit at chance (the words alone read 0.78 with
    # a uniformly drawn false country), later blocks read the relation, controls near chance
    assert abs(get[("embed", "mean", "logistic")]["test_acc"] - 0.5) < 0.1
    assert abs(rows[0]["surface_acc"] - 0.5) < 0.06
    assert max(r["test_acc"] for r in rows) > 0.74
    assert max(r["beyond_surface"] for r in rows) > 0.2
    assert all(abs(r["control_acc"] - 0.5) < 0.1 for r in rows)
    assert "bag-of-words baseline" in printed and "chosen on validation accuracy" in printed
    assert os.path.exists(tmp_path / "runs" / "probe" / "report.html")
