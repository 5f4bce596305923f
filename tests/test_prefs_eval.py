"""Evaluation across shifts, the coherence guard, comparisons and the CLI end to end, on the
mini toy SFT model (a real chat model trained on a world whose facts we know)."""

from __future__ import annotations

import json

import pytest
import torch
from report_dom import assert_shows, overflow_px

from reprlab.cli import main
from reprlab.io import read_json


@pytest.fixture(scope="module")
def runs(toy_mini, tmp_path_factory):
    """A sane DPO run and a broken IPO run (huge learning rate) of the mini toy SFT model."""
    root = tmp_path_factory.mktemp("prefs-runs")
    common = ["--model", str(toy_mini.sft), "--data", "builtin:toy-prefs", "--limit", "16",
              "--batch-size", "4", "--schedule", "constant", "--ref-cache", str(root / "cache"),
              "--no-progress"]
    tune = ["--validate", "in-domain=builtin:toy-prefs-in-domain,"
            "control=builtin:toy-prefs-orthogonal"]
    assert main(["prefs", "train", *common, "--steps", "2", "--lr", "1e-3", *tune,
                 "--out", str(root / "dpo")]) == 0
    assert main(["prefs", "train", *common, "--method", "ipo", "--steps", "4", "--lr", "0.5",
                 "--lora-targets", "all-linear", *tune, "--out", str(root / "broken")]) == 0
    return root


def test_train_run_directory(runs):
    run = runs / "dpo"
    for name in ("results.json", "manifest.json", "report.html", "training.png",
                 "adapter/adapter_model.safetensors", "state.safetensors"):
        assert (run / name).exists(), name
    log = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2]
    for k in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins",
              "rewards/accuracies", "logps/chosen", "logps/rejected", "grad_norm",
              "tokens_per_s"):
        assert all(r[k] is not None for r in log), k
    res = read_json(run / "results.json")
    assert res["truncation"]["rows"] == 16 and res["truncation"]["kept"] == 16
    assert res["reference"]["cached"] and res["method"]["loss"] == "sigmoid"


def test_validation_scores_what_eval_scores_and_zeroes_an_incoherent_run(runs, tmp_path):
    """``prefs train --validate`` (the objective a sweep tunes on) gives the accuracies and
    perplexity ratios that ``prefs eval`` measures on the same rows; the score is the accuracy
    of the non-control splits, and 0 for the run the guard calls incoherent."""
    from reprlab.prefs import evaluate

    splits = {"in-domain": "builtin:toy-prefs-in-domain",
              "control": "builtin:toy-prefs-orthogonal"}
    for name in ("dpo", "broken"):
        v = read_json(runs / name / "results.json")["validation"]
        ev = evaluate(runs / name, splits, limit=None, generate=0, out=tmp_path / name,
                      progress=False)
        for split in splits:
            assert v["splits"][split]["pref_acc"] == pytest.approx(ev.accuracy(split, "on"))
            assert v["splits"][split]["pref_acc_base"] == pytest.approx(ev.accuracy(split, "off"))
            assert v["splits"][split]["ppl_ratio"] == pytest.approx(ev.ppl_ratio[split])
        assert v["incoherent"] == ev.incoherent
        assert v["score"] == (0.0 if ev.incoherent else v["splits"]["in-domain"]["pref_acc"])
    assert read_json(runs / "broken" / "results.json")["validation"]["incoherent"]
    assert not read_json(runs / "dpo" / "results.json")["validation"]["incoherent"]


def test_a_bad_validation_set_stops_before_training(toy_mini, tmp_path, capsys):
    rc = main(["prefs", "train", "--model", str(toy_mini.sft), "--data", "builtin:toy-prefs",
               "--steps", "1", "--validate", "v=builtin:no-such-set", "--no-progress",
               "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "no-such-set" in err[0]
    assert not (tmp_path / "run" / "manifest.json").exists()


def test_eval_flags_only_the_broken_run(runs, capsys):
    assert main(["prefs", "eval", str(runs / "dpo"), "--limit", "24", "--generate", "2",
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "coherent" in printed and "INCOHERENT" not in printed
    ok = read_json(runs / "dpo" / "eval" / "results.json")
    assert {r["split"] for r in ok["rows"]} == {"in-domain", "harder", "cross-domain",
                                               "orthogonal"}
    assert {r["adapter"] for r in ok["rows"]} == {"on", "off"}
    assert not ok["incoherent"] and max(ok["ppl_ratio"].values()) < 1.5
    assert main(["prefs", "eval", str(runs / "broken"), "--limit", "24", "--generate", "2",
                 "--no-progress"]) == 0
    assert "INCOHERENT" in capsys.readouterr().out
    bad = read_json(runs / "broken" / "eval" / "results.json")
    assert bad["incoherent"] and max(bad["ppl_ratio"].values()) > 3
    assert all(r["incoherent"] for r in bad["rows"] if r["adapter"] == "on")
    # the base rows (adapter off) are the same model in both runs
    base = {r["split"]: r["pref_acc"] for r in ok["rows"] if r["adapter"] == "off"}
    assert base == {r["split"]: r["pref_acc"] for r in bad["rows"] if r["adapter"] == "off"}


def test_pages_fit_the_window_and_say_when_the_adapter_did_not_move(runs):
    """Two steps at lr 1e-3 leave the log-probs where they were: the train and eval pages say
    so at the top; the 0.5-lr run moved and says nothing of the kind. No page scrolls sideways
    in a 1000-pixel window (long answers and paths wrap)."""
    for name in ("dpo", "broken"):
        if not (runs / name / "eval" / "report.html").exists():
            assert main(["prefs", "eval", str(runs / name), "--limit", "24", "--generate", "2",
                         "--no-progress"]) == 0
    assert read_json(runs / "dpo" / "results.json")["checks"]["adapter_moved"] is False
    for page in (runs / "dpo" / "report.html", runs / "dpo" / "eval" / "report.html"):
        assert_shows(page, "The adapter did not move: the completions' log-probs changed by")
        assert overflow_px(page) <= 0, page
    for page in (runs / "broken" / "report.html", runs / "broken" / "eval" / "report.html"):
        assert "did not move" not in assert_shows(page, "reprlab prefs")
        assert overflow_px(page) <= 0, page


def test_compare_trains_missing_seeds_and_never_crowns_an_incoherent_run(runs, capsys):
    out = runs / "cmp"
    assert main(["prefs", "compare", str(runs / "dpo"), str(runs / "broken"), "--seeds", "2",
                 "--out", str(out), "--bootstrap", "50", "--limit", "24", "--generate", "0",
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "INCOHERENT" in printed and "base (adapter off)" in printed
    assert (runs / "dpo-seed1" / "manifest.json").exists()
    seed1 = read_json(runs / "dpo-seed1" / "results.json")
    assert seed1["config"]["seed"] == 1 and seed1["reference"]["cache_hit"]  # shared cache
    res = read_json(out / "results.json")
    methods = [r["method"] for r in res["rows"]]
    assert methods == ["dpo", "ipo", "base (adapter off)"]
    assert res["rows"][1]["incoherent_seeds"] == 2
    assert "ipo" not in res["winners"].values()
    for s in res["shifts"]:
        c = res["rows"][0][s]
        assert c["lo"] <= c["mean"] <= c["hi"]
    for name in ("compare.csv", "compare.png", "differences.csv", "differences.png",
                 "report.html", "manifest.json"):
        assert (out / name).exists()
    assert overflow_px(out / "report.html") <= 0   # the comparison page fits the window
    # per shift: the base row, each method's paired difference from base and from the first
    # method (dpo), with interval and p-value, and a verdict
    assert res["against"] == "dpo" and set(res["verdicts"]) == set(res["shifts"])
    for s in res["shifts"]:
        pairs = {(d["a"], d["b"]) for d in res["differences"] if d["shift"] == s}
        assert pairs == {("dpo", "base (adapter off)"), ("ipo", "base (adapter off)"),
                         ("ipo", "dpo")}
        for d in res["differences"]:
            assert d["lo"] <= d["mean"] <= d["hi"] and 0 < d["p"] <= 1
        assert f"shift {s}" in printed
    assert "verdict:" in printed


def test_seeds_share_the_default_cache_under_reprlab_home(toy_mini, tmp_path, monkeypatch):
    """results.json records the reference cache as $REPRLAB_HOME/...; the seeds compare trains
    must read it as this machine's cache, not as a folder named "$REPRLAB_HOME" in the
    working directory."""
    from reprlab.prefs.comparison import _ensure_seed

    monkeypatch.setenv("REPRLAB_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert main(["prefs", "train", "--model", str(toy_mini.sft), "--data", "builtin:toy-prefs",
                 "--limit", "8", "--steps", "1", "--no-progress", "--out", "run"]) == 0
    recorded = read_json(tmp_path / "run" / "results.json")["reference"]["cache_path"]
    assert recorded.startswith("$REPRLAB_HOME/refcache/")
    _ensure_seed(tmp_path / "run", tmp_path / "run-seed1", 1, True, False)
    seed1 = read_json(tmp_path / "run-seed1" / "results.json")["reference"]
    assert seed1["cache_hit"] and seed1["cache_path"] == recorded
    assert not (tmp_path / "$REPRLAB_HOME").exists()


def test_compare_refuses_runs_scored_on_other_rows(runs, capsys):
    """A run evaluated with another --limit is one line, exit 2; one seed says its interval
    covers rows only."""
    from reprlab.prefs import evaluate

    evaluate(runs / "dpo", limit=24, generate=0, progress=False)
    evaluate(runs / "broken", limit=12, generate=0, progress=False)
    code = main(["prefs", "compare", str(runs / "dpo"), str(runs / "broken"), "--no-train",
                 "--out", str(runs / "cmp-bad"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "different evaluation rows" in err[-1]
    assert not (runs / "cmp-bad" / "manifest.json").exists()
    assert main(["prefs", "compare", str(runs / "dpo"), "--out", str(runs / "cmp-one"),
                 "--bootstrap", "50", "--no-progress"]) == 0
    assert "1 seed: the intervals cover evaluation rows only" in capsys.readouterr().out


def test_named_shift_of_a_split(runs, tmp_path):
    from reprlab.prefs import evaluate

    ev = evaluate(runs / "dpo", {"difficulty/hard-sums": "builtin:toy-prefs-harder"}, limit=8,
                  generate=0, out=tmp_path / "ev", progress=False)
    assert {(r["split"], r["shift"]) for r in ev.rows} == {("hard-sums", "difficulty")}
    assert (tmp_path / "ev" / "manifest.json").exists()


def test_eval_refuses_another_base_model(runs, tmp_path):
    from conftest import save_lm
    from prefs_helpers import chat_tiny

    other = save_lm(chat_tiny(), tmp_path / "other")
    code = main(["prefs", "eval", str(runs / "dpo"), "--model", str(other), "--no-progress"])
    assert code == 2


def test_reference_cache_holds_pooled_hidden_states(toy_mini, tmp_path):
    """A method that reads sites gets pooled reference states from the cache, equal to live."""
    from reprlab.models import load_model
    from reprlab.prefs import train
    from reprlab.prefs.methods import LossMethod, MethodOptions, MethodOutput, register_method

    seen = {}

    class HiddenDPO(LossMethod):
        sites = ("layers.0", "layers.1")

        def loss(self, policy, reference):
            out = super().loss(policy, reference)
            d = (policy.chosen_hidden["layers.1"] - reference.chosen_hidden["layers.1"])
            seen.setdefault("ref", []).append(reference.chosen_hidden["layers.0"].clone())
            seen.setdefault("grad", []).append(policy.chosen_hidden["layers.1"].requires_grad)
            return MethodOutput(out.loss + 0.0 * d.pow(2).sum(), {"hidden_gap": d.norm()})

    @register_method("test-hidden-dpo")
    def _factory(opts: MethodOptions):
        return HiddenDPO("test-hidden-dpo", "sigmoid", opts.beta, 0.0, "sum", 0.0)

    kw = dict(steps=2, batch_size=4, limit=8, progress=False, schedule="constant",
              method="test-hidden-dpo")
    live = train(load_model(str(toy_mini.sft)), "builtin:toy-prefs", out=tmp_path / "live",
                 ref_cache="off", **kw)
    live_refs = seen.pop("ref")
    cached = train(load_model(str(toy_mini.sft)), "builtin:toy-prefs", out=tmp_path / "c",
                   ref_cache=str(tmp_path / "cache"), **kw)
    assert all(seen["grad"]) and "hidden_gap" in cached.log[0]
    for a, b in zip(live_refs, seen["ref"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert cached.losses == pytest.approx(live.losses, rel=1e-5)
    manifest = read_json(next((tmp_path / "cache").iterdir()) / "manifest.json")
    assert set(manifest["sites"]) == {"logps", "layers.0", "layers.1"}


@pytest.mark.slow
def test_dpo_fits_the_mini_toy_training_pairs(toy_mini, tmp_path):
    """On the mini toy model DPO learns the training pairs; it is too small and too weakly
    trained for that to carry to unseen sums reliably, and at this learning rate
    its chosen perplexity rises several fold, which the guard reports."""
    from reprlab.prefs import evaluate, train

    train(str(toy_mini.sft), "builtin:toy-prefs", out=tmp_path / "dpo", steps=200,
          batch_size=16, lr=1e-3, beta=0.5, lora_r=8, lora_targets=("all-linear",),
          schedule="constant", ref_cache=str(tmp_path / "cache"), progress=False)
    ev = evaluate(tmp_path / "dpo", {"train": "builtin:toy-prefs"}, generate=0, progress=False)
    assert ev.accuracy("train", "on") > ev.accuracy("train", "off") + 0.1
    assert ev.accuracy("train", "on", "reward_acc") > 0.75
    assert ev.incoherent == (ev.ppl_ratio["train"] > 3.0)


@pytest.mark.slow
def test_dpo_on_the_toy_sft_model_fits_its_pairs_and_stays_coherent(toy_full, tmp_path):
    """DPO on the real toy SFT model ("prefer the true sum over a near miss", operand pairs
    neither pretraining nor SFT saw): it learns the training pairs and stays coherent.

    Measured on the default build (seed 0; 100 steps, batch 16, lr 1e-4): training-pair
    accuracy 0.40 -> 0.66 with the adapter; held-out in-domain pairs went 0.55 -> 0.35 — on
    this model DPO does not carry "the true sum" to sums it cannot compute, which the eval
    table shows and this test does not hide (it asserts the fit, not a transfer).
    """
    from reprlab.prefs import evaluate, train

    train(str(toy_full.sft), "builtin:toy-prefs", out=tmp_path / "dpo", steps=100,
          batch_size=16, lr=1e-4, beta=0.1, lora_r=8, lora_targets=("all-linear",),
          schedule="constant", ref_cache=str(tmp_path / "cache"), progress=False)
    ev = evaluate(tmp_path / "dpo", {"train": "builtin:toy-prefs",
                                     "in-domain": "builtin:toy-prefs-in-domain"},
                  generate=4, progress=False)
    assert ev.accuracy("train", "on") >= ev.accuracy("train", "off") + 0.15
    assert not ev.incoherent and ev.generation["on"]["well_formed"] >= 0.75


def test_default_splits_are_a_builtins_named_shifts():
    from reprlab.prefs.evaluation import default_splits

    assert default_splits("builtin:toy-prefs") == {
        s: f"builtin:toy-prefs-{s}" for s in ("in-domain", "harder", "cross-domain",
                                             "orthogonal")}
    assert sorted(default_splits("builtin:toy-syco-prefs")) == [
        "cross-family", "in-domain", "orthogonal", "phrasing", "third-party"]
    assert default_splits("pairs.jsonl") == {"train": "pairs.jsonl"}


def test_difference_figure_draws_an_interval_that_misses_its_mean():
    """A constant difference has mean 1e-17 beside an interval [0, 0]; the forest plot drew
    it with a negative error bar and crashed the whole comparison."""
    from types import SimpleNamespace

    from reprlab.prefs.report import difference_figure

    d = {"mean": -1e-17, "lo": 0.0, "hi": 0.0}
    cmp = SimpleNamespace(shifts=["in-domain"], rows=[{"label": "mse"},
                                                      {"label": "base (adapter off)"}],
                          against=None, difference=lambda s, a, b: d)
    fig = difference_figure(cmp)
    assert len(fig.axes[0].lines) >= 1
