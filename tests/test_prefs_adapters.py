"""Every PEFT tuner by name trains (each trainable tensor changes, the base does not) and its
disabled adapter is the base model exactly; gradient accumulation equals the larger batch."""

from __future__ import annotations

import contextlib

import pytest
import torch
from prefs_helpers import chat_tiny

from reprlab.prefs import train

ROWS = [{"prompt": f"what is {a} and {a} ?", "chosen": f"{2 * a} .", "rejected": f"{a} ."}
        for a in range(1, 5)]
IDS = torch.tensor([[101, 2054, 2003, 1996, 3899, 102]])

TUNERS = {
    "lora": {}, "rslora": {"rslora": True}, "dora": {"dora": True},
    "oft": {"adapter": "oft"}, "boft": {"adapter": "boft"}, "hra": {"adapter": "hra"},
    "ia3": {"adapter": "ia3"},
}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow)
                                  if n in ("rslora", "boft", "hra") else n for n in TUNERS])
def test_tuner_trains_and_disables_to_the_base(name, tmp_path):
    lm = chat_tiny()
    with torch.no_grad():
        base_logits = lm.model(input_ids=IDS).logits.clone()
    base = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    kw = dict(steps=2, batch_size=2, lr=5e-2, ref_cache="off", progress=False, max_length=48,
              lora_r=4, lora_targets=("q_proj", "v_proj"), schedule="constant")
    kw.update(TUNERS[name])
    train(lm, ROWS, out=tmp_path / name, **kw)
    params = dict(lm.model.named_parameters())
    trained = {n: p for n, p in params.items() if p.requires_grad}
    assert trained
    fresh = chat_tiny()
    torch.manual_seed(0)
    from reprlab.prefs.adapters import AdapterSpec, apply_adapter

    spec = AdapterSpec(kind=TUNERS[name].get("adapter", "lora"), r=4,
                       targets=("q_proj", "v_proj"), rslora=TUNERS[name].get("rslora", False),
                       dora=TUNERS[name].get("dora", False))
    init = dict(apply_adapter(fresh.model, spec).base_model.model.named_parameters())
    for n, p in trained.items():
        assert torch.isfinite(p).all(), n
        assert not torch.equal(p, init[n]), f"{name}: {n} did not change"
    for n, p in params.items():
        if n in trained:
            continue
        key = n.replace(".base_layer", "")
        if key in base:
            assert torch.equal(p, base[key]), f"{name}: base weight {n} changed"
    with torch.no_grad():
        on = lm.model(input_ids=IDS).logits
    assert not torch.allclose(on, base_logits)
    with torch.no_grad(), _adapters_disabled(lm.model):
        off = lm.model(input_ids=IDS).logits
    assert torch.equal(off, base_logits), name


@contextlib.contextmanager
def _adapters_disabled(model):
    """What ``PeftModel.disable_adapter`` does, on the model the adapter was injected into."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    assert layers
    for m in layers:
        m.enable_adapters(False)
    try:
        yield
    finally:
        for m in layers:
            m.enable_adapters(True)


def test_gradient_accumulation_equals_the_larger_batch(tmp_path):
    from safetensors.torch import load_file

    kw = dict(steps=1, lr=1e-2, ref_cache="off", progress=False, max_length=48, lora_r=4,
              lora_targets=("q_proj", "v_proj"), schedule="constant", max_grad_norm=1e9)
    one = train(chat_tiny(), ROWS, out=tmp_path / "b4", batch_size=4, **kw)
    two = train(chat_tiny(), ROWS, out=tmp_path / "b2x2", batch_size=2, grad_accum=2, **kw)
    assert one.log[0]["grad_norm"] == pytest.approx(two.log[0]["grad_norm"], rel=1e-5)
    a = load_file(tmp_path / "b4" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "b2x2" / "adapter" / "adapter_model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7)
