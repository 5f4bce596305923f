"""Data-parallel lens training: two processes under `torchrun` (and `accelerate launch`) end
with the tuned and the talkative lens of one process on the same global batch, with uneven
shards (5 rows over 2 processes; an epoch's last micro-batch of 1 text leaves one process
empty-handed); the logged losses agree; rank 0 alone writes; a one-process tuned-lens run
killed mid-way resumes on two processes and ends with the uninterrupted run's lens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from launchers import files, launch
from safetensors.torch import load_file

from reprlab.cli import main

LENS = "lens.safetensors"
#: 51 texts -> 46 to train on: micro-batches of 5 (3 + 2 rows) and an epoch tail of 1 text,
#: about five micro-batches per 400-token step, so three steps cross the epoch boundary
TUNED = ["--data", "builtin:toy-text", "--limit", "51", "--steps", "3", "--tokens-per-step",
         "400", "--batch-size", "5", "--optimizer", "adam", "--lr", "1e-2", "--warmup-frac",
         "0", "--checkpoint-every", "2", "--no-progress"]
#: every loss term (KL with resample ablation, MSE, LM prior, entropy); 5 samples a step
TALK = ["--data", "builtin:toy-text", "--limit", "40", "--site", "layers.0", "--tokens", "3",
        "--steps", "3", "--batch-size", "5", "--eval-rows", "8", "--best-of", "1",
        "--resample-ablation", "--w-lm", "0.5", "--w-ent", "0.1", "--lr", "1e-3",
        "--proj-lr", "1e-2", "--checkpoint-every", "2", "--no-progress"]


def _history(run: Path) -> list[dict]:
    return json.loads((run / "results.json").read_text())["history"]


def _same_lens(one: Path, two: Path) -> float:
    """Max |Δ| over the lens tensors of two runs (asserted within 1e-5)."""
    a, b = load_file(str(one / LENS)), load_file(str(two / LENS))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=0), k
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _same_history(one: Path, two: Path, keys: tuple[str, ...], steps: int) -> None:
    ha, hb = _history(one), _history(two)
    assert [r["step"] for r in ha] == [r["step"] for r in hb] == list(range(1, steps + 1))
    for ra, rb in zip(ha, hb, strict=True):
        for k in keys:
            assert rb[k] == pytest.approx(ra[k], rel=1e-5, abs=1e-6), (k, ra, rb)


def _wrote_only_the_run(work: Path, run: Path, one: Path, home: Path) -> None:
    # the run directory holds exactly what a one-process run writes; nothing else appeared
    # in the working directory or the home
    assert files(run) == files(one)
    assert sorted(p.name for p in work.iterdir()) == [run.name]
    assert not home.exists() or not [p for p in home.rglob("*") if p.is_file()]


def _one_and_two(root: Path, argv: list[str]):
    """``argv`` in this process into ``root/one`` and on two processes into
    ``root/work/two``; the launch's result."""
    assert main([*argv, "--out", str(root / "one")]) == 0
    return launch([*argv, "--out", "two"], root / "home", root / "work")


@pytest.fixture(scope="module")
def tuned(toy_mini, tmp_path_factory):
    root = tmp_path_factory.mktemp("tuned-dp")
    model = ["lens", "tuned", "train", "--model", str(toy_mini.base)]
    return root, _one_and_two(root, [*model, *TUNED]), model


def test_tuned_two_processes_match_one(tuned, toy_mini):
    root, res, _ = tuned
    one, two = root / "one", root / "work" / "two"
    delta = _same_lens(one, two)
    assert delta < 1e-5
    w = load_file(str(two / LENS))
    assert float(w["weight"].abs().max()) > 1e-3  # zero at init: it trained
    _same_history(one, two, ("kl_sum_bits", "lr"), 3)
    ha, hb = _history(one), _history(two)
    assert [r["tokens"] for r in hb] == [r["tokens"] for r in ha]  # the whole budget counted
    assert all(r["tokens"] >= 400 for r in hb)
    # the three steps read more tokens than one epoch holds, so the epoch's 1-text tail (a
    # micro-batch rank 1 has no row of) was among them
    from reprlab.lenses.run import _split, load_texts
    from reprlab.models import load_model

    lm = load_model(str(toy_mini.base))
    train, _ = _split(load_texts("builtin:toy-text", 51)[0], 0.1, 0)
    assert len(train) % 5 == 1
    epoch = sum(int(lm.encode([t], max_length=128)["attention_mask"].sum()) for t in train)
    assert sum(r["tokens"] for r in hb) > epoch
    man = json.loads((two / "manifest.json").read_text())
    assert man["config"]["world_size"] == 2
    assert res.stdout.count("report:") == 1  # rank 0 alone reports
    _wrote_only_the_run(root / "work", two, one, root / "home")


def test_tuned_killed_one_process_run_resumes_on_two(tuned, monkeypatch):
    """Stopped after step 2 in one process; `accelerate launch` (torchrun when accelerate is
    missing) finishes it on two and ends with the uninterrupted run's lens."""
    root, _, model = tuned
    cut = root / "cut"
    monkeypatch.setenv("REPRLAB_STOP_AFTER", "2")
    assert main([*model, *TUNED, "--out", str(cut)]) == 130
    monkeypatch.delenv("REPRLAB_STOP_AFTER")
    assert not (cut / "manifest.json").exists() and (cut / "train_state.safetensors").exists()
    launcher = "accelerate" if _has("accelerate") else "torchrun"
    launch([*model, *TUNED, "--out", str(cut)], root / "home2", root / "work2", launcher)
    _same_lens(root / "one", cut)
    _same_history(root / "one", cut, ("kl_sum_bits", "tokens", "lr"), 3)


@pytest.fixture(scope="module")
def talk(toy_mini, tmp_path_factory):
    root = tmp_path_factory.mktemp("talk-dp")
    model = ["lens", "talk", "train", "--model", str(toy_mini.base)]
    return root, _one_and_two(root, [*model, *TALK])


def test_talk_two_processes_match_one(talk, toy_mini):
    root, res = talk
    one, two = root / "one", root / "work" / "two"
    delta = _same_lens(one, two)
    assert delta < 1e-5
    w = load_file(str(two / LENS))
    eye = torch.eye(w["module.proj_in.weight"].shape[0])
    assert float((w["module.proj_in.weight"] - eye).abs().max()) > 1e-3  # identity at init
    base = load_file(str(Path(toy_mini.base) / "model.safetensors"))
    q = "model.layers.0.self_attn.q_proj.weight"
    assert float((w[f"module.decoder.{q}"] - base[q]).abs().max()) > 1e-4  # the decoder too
    keys = ("loss", "fve_batch", "loss_mse", "loss_kl", "loss_lm", "loss_entropy", "tau")
    _same_history(one, two, keys, 3)
    r = json.loads((two / "results.json").read_text())
    checks = r["facts"]["rank_checksums"]
    assert r["facts"]["world_size"] == 2 and len(checks) == 2 and checks[0] == checks[1]
    assert json.loads((two / "manifest.json").read_text())["config"]["world_size"] == 2
    assert "world_size" not in json.loads((one / "manifest.json").read_text())["config"]
    assert res.stdout.count("report:") == 1
    _wrote_only_the_run(root / "work", two, one, root / "home")


def test_a_batch_smaller_than_the_processes_is_one_line():
    from reprlab.errors import ConfigError
    from reprlab.lenses.talk.train import step_batch

    assert step_batch(16, 100) == 16 and step_batch(16, 7) == 7 and step_batch(5, 40, 2) == 5
    with pytest.raises(ConfigError, match="--batch-size 2 or more"):
        step_batch(1, 40, 2)
    with pytest.raises(ConfigError, match="at least 3 training samples"):
        step_batch(8, 2, 3)


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def test_launched_processes_import_this_checkout(tmp_path, monkeypatch):
    """A relative ``PYTHONPATH`` (``PYTHONPATH=src``) is made absolute for the launched
    processes, which run in another directory: otherwise they would import whatever copy of
    reprlab is installed and compare another version's lens with this one's."""
    import os

    from launchers import launch_env

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["src", "", "/abs/lib"]))
    got = launch_env(tmp_path / "home")["PYTHONPATH"].split(os.pathsep)
    assert got == [str(tmp_path.resolve() / "src"), "", "/abs/lib"]
