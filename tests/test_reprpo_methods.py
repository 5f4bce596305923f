"""Representation methods end to end through the preference trainer on a tiny model."""

from __future__ import annotations

import math

import pytest
import torch
from prefs_helpers import Killed, chat_tiny, kill_at

from reprlab.errors import ConfigError
from reprlab.prefs.methods import MethodOptions, available_methods, build_method
from reprlab.prefs.repr_train import train

ROWS = [
    {"prompt": "where is the eiffel tower ?", "chosen": "paris .", "rejected": "rome ."},
    {"prompt": "is ice cold ?", "chosen": "yes , it is cold .", "rejected": "no ."},
    {"prompt": "what is two plus two ?", "chosen": "four .", "rejected": "five , i think ."},
    {"prompt": "name a colour of the sky", "chosen": "blue .", "rejected": "the sky is green ."},
]
FAST = dict(progress=False, max_length=64, lora_r=4, lora_alpha=8, batch_size=2, steps=3,
            lr=5e-3, lora_targets=("q_proj", "v_proj", "o_proj"))

CASES = [
    ("innerdpo", {"align": "pars_ratio", "transform": "ether", "transform_n_blocks": 4}),
    ("innerdpo", {"align": "para_orth_signed", "transform": "hra", "detach_rejected": True}),
    ("prefvec", {"transform": "ortho"}),
    ("mse", {"transform": "etherplus"}),
    ("rank", {}),
    ("topk", {"k": 8, "transform": "supressed", "sites": "layers.1:-1"}),
    ("projgrad", {}),
    ("projbp", {"slope": 0.2}),
]


def test_all_methods_registered():
    names = available_methods()
    for m in ("innerdpo", "prefvec", "mse", "rank", "topk", "projgrad", "projbp", "dpo"):
        assert m in names


@pytest.mark.parametrize("method,opts", CASES, ids=[f"{m}-{o.get('transform', '')}"
                                                     for m, o in CASES])
def test_method_trains_every_parameter(tmp_path, method, opts):
    lm = chat_tiny(layers=4)
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    opts = dict(opts)
    sites = opts.pop("sites", None)
    transform = opts.pop("transform", None)
    run = train(lm, ROWS, out=tmp_path / method, method=method, sites=sites,
                transform=transform, ref_cache=str(tmp_path / "cache"), **opts, **FAST)
    assert len(run.losses) == 3 and all(math.isfinite(v) for v in run.losses)
    after = dict(lm.model.named_parameters())
    lora = {n: p for n, p in after.items() if "lora_" in n}
    init_lm = chat_tiny(layers=4)
    torch.manual_seed(0)
    from reprlab.prefs.adapters import AdapterSpec, apply_adapter

    fresh = dict(apply_adapter(init_lm.model, AdapterSpec(r=4, alpha=8, targets=FAST[
        "lora_targets"])).base_model.model.named_parameters())
    assert lora
    # hidden-state-only losses cannot reach blocks past their deepest site
    deepest = max(int(x.split(".")[1]) for x in run.method.get("sites") or ["layers.99"])
    hidden_only = method in ("mse", "topk")
    for n, p in lora.items():  # every adapter parameter (that the loss can reach) moved
        block = int(n.split("layers.")[1].split(".")[0])
        if method == "rank" and block > deepest:
            continue  # reached only through relu(-rho), whose gradient is 0 while rho >= 0
        if hidden_only and block > deepest:
            assert torch.equal(p.detach(), fresh[n]), f"{n} changed past the deepest site"
        else:
            assert not torch.equal(p.detach(), fresh[n]), f"{n} did not change"
    for n, p in after.items():  # the base did not
        if "lora_" not in n:
            assert torch.equal(p.detach(), before[n.replace(".base_layer", "")]), n
    if method in ("projgrad", "projbp"):
        assert all(r["proj/active"] == 1.0 for r in run.log)  # projected from step 1
    else:
        assert run.method["sites"] and all(s.startswith("layers.") for s in run.method["sites"])
        assert any(k.startswith("repr/") for k in run.log[-1])


def test_transform_parameters_change():
    opts = MethodOptions(extra={"sites": "layers.1", "transform": "etherplus",
                                "align": "pars_ratio"})
    m = build_method("innerdpo", opts)
    lm = chat_tiny(layers=3)
    m.bind(lm)
    assert m.sites == ("layers.1",)
    t0 = {k: v.clone() for k, v in m.transform.state_dict().items()}
    from reprlab.prefs.methods import SeqOutputs, StepContext

    g = torch.Generator().manual_seed(0)

    def outs(grad):
        h = {"layers.1": torch.randn(2, 32, generator=g).requires_grad_(grad)}
        return SeqOutputs(torch.zeros(2), torch.zeros(2), torch.ones(2), torch.ones(2), h,
                          {"layers.1": torch.randn(2, 32, generator=g).requires_grad_(grad)})
    pol, ref = outs(True), outs(False)
    out = m.loss(pol, ref)
    out.loss.backward()
    assert sum(float(p.grad.abs().sum()) for p in m.transform.parameters()) > 1e-4
    m.after_backward(StepContext(0, 0, True, lm.model, [], pol, ref, out, {}))
    assert any(not torch.equal(v, t0[k]) for k, v in m.transform.state_dict().items())
    # resumable: the transform and its optimiser state round-trip
    m2 = build_method("innerdpo", opts)
    m2.load_state_tensors(m.state_tensors())
    m2.bind(lm)
    for k, v in m.transform.state_dict().items():
        torch.testing.assert_close(m2.transform.state_dict()[k], v)


def test_cached_and_live_reference_give_same_losses(tmp_path):
    runs = []
    for cache in ("off", str(tmp_path / "cache")):
        lm = chat_tiny(layers=4)
        runs.append(train(lm, ROWS, out=tmp_path / f"r-{len(runs)}", method="innerdpo",
                          sites="layers.0.5:-1", align="pars_ratio", ref_cache=cache, **FAST))
    assert runs[0].reference["live_reference_forwards"] > 0
    assert runs[1].reference["live_reference_forwards"] == 0
    for a, b in zip(runs[0].losses, runs[1].losses):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6)


def test_bad_input_one_line(tmp_path):
    lm = chat_tiny(layers=4)
    with pytest.raises(ConfigError, match="does not apply to the mse loss"):
        train(lm, ROWS, out=tmp_path / "a", method="mse", align="pars_ratio", **FAST)
    with pytest.raises(ConfigError, match="alpha must be >= 0"):
        train(lm, ROWS, out=tmp_path / "b", method="innerdpo", alpha=-1.0, **FAST)
    with pytest.raises(Exception, match="resolves to no site|selects no layer"):
        train(lm, ROWS, out=tmp_path / "c", method="innerdpo", sites="layers.3:1", **FAST)
    with pytest.raises(ConfigError, match="divides the width"):
        train(lm, ROWS, out=tmp_path / "d", method="innerdpo", transform="ether",
              transform_n_blocks=5, **FAST)
    unbound = build_method("innerdpo", MethodOptions(extra={"sites": "layers.0.5:-1"}))
    with pytest.raises(ConfigError, match="needs the model to resolve"):
        _ = unbound.sites
    unbound.bind(lm)
    assert unbound.sites == ("layers.2",)
    from reprlab.prefs.repr import ReprMethod

    bound = ReprMethod("innerdpo", MethodOptions(extra={"sites": "layers.0.5:-1"}), lm=lm)
    assert bound.sites == ("layers.2",)
    with pytest.raises(ConfigError, match="does not apply to projgrad"):
        build_method("projgrad", MethodOptions(extra={"align": "pars_ratio"}))
    assert build_method("prefvec", MethodOptions(extra={"sites": "layers.1:3"})).sites == (
        "layers.1", "layers.2")


@pytest.mark.slow
def test_innerdpo_fits_the_mini_toy_training_pairs(toy_mini, tmp_path):
    """On the mini toy model (what a test can build) InnerDPO learns the training pairs, as
    DPO does (tests/test_prefs_eval.py); the mini model is too small and weakly trained for
    that to carry to held-out pairs reliably (README: the toy comparison), and the guard
    reports the perplexity it costs."""
    from reprlab.models import load_model
    from reprlab.prefs import evaluate

    train(load_model(str(toy_mini.sft)), "builtin:toy-prefs", out=tmp_path / "inner",
          method="innerdpo", sites="layers.0.5:-1", align="pars_ratio", steps=200,
          batch_size=16, lr=1e-3, beta=0.5, lora_r=8, lora_targets=("all-linear",),
          schedule="constant", ref_cache=str(tmp_path / "cache"), progress=False)
    ev = evaluate(tmp_path / "inner", {"train": "builtin:toy-prefs"}, generate=0,
                  progress=False)
    assert ev.accuracy("train", "on", "reward_acc") > 0.75
    assert ev.accuracy("train", "on") > ev.accuracy("train", "off")
    assert ev.incoherent == (ev.ppl_ratio["train"] > 3.0)


def test_kill_and_resume_restores_the_transform(tmp_path):
    """The transform and its optimiser state ride in the run's one-file training state."""
    from safetensors.torch import load_file

    kw = dict(FAST, steps=4, save_every=2, ref_cache="off", method="innerdpo", sites="layers.1",
              transform="etherplus", transform_n_blocks=4, transform_lr=0.05)
    full = train(chat_tiny(layers=3), ROWS, out=tmp_path / "full", **kw)

    with pytest.raises(Killed):
        train(chat_tiny(layers=3), ROWS, out=tmp_path / "cut", on_step=kill_at(3), **kw)
    resumed = train(chat_tiny(layers=3), ROWS, out=tmp_path / "cut", **kw)
    assert resumed.resumed_from == 2
    assert resumed.losses == pytest.approx(full.losses, rel=1e-6, abs=1e-7)
    state = load_file(tmp_path / "cut" / "state.safetensors")
    assert any(k.startswith("extra.transform.") for k in state)
    assert any(k.startswith("extra.transform_opt.") for k in state)


def test_orthogonal_transforms_leave_rotation_invariant_losses_unchanged():
    """ETHER/HRA/ortho are orthogonal: innerdpo, mse and prefvec see only inner products and
    norms, so the transform changes neither their value nor (beyond rounding) its own
    gradient; coordinate-wise losses (rank, topk) do change."""
    from reprlab.prefs.methods import SeqOutputs

    g = torch.Generator().manual_seed(0)
    hs = [{"layers.1": torch.randn(3, 32, generator=g)} for _ in range(4)]
    lp = torch.randn(3, generator=g)
    pol = SeqOutputs(lp, -lp, torch.ones(3), torch.ones(3), hs[0], hs[1])
    ref = SeqOutputs(lp * 0, lp * 0, torch.ones(3), torch.ones(3), hs[2], hs[3])
    for loss, changes in (("innerdpo", False), ("mse", False), ("prefvec", False),
                          ("rank", True), ("topk", True)):
        vals = [float(build_method(loss, MethodOptions(extra={"sites": "layers.1",
                                                              "transform": t})).loss(pol, ref).loss)
                for t in ("none", "ether", "hra")]
        if changes:
            assert abs(vals[1] - vals[0]) > 1e-4, loss  # (HRA starts as the identity)
        else:
            assert vals[1] == pytest.approx(vals[0], abs=1e-5), loss
            assert vals[2] == pytest.approx(vals[0], abs=1e-5), loss


def test_cli_train_with_method_options(tmp_path, capsys):
    import json

    from conftest import save_lm

    from reprlab.cli import main

    model = save_lm(chat_tiny(layers=3), tmp_path / "model")
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    common = ["prefs", "train", "--model", str(model), "--data", str(data), "--steps", "2",
              "--batch-size", "2", "--lora-r", "4", "--lora-targets", "q_proj,v_proj",
              "--max-length", "64", "--ref-cache", str(tmp_path / "cache"), "--no-progress"]
    rc = main(common + ["--method", "innerdpo", "--method-options",
                        "sites=layers.1:3,align=pars-ratio,transform=etherplus,alpha=0.5",
                        "--out", str(tmp_path / "run")])
    assert rc == 0
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert "innerdpo" in json.dumps(res) and "layers.2" in json.dumps(res)
    capsys.readouterr()
    # a spec that needs the model resolves on it, as the Python API does
    rc = main(common + ["--method", "innerdpo", "--method-options", "sites=layers.0.5:-1",
                        "--out", str(tmp_path / "spec")])
    assert rc == 0, capsys.readouterr().err
    res = json.loads((tmp_path / "spec" / "results.json").read_text())
    assert res["method"]["site_spec"] == "layers.0.5:-1" and res["method"]["sites"]


def test_side_inputs_and_sink_dropping_through_the_trainer(tmp_path):
    lm = chat_tiny(layers=3)
    run = train(lm, ROWS, out=tmp_path / "side", method="innerdpo", sites="layers.1",
                side=True, ref_cache="off", **FAST)
    assert run.method["sites"] == ["layers.1.attn.in", "layers.1.mlp.in"]
    assert all(math.isfinite(v) for v in run.losses)
    with pytest.raises(ConfigError, match="reference cache"):
        train(chat_tiny(layers=3), ROWS, out=tmp_path / "side2", method="innerdpo",
              sites="layers.1", side=True, ref_cache=str(tmp_path / "cache"), **FAST)
    run = train(chat_tiny(layers=3), ROWS, out=tmp_path / "attn", method="innerdpo",
                sites="layers.1", side="attn", ref_cache=str(tmp_path / "cache"), **FAST)
    assert run.method["sites"] == ["layers.1.attn.in"]
    # sink dropping: its own cache entry (pooled differently), and the pooling drops sinks
    run = train(chat_tiny(layers=3), ROWS, out=tmp_path / "sinks", method="mse",
                sites="layers.1", drop_sinks=True, ref_cache=str(tmp_path / "cache"), **FAST)
    assert run.method["drop_sinks"] and not run.reference["cache_hit"]
    m = build_method("mse", MethodOptions(extra={"sites": "layers.1", "drop_sinks": True}))
    # (a lone outlier among n tokens is at most (n − 1)/√n σ out: n ≥ 11 to ever drop one)
    h = torch.randn(2, 16, 8, generator=torch.Generator().manual_seed(0))
    h[0, 6] *= 100
    comp = torch.zeros(2, 16, dtype=torch.long)
    comp[:, 2:] = 1
    out = m.pool("layers.1", h, torch.ones(2, 16), comp)
    keep = [i for i in range(2, 16) if i != 6]
    torch.testing.assert_close(out[0], h[0, keep].mean(0))
    torch.testing.assert_close(out[1], h[1, 2:].mean(0))
