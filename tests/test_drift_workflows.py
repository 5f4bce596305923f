"""Drift workflows end to end: CLI on tiny random models, grokking, resume, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_tiny, save_lm, save_tiny

from reprlab.cli import main


def test_layers_cli_end_to_end(tmp_path):
    mdir = save_tiny(tmp_path / "tiny")
    out = tmp_path / "run"
    rc = main(["drift", "layers", "--model", str(mdir), "--data", "builtin:cities",
               "--limit", "40", "--points", "200", "--out", str(out), "--no-progress",
               "--measures", "sinkhorn,emd,cka,procrustes"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["position"] == "all" and res["n_points"] == 200
    k = len(res["sites"])
    assert k == 4  # embed + 3 blocks
    sk = res["measures"]["sinkhorn"]
    m = torch.tensor(sk["matrix"])
    assert m.shape == (k, k) and torch.allclose(m, m.T) and (m.diagonal() == 0).all()
    assert all(f > 0 for f in sk["cloud_floor"])
    cka = torch.tensor(res["measures"]["cka"]["matrix"])
    assert (cka.diagonal() == 1).all() and (cka <= 1 + 1e-9).all()
    for f in ("report.html", "manifest.json", "pairs.csv", "layers_sinkhorn.png"):
        assert (out / f).exists(), f
    html = (out / "report.html").read_text()
    assert "data:image/png;base64" in html


def test_layers_refuses_too_few_points(tmp_path, capsys):
    mdir = save_tiny(tmp_path / "tiny")
    rc = main(["drift", "layers", "--model", str(mdir), "--data", "builtin:cities",
               "--limit", "5", "--position", "last", "--points", "50",
               "--out", str(tmp_path / "r"), "--no-progress"])
    assert rc == 2
    assert "5 points are too small" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["jsonl", "txt"])
def test_checkpoints_on_plain_unlabeled_text_use_all_points(tmp_path, capsys, fmt):
    """README: --data eval.jsonl with only a text column (or a .txt file); a file smaller than
    --points (default 1000) uses all its points and says so."""
    ck = _save_ckpts(tmp_path, steps=(0, 10))
    texts = [f"plain sentence number {i} about {w}" for i, w in
             enumerate("rivers cats maths tea rain jazz code sand wind moss ink salt".split())]
    f = tmp_path / f"eval.{fmt}"
    f.write_text("\n".join(json.dumps({"text": t}) if fmt == "jsonl" else t for t in texts))
    out = tmp_path / "run"
    rc = main(["drift", "checkpoints", "--checkpoints", str(ck / "step-*"), "--data", str(f),
               "--out", str(out), "--no-progress", "--measures", "sinkhorn,cka"])
    assert rc == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "holds 12 points, fewer than --points 1000: all 12 are used" in printed
    res = json.loads((out / "results.json").read_text())
    assert res["n_points"] == 12 and res["notes"]
    assert "fewer than --points 1000" in (out / "report.html").read_text()


def _save_ckpts(tmp_path, steps=(0, 50, 100), hidden=32):
    base = make_tiny("gpt2", hidden=hidden)
    for k, step in enumerate(steps):
        d = tmp_path / "ckpts" / f"step-{step}"
        with torch.no_grad():
            for p in base.model.parameters():
                p.add_(0.05 * k * torch.randn_like(p))
        save_lm(base, d)
    return tmp_path / "ckpts"


def test_checkpoints_cli_orders_by_step(tmp_path):
    ck = _save_ckpts(tmp_path, steps=(100, 5, 50))
    out = tmp_path / "run"
    rc = main(["drift", "checkpoints", "--checkpoints", str(ck / "step-*"),
               "--data", "builtin:cities", "--limit", "24", "--position", "mean",
               "--points", "0", "--out", str(out), "--no-progress",
               "--measures", "sinkhorn,displacement,cka"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["steps"] == [5, 50, 100]
    site = res["sites"]["layers.0"]
    e = site["consecutive"]["sinkhorn"]
    assert e["steps"] == [50, 100] and len(e["floor"]) == 2
    assert site["matrix"]["steps"] == [5, 50, 100]
    # later checkpoints moved more (perturbation grows with k): displacement increases
    d = site["consecutive"]["displacement"]["value"]
    assert d[1] > d[0] > 0
    assert (out / "drift_sinkhorn.png").exists() and (out / "report.html").exists()


def test_checkpoints_refuse_mixed_architectures(tmp_path, capsys):
    a = make_tiny("gpt2", hidden=32)
    b = make_tiny("gpt2", hidden=64)
    for step, lm in ((0, a), (10, b)):
        lm.model.save_pretrained(tmp_path / f"step-{step}")
    rc = main(["drift", "checkpoints", "--checkpoints", str(tmp_path / "step-*"),
               "--data", "builtin:cities", "--out", str(tmp_path / "r"), "--no-progress"])
    assert rc == 2
    assert "different architecture" in capsys.readouterr().err


def test_checkpoint_stores_with_changed_eval_set_refused(tmp_path, capsys):
    from reprlab.capture import capture

    lm = make_tiny("gpt2")
    capture(lm, ["a b c", "d e f", "g h"], sites="layers.0", positions=("last",),
            out=tmp_path / "s" / "step-1", progress=False)
    capture(lm, ["a b c", "d e f", "other text"], sites="layers.0", positions=("last",),
            out=tmp_path / "s" / "step-2", progress=False)
    rc = main(["drift", "checkpoints", "--checkpoints", str(tmp_path / "s" / "step-*"),
               "--out", str(tmp_path / "r"), "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "evaluation set" in err and "differs" in err


def test_grokking_cli_short(tmp_path):
    out = tmp_path / "grok"
    rc = main(["drift", "train", "--task", "grokking", "--preset", "tiny", "--epochs", "30",
               "--out", str(out), "--no-progress", "--measures", "sinkhorn,cka"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["steps"] == [0, 10, 20, 30]
    h = res["history"]
    assert {"train_acc", "test_acc", "test_nonsym_acc", "train_loss"} <= set(h[0])
    assert h[-1]["train_loss"] < h[0]["train_loss"]
    assert set(res["sites"]) == {"attn", "mlp", "mlp_hidden"}
    assert (out / "curves.png").exists() and (out / "history.csv").exists()


def test_grokking_resume_matches_uninterrupted(tmp_path):
    from reprlab.drift.tasks.grokking import preset
    from reprlab.drift.track import track_grokking

    full = track_grokking(preset("tiny", epochs=40), tmp_path / "a", progress=False)
    track_grokking(preset("tiny", epochs=40), tmp_path / "b", progress=False)
    # simulate a crash after epoch 20: drop later history, reload state from epoch 20
    part = track_grokking(preset("tiny", epochs=20), tmp_path / "c", progress=False)
    assert part.steps[-1] == 20
    import shutil

    shutil.copytree(tmp_path / "c" / "track", tmp_path / "d" / "track")
    cfgfile = tmp_path / "d" / "track" / "config.json"
    cfgfile.unlink()  # the epoch budget differs; the saved state itself is what matters
    resumed = track_grokking(preset("tiny", epochs=40), tmp_path / "d", progress=False)
    assert resumed.steps == full.steps
    for a, b in zip(full.history, resumed.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
    assert torch.allclose(full.clouds["mlp"], resumed.clouds["mlp"], atol=1e-5)


def test_train_lm_cli_and_resume(tmp_path):
    mdir = save_tiny(tmp_path / "tiny")
    data = tmp_path / "train.jsonl"
    rows = [{"question": f"What is {i} plus {i}?", "answer": f"It is {2 * i}."} for i in range(48)]
    data.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "track"
    args = ["drift", "train", "--model", str(mdir), "--data", str(data), "--steps", "6",
            "--every", "3", "--batch-size", "4", "--out", str(out), "--no-progress",
            "--lr", "1e-3", "--measures", "sinkhorn,cka", "--points", "0"]
    assert main(args) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["steps"] == [0, 3, 6]
    h = res["history"]
    assert {"eval_loss", "next_token_acc"} <= set(h[0])
    assert h[-1]["eval_loss"] < h[0]["eval_loss"]
    assert (out / "track" / "stores" / "step-0000003" / "manifest.json").exists()
    assert (out / "track" / "state.safetensors").exists()
    # the same command again resumes (nothing left to train) and gives the same history
    assert main(args) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["history"] == h


def test_unknown_measure_is_one_line(capsys):
    assert main(["drift", "layers", "--measures", "wasserstein"]) == 2
    assert "unknown measure" in capsys.readouterr().err


@pytest.mark.slow
def test_grokking_small_change_point_matches_test_accuracy_jump(tmp_path):
    """The small preset groks (about a minute of CPU); the drift burst marks the jump's onset:
    after memorisation, within a quarter of the 50% step before it, never after it."""
    from reprlab.drift.analysis import crossing, series_analysis
    from reprlab.drift.tasks.grokking import preset
    from reprlab.drift.track import track_grokking

    t = track_grokking(preset("small"), tmp_path, progress=False, threads=1)
    h = t.history
    full_train = crossing(h, "train_acc", 0.99)
    cross = crossing(h, "test_acc", 0.5)
    assert full_train is not None and cross is not None
    assert cross > 5 * full_train                  # memorise first, generalise much later
    assert h[-1]["test_acc"] > 0.95 and h[-1]["test_nonsym_acc"] > 0.9
    res = series_analysis(t.steps, {"mlp": t.clouds["mlp"]}, t.groups, ["sinkhorn"],
                          n_splits=1)
    tr = res["sites"]["mlp"]["transition"]["sinkhorn"]
    assert 5 * full_train < tr["step"] <= cross and cross - tr["step"] <= 0.25 * cross, (tr, cross)


def test_load_texts_local_and_hf_builder(tmp_path):
    from reprlab.drift.track import load_texts
    from reprlab.errors import DataError

    f = tmp_path / "gsm.jsonl"
    f.write_text('{"question": "1+1?", "answer": "2"}\n{"question": "2+2?", "answer": "4"}\n')
    assert load_texts(str(f)) == ["Question: 1+1?\nAnswer: 2", "Question: 2+2?\nAnswer: 4"]
    assert load_texts(str(f), template="{answer}") == ["2", "4"]
    other = tmp_path / "t.jsonl"
    other.write_text('{"x": 1}\n')
    with pytest.raises(DataError, match="no column"):
        load_texts(str(other))
    pytest.importorskip("datasets")
    texts = load_texts("hf:json@train", data_files=str(f))
    assert texts[1] == "Question: 2+2?\nAnswer: 4"
