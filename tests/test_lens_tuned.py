"""Logit and tuned lens maths: the last layer is the model's own output, an untrained tuned
lens is the logit lens, brief training lowers KL at every layer but the last, save/load."""

from __future__ import annotations

import pytest
import torch
from conftest import TEXTS, make_tiny

from reprlab.errors import ConfigError, ModelError
from reprlab.lenses import LogitLens, TunedLens, load_lens
from reprlab.lenses.metrics import kl_logits
from reprlab.lenses.tuned.evaluate import evaluate_lenses
from reprlab.lenses.tuned.fit import train_tuned
from reprlab.lenses.tuned.train import TunedTrainConfig

TRAIN = [f"The {a} {b} is in the city of {c} ." for a in ("old", "tall", "red", "big")
         for b in ("tower", "bridge", "gate", "hall") for c in ("Paris", "Rome", "Tokyo")]


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2", "gpt_neox", "opt", "gemma"])
def test_logit_lens_last_layer_is_model_logits(arch):
    lm = make_tiny(arch, layers=2)
    lens = LogitLens.fit(lm)
    inputs = lm.encode(TEXTS[:3])
    per_layer, final = lens.all_logits(lm, inputs)
    assert len(per_layer) == lm.arch.n_layers + 1
    assert torch.equal(per_layer[-1], final)
    # an inner layer reads differently
    assert not torch.allclose(per_layer[1], final)


def test_logit_lens_refuses_encoder_only(tiny_bert):
    with pytest.raises(ModelError, match="unembedding"):
        LogitLens.fit(tiny_bert)


def test_tuned_identity_equals_logit_and_training_lowers_kl(tmp_path):
    lm = make_tiny("gpt2", layers=3)
    logit = LogitLens.fit(lm)
    ident = TunedLens.identity(lm)
    inputs = lm.encode(TEXTS[:3])
    a, _ = logit.all_logits(lm, inputs)
    b, _ = ident.all_logits(lm, inputs)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    cfg = TunedTrainConfig(steps=10, tokens_per_step=100, batch_size=8, optimizer="adam",
                           lr=1e-2, weight_decay=0.0, checkpoint_every=100)
    tuned, history = train_tuned(lm, TRAIN, cfg, progress=False)
    assert history[-1]["kl_sum_bits"] < 0.7 * history[0]["kl_sum_bits"]
    rows = evaluate_lenses(lm, {"logit": logit, "tuned": tuned}, TRAIN[::5])
    for r in rows[:-1]:
        assert r["tuned_kl_bits"] < r["logit_kl_bits"], r
    assert rows[-1]["tuned_kl_bits"] == pytest.approx(0.0, abs=1e-6)
    assert rows[-1]["logit_kl_bits"] == pytest.approx(0.0, abs=1e-6)
    # eval KL equals a hand computation at one layer
    states_logits, final = tuned.all_logits(lm, lm.encode([TRAIN[0]]))
    hand = kl_logits(final[0], states_logits[1][0]).mean() / torch.log(torch.tensor(2.0))
    one = evaluate_lenses(lm, {"tuned": tuned}, [TRAIN[0]])
    assert one[1]["tuned_kl_bits"] == pytest.approx(float(hand), rel=1e-5)
    # save / load bitwise, and .to()
    stem = tuned.save(tmp_path / "lens")
    back = load_lens(stem)
    assert isinstance(back, TunedLens)
    assert all(torch.equal(tuned.tensors[k], back.tensors[k]) for k in tuned.tensors)
    assert torch.equal(back.to("cpu", torch.float64).tensors["weight"],
                       tuned.tensors["weight"].double())
    assert not tuned.tensors["weight"].requires_grad


def test_tuned_resume_equals_uninterrupted(tmp_path):
    lm = make_tiny("gpt2", layers=2)
    cfg = TunedTrainConfig(steps=6, tokens_per_step=150, batch_size=4, optimizer="sgd",
                           checkpoint_every=2)
    full, _ = train_tuned(lm, TRAIN, cfg, state_path=tmp_path / "a.safetensors", progress=False)
    with pytest.raises(KeyboardInterrupt):
        train_tuned(lm, TRAIN, cfg, state_path=tmp_path / "b.safetensors", progress=False,
                    stop_after=3)
    resumed, hist = train_tuned(lm, TRAIN, cfg, state_path=tmp_path / "b.safetensors",
                                progress=False)
    assert len(hist) == 6
    assert torch.equal(full.tensors["weight"], resumed.tensors["weight"])
    assert torch.equal(full.tensors["bias"], resumed.tensors["bias"])
    assert full.tensors["weight"].abs().sum() > 0


def test_tuned_config_errors():
    with pytest.raises(ConfigError, match="optimizer"):
        TunedTrainConfig(optimizer="lion")
    with pytest.raises(ConfigError, match="--tokens-per-step"):
        TunedTrainConfig(tokens_per_step=0)
