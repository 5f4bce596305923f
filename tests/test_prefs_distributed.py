"""Data-parallel preference training: two processes under `torchrun` (and `accelerate launch`)
end with the adapter and the logged losses of one process on the same global batch, with
uneven shards and gradient accumulation; rank 0 alone writes; a run started in one process and
killed resumes under torchrun; a ReprPO method with a trained transform agrees too."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from launchers import files, launch
from prefs_helpers import Killed, kill_at
from safetensors.torch import load_file

from reprlab.cli import main

pytest.importorskip("peft")

ADAPTER = "adapter/adapter_model.safetensors"
#: batch 5 splits 3 + 2 over two processes (unequal shards), two micro-batches a step
COMMON = ["--data", "builtin:toy-prefs", "--limit", "16", "--batch-size", "5",
          "--grad-accum", "2", "--lr", "1e-2", "--schedule", "constant", "--save-every", "2",
          "--lora-targets", "all-linear", "--no-progress"]


def _log(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]


def _assert_same_run(one: Path, two: Path, steps: int) -> float:
    a, b = load_file(str(one / ADAPTER)), load_file(str(two / ADAPTER))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=0), k
    la, lb = _log(one), _log(two)
    assert [r["step"] for r in la] == [r["step"] for r in lb] == list(range(1, steps + 1))
    for ra, rb in zip(la, lb, strict=True):
        assert rb["tokens"] == ra["tokens"]  # the two shards hold the whole batch
        for k in ("loss", "rewards/accuracies", "rewards/margins", "logps/chosen",
                  "grad_norm"):
            assert rb[k] == pytest.approx(ra[k], rel=1e-5, abs=1e-6), k
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def dpo(toy_mini, tmp_path_factory):
    """One process (in-process CLI), two processes under torchrun, and a one-process run
    killed after step 3 (state saved at 2) that torchrun then resumes; 4 DPO steps each."""
    root = tmp_path_factory.mktemp("prefs-dp")
    model = ["--model", str(toy_mini.sft), "--steps", "4"]
    assert main(["prefs", "train", *model, *COMMON, "--ref-cache", str(root / "cache1"),
                 "--out", str(root / "one")]) == 0
    work = root / "work"
    res = launch(["prefs", "train", *model, *COMMON, "--ref-cache", str(work / "cache"),
                  "--out", str(work / "two")], root / "home", work)

    from reprlab.prefs import train

    kw = dict(data="builtin:toy-prefs", limit=16, batch_size=5, grad_accum=2, lr=1e-2,
              schedule="constant", save_every=2, lora_targets=("all-linear",), steps=4,
              progress=False, ref_cache=str(root / "cache1"))
    with pytest.raises(Killed):
        train(str(toy_mini.sft), out=root / "cut", on_step=kill_at(3), **kw)
    assert not (root / "cut" / "manifest.json").exists()
    from reprlab.lock import held, release

    assert held(root / "cut")  # this process still writes it, as a killed one would have
    release(root / "cut")  # the kernel lets a killed process's lock go; the raise does not
    resumed = launch(["prefs", "train", *model, *COMMON, "--ref-cache", str(root / "cache1"),
                      "--out", str(root / "cut")], root / "home", root)
    return root, res, resumed


def test_two_processes_match_one(dpo):
    root, res, _ = dpo
    one, two = root / "one", root / "work" / "two"
    delta = _assert_same_run(one, two, 4)
    assert delta < 1e-5
    b = load_file(str(two / ADAPTER))
    lora_b = [v for k, v in b.items() if "lora_B" in k]
    assert lora_b and max(float(v.abs().max()) for v in lora_b) > 1e-3  # init is 0: it trained
    man = json.loads((two / "manifest.json").read_text())
    assert man["config"]["world_size"] == 2
    assert res.stdout.count("dpo: 4 steps") == 1  # rank 0 alone reports


def test_rank_zero_alone_writes(dpo):
    root, _, _ = dpo
    work, one = root / "work", root / "one"
    # the run directory holds exactly what a one-process run writes, and nothing else
    # appeared in the working directory or the home: no second log, state or cache entry
    assert files(work / "two") == files(one)
    assert len((work / "two" / "train_log.jsonl").read_text().splitlines()) == 4
    entries = [p.name for p in (work / "cache").iterdir()]
    assert len(entries) == 1 and not entries[0].startswith(".")  # rank 0 built it, no temp
    assert sorted(p.name for p in work.iterdir()) == ["cache", "two"]
    home = root / "home"
    assert not home.exists() or not [p for p in home.rglob("*") if p.is_file()]


def test_killed_one_process_run_resumes_under_torchrun(dpo):
    root, _, resumed = dpo
    assert "resumed from 2" in resumed.stdout
    _assert_same_run(root / "one", root / "cut", 4)
    res = json.loads((root / "cut" / "results.json").read_text())
    assert res["resumed_from"] == 2


def test_reprpo_with_a_trained_transform_matches_one_process(toy_mini, tmp_path):
    """InnerDPO at layers.1 with the (trained) etherplus transform, through `accelerate
    launch` when accelerate is installed (torchrun otherwise)."""
    launcher = "accelerate" if _has("accelerate") else "torchrun"
    argv = ["prefs", "train", "--model", str(toy_mini.sft), "--steps", "2", *COMMON,
            "--method", "innerdpo", "--method-options", "sites=layers.1,transform=etherplus",
            "--ref-cache", str(tmp_path / "cache")]
    assert main([*argv, "--out", str(tmp_path / "one")]) == 0
    launch([*argv, "--out", str(tmp_path / "two")], tmp_path / "home", tmp_path, launcher)
    _assert_same_run(tmp_path / "one", tmp_path / "two", 2)
    sa = load_file(str(tmp_path / "one" / "state.safetensors"))
    sb = load_file(str(tmp_path / "two" / "state.safetensors"))
    keys = [k for k in sa if ".transform." in k]
    assert keys and all(torch.allclose(sa[k], sb[k], atol=1e-5) for k in keys)
    assert "repr/" in " ".join(_log(tmp_path / "two")[-1])


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def test_settings_a_shard_cannot_honour_are_one_line():
    from reprlab.distributed import World, shard_bounds
    from reprlab.errors import ConfigError
    from reprlab.prefs.config import TrainConfig
    from reprlab.prefs.methods import MethodOptions, build_method
    from reprlab.prefs.trainer import check_data_parallel

    world = World(0, 2)
    dpo = build_method("dpo", MethodOptions())
    check_data_parallel(TrainConfig(batch_size=2), dpo, world)
    with pytest.raises(ConfigError, match="--batch-size 1 is smaller than the 2 processes"):
        check_data_parallel(TrainConfig(batch_size=1), dpo, world)
    with pytest.raises(ConfigError, match="projgrad projects gradients.*one process"):
        check_data_parallel(TrainConfig(method="projgrad"), build_method("projgrad"), world)
    check_data_parallel(TrainConfig(batch_size=1), dpo, World())  # one process: anything
    assert [shard_bounds(5, r, 2) for r in (0, 1)] == [(0, 3), (3, 5)]
    assert [shard_bounds(7, r, 3) for r in (0, 1, 2)] == [(0, 3), (3, 5), (5, 7)]
