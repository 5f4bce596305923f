"""Preference training: one step equals TRL's DPOTrainer, adapters change and the base does not,
the reference is the base exactly, the cache changes nothing, and kill-and-resume is exact."""

from __future__ import annotations

import pytest
import torch
from prefs_helpers import Killed, chat_tiny, kill_at, trl_dpo_trainer

from reprlab.prefs import train
from reprlab.prefs.tokenize import tokenize_prefs

ROWS = [
    {"prompt": "where is the eiffel tower ?", "chosen": "paris .", "rejected": "rome ."},
    {"prompt": "is ice cold ?", "chosen": "yes , it is cold .", "rejected": "no ."},
    {"prompt": "what is two plus two ?", "chosen": "four .", "rejected": "five , i think ."},
    {"prompt": "name a colour of the sky", "chosen": "blue .", "rejected": "the sky is green ."},
]
FAST = dict(progress=False, max_length=64, lora_r=4, lora_alpha=8, lora_targets=("q_proj", "v_proj"))


def test_tokenisation_matches_trl(tmp_path):
    lm = chat_tiny()
    trainer = trl_dpo_trainer(lm, ROWS, tmp_path, batch_size=4)
    ours = tokenize_prefs(lm.tokenizer, __import__("reprlab.prefs.data", fromlist=["x"])
                          .load_preferences(ROWS), max_length=64)
    ds = trainer.train_dataset
    assert [list(x) for x in ds["prompt_ids"]] == ours.prompt_ids
    assert [list(x) for x in ds["chosen_ids"]] == ours.chosen_ids
    assert [list(x) for x in ds["rejected_ids"]] == ours.rejected_ids
    assert all(m[-1] == 1 and sum(m) == len(m) for m in ours.chosen_mask)  # [SEP] ends the reply


def test_two_steps_equal_trl_dpo_trainer(tmp_path):
    """Same tiny Llama, LoRA init, batch and optimiser: TRL's losses and grad norms are ours."""
    trl_lm = chat_tiny(seed=0)
    trainer = trl_dpo_trainer(trl_lm, ROWS, tmp_path / "trl", batch_size=4, lr=1e-2, steps=2)
    with torch.no_grad():  # a non-zero B so that policy != reference at step 1
        for n, p in trainer.model.named_parameters():
            if "lora_B" in n:
                p.copy_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    init = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
    seen = []
    inner = trainer.compute_loss

    def record(*a, **k):
        loss = inner(*a, **k)
        seen.append(float(loss.detach()))
        return loss
    trainer.compute_loss = record
    trainer.train()
    trl_gnorm = [h["grad_norm"] for h in trainer.state.log_history if "grad_norm" in h]

    res = train(chat_tiny(seed=0), ROWS, out=tmp_path / "ours", steps=2, batch_size=4, lr=1e-2,
                schedule="constant", max_grad_norm=1e9, ref_cache="off", progress=False,
                max_length=128, lora_r=4, lora_alpha=8, lora_targets=("q_proj", "v_proj"),
                adapter_state=init)
    assert len(seen) == 2 and abs(seen[0] - 0.6931) > 1e-3  # not the trivial log 2
    assert res.losses == pytest.approx(seen, rel=1e-5, abs=1e-6)
    assert [r["grad_norm"] for r in res.log] == pytest.approx(trl_gnorm, rel=1e-4)


def test_trainable_params_change_and_base_does_not(tmp_path):
    lm = chat_tiny()
    base = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    res = train(lm, ROWS, out=tmp_path / "run", steps=3, batch_size=2, lr=5e-2,
                ref_cache="off", **FAST)
    peft_params = dict(lm.model.named_parameters())
    lora = {n: p for n, p in peft_params.items() if "lora_" in n}
    assert lora and all(p.requires_grad for p in lora.values())
    init_lm = chat_tiny()
    torch.manual_seed(0)
    from reprlab.prefs.adapters import AdapterSpec, apply_adapter

    fresh = dict(apply_adapter(init_lm.model, AdapterSpec(r=4, alpha=8, targets=("q_proj", "v_proj")))
                 .base_model.model.named_parameters())
    for n, p in lora.items():
        assert not torch.equal(p, fresh[n]), f"{n} did not change"
    for n, p in peft_params.items():
        if "lora_" in n:
            continue
        key = n.replace(".base_layer", "")
        assert torch.equal(p, base[key]), f"base weight {n} changed"
    assert res.steps == 3 and len(res.log) == 3


def test_disabled_adapter_is_the_base_model_exactly():
    from reprlab.prefs.adapters import AdapterSpec, apply_adapter

    lm = chat_tiny()
    ids = torch.tensor([[101, 2054, 2003, 1996, 3899, 102]])
    with torch.no_grad():
        base = lm.model(input_ids=ids).logits.clone()
    for spec in (AdapterSpec(r=4, targets=("q_proj", "v_proj"), extra={"init_lora_weights": False}),
                 AdapterSpec(r=4, targets=("q_proj",), dora=True)):
        lm = chat_tiny()
        peft = apply_adapter(lm.model, spec)
        with torch.no_grad():
            for n, p in peft.named_parameters():
                if "lora_B" in n or "magnitude" in n:
                    p.add_(0.1)
            on = peft(input_ids=ids).logits
            with peft.disable_adapter():
                off = peft(input_ids=ids).logits
        assert not torch.allclose(on, base)
        assert torch.equal(off, base)


def test_cached_reference_gives_the_same_losses(tmp_path):
    kw = dict(steps=3, batch_size=2, lr=2e-2, **FAST)
    live = train(chat_tiny(), ROWS, out=tmp_path / "live", ref_cache="off", **kw)
    cached = train(chat_tiny(), ROWS, out=tmp_path / "c1", ref_cache=str(tmp_path / "cache"), **kw)
    again = train(chat_tiny(), ROWS, out=tmp_path / "c2", ref_cache=str(tmp_path / "cache"),
                  **kw)
    assert live.reference["live_reference_forwards"] == 3
    assert not cached.reference["cache_hit"] and again.reference["cache_hit"]
    assert again.reference["reference_forwards_this_run"] == 0
    assert cached.losses == pytest.approx(live.losses, rel=1e-5, abs=1e-7)
    assert again.losses == cached.losses
    margins = [r["rewards/margins"] for r in live.log]
    assert [r["rewards/margins"] for r in again.log] == pytest.approx(margins, rel=1e-4, abs=1e-7)


def test_kill_and_resume_ends_with_the_same_adapter(tmp_path):
    from safetensors.torch import load_file

    kw = dict(steps=5, batch_size=3, lr=2e-2, save_every=2, ref_cache="off", schedule="cosine",
              warmup_steps=1, grad_accum=2, **FAST)
    full = train(chat_tiny(), ROWS, out=tmp_path / "full", **kw)

    with pytest.raises(Killed):
        train(chat_tiny(), ROWS, out=tmp_path / "cut", on_step=kill_at(3), **kw)
    assert not (tmp_path / "cut" / "manifest.json").exists()
    resumed = train(chat_tiny(), ROWS, out=tmp_path / "cut", **kw)
    assert resumed.resumed_from == 2
    assert resumed.losses == full.losses
    a = load_file(tmp_path / "full" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "cut" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_with_other_settings_is_refused(tmp_path):
    from reprlab.errors import ConfigError

    train(chat_tiny(), ROWS, out=tmp_path / "r", steps=1, batch_size=2, ref_cache="off", **FAST)
    with pytest.raises(ConfigError, match="different settings.*lr"):
        train(chat_tiny(), ROWS, out=tmp_path / "r", steps=1, batch_size=2, ref_cache="off",
              lr=1e-3, **FAST)
