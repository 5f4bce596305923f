"""Per-step reporting from the workflows that train: the tuned and talkative lenses, drift
training (grokking and causal LM), MLP probes and preference training each call
`reprlab.sweeps.progress.report` once per step (epoch) with finite numbers; nothing is computed
for it when nobody listens; and a sweep's median pruner stops a `drift train` trial early on
the reported loss."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import make_tiny, save_tiny

from reprlab.cli import main
from reprlab.sweeps import progress

TEXTS = [f"The {a} {b} is in the city of {c} ." for a in ("old", "tall", "red")
         for b in ("tower", "bridge", "gate") for c in ("Paris", "Rome")]


class Sink:
    def __init__(self):
        self.rows: list[tuple[int, dict[str, float]]] = []

    def __call__(self, step, metrics):
        self.rows.append((step, dict(metrics)))

    @property
    def steps(self) -> list[int]:
        return [s for s, _ in self.rows]

    def values(self, name: str) -> list[float]:
        return [m[name] for _, m in self.rows if name in m]


def _finite(values: list[float]) -> bool:
    return bool(values) and all(math.isfinite(v) for v in values)


def test_tuned_lens_reports_every_step():
    from reprlab.lenses.tuned.fit import train_tuned
    from reprlab.lenses.tuned.train import TunedTrainConfig

    lm = make_tiny("gpt2", layers=2)
    cfg = TunedTrainConfig(steps=4, tokens_per_step=80, batch_size=4, optimizer="adam",
                           lr=1e-2, checkpoint_every=100)
    sink = Sink()
    with progress.listening(sink):
        _, history = train_tuned(lm, TEXTS, cfg, progress=False)
    assert sink.steps == [1, 2, 3, 4]
    assert sink.values("kl_sum_bits") == [h["kl_sum_bits"] for h in history]
    assert _finite(sink.values("kl_sum_bits")) and _finite(sink.values("lr"))


def test_talkative_lens_reports_every_step(tmp_path):
    from reprlab.lenses.talk.data import dump
    from reprlab.lenses.talk.train import TalkConfig, train_talk

    lm = make_tiny("llama", hidden=32, layers=2)
    data = dump(lm, TEXTS, "layers.1", tmp_path / "d", progress=False)
    cfg = TalkConfig(site="layers.1", tokens=2, batch_size=6, eval_rows=4, steps=3,
                     checkpoint_every=10)
    sink = Sink()
    with progress.listening(sink):
        _, history, _ = train_talk(lm, data, cfg, progress=False)
    assert sink.steps == [1, 2, 3]
    assert sink.values("loss") == [h["loss"] for h in history]
    assert _finite(sink.values("loss")) and _finite(sink.values("fve_batch"))


def test_drift_grokking_reports_every_epoch(tmp_path):
    from reprlab.drift.tasks.grokking import preset
    from reprlab.drift.track import track_grokking

    sink = Sink()
    with progress.listening(sink):
        track_grokking(preset("tiny", epochs=12, every=5), tmp_path / "g", progress=False)
    assert sink.steps == list(range(13))  # epoch 0 (evaluation only) to 12
    assert len(sink.values("loss")) == 12 and _finite(sink.values("loss"))
    assert [s for s, m in sink.rows if "test_acc" in m] == [0, 5, 10, 12]
    assert _finite(sink.values("test_acc"))


def test_drift_lm_training_reports_every_step(tmp_path):
    mdir = save_tiny(tmp_path / "tiny")
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps({"text": f"What is {i} plus {i}? It is {2 * i}."})
                              for i in range(48)))
    sink = Sink()
    with progress.listening(sink):
        assert main(["drift", "train", "--model", str(mdir), "--data", str(data), "--steps",
                     "4", "--every", "2", "--batch-size", "4", "--out", str(tmp_path / "t"),
                     "--no-progress", "--lr", "1e-3", "--measures", "cka", "--points",
                     "0"]) == 0
    assert sink.steps == [0, 1, 2, 3, 4]
    assert len(sink.values("loss")) == 4 and _finite(sink.values("loss"))
    assert [s for s, m in sink.rows if "eval_loss" in m] == [0, 2, 4]


def test_mlp_probe_reports_every_epoch_and_nothing_when_unheard(monkeypatch):
    from reprlab.probes.mlp import fit_mlp

    g = torch.Generator().manual_seed(0)
    X = torch.randn(2, 40, 6, generator=g)
    Y = (X[0, :, 0] > 0).long()
    Xv = torch.randn(2, 20, 6, generator=g)
    Yv = (Xv[0, :, 0] > 0).long()
    sink = Sink()
    with progress.listening(sink):
        out = fit_mlp(X, Y, n_classes=2, X_val=Xv, Y_val=Yv, width=8, max_epochs=7,
                      patience=100)
    assert out["epochs"] == 7 and sink.steps == list(range(1, 8))
    for name in ("train_loss", "val_loss", "val_acc"):
        assert _finite(sink.values(name)), name
    assert sink.values("val_loss")[-1] == pytest.approx(
        float(out["curves"]["val_loss"][..., -1].mean()))
    # nobody listening: report is never reached, so no metric is computed for it
    calls = []
    monkeypatch.setattr(progress, "report", lambda *a, **k: calls.append(a))
    fit_mlp(X, Y, n_classes=2, X_val=Xv, Y_val=Yv, width=8, max_epochs=3, patience=100)
    assert calls == [] and not progress.active()
    progress.report(1, loss=object())  # no sinks: returns before looking at the values


def test_prefs_training_reports_every_step(toy_mini, tmp_path):
    pytest.importorskip("peft")
    from reprlab.prefs import train

    sink = Sink()
    with progress.listening(sink):
        res = train(str(toy_mini.sft), "builtin:toy-prefs", out=tmp_path / "p", steps=2,
                    limit=8, batch_size=4, progress=False, ref_cache="off")
    assert sink.steps == [1, 2]
    assert sink.values("loss") == res.losses and _finite(sink.values("rewards/accuracies"))


def test_median_pruner_stops_a_drift_train_trial_on_its_reported_loss(tmp_path):
    pytest.importorskip("optuna")
    from reprlab.sweeps.report import load
    from reprlab.sweeps.study import info

    spec = tmp_path / "sweep.yaml"
    spec.write_text("command: drift train --task grokking --preset tiny --epochs 25 --every 25 "
                    "--measures cka --no-progress\nmethod: grid\n"
                    "metric: {name: history.-1.train_loss, goal: minimize}\n"
                    "parameters:\n  lr: {values: [0.003, 0.000000001]}\n"
                    "early_terminate: {type: median, warmup: 3, min_trials: 1, metric: loss}\n")
    out = tmp_path / "sweep"
    assert main(["sweep", str(spec), "--out", str(out), "--workers", "1", "--no-progress",
                 "--no-report"]) == 0
    trials = sorted(load(out)[3].get_trials(), key=lambda t: t.number)
    assert trials[0].state.name == "COMPLETE" and info(trials[0])["steps"] == 25
    bad = trials[1]
    assert bad.state.name == "PRUNED"  # a learning rate too small to lower the loss
    assert 3 <= info(bad)["steps"] < 25
    run = Path(info(bad)["run_dir"])
    assert not (run / "manifest.json").exists()
    logged = [r for r in progress.read_jsonl(run / "metrics.jsonl") if "loss" in r]
    assert len(logged) == info(bad)["steps"]
