"""ProjGrad / ProjBP: the projected gradient has the stated components; identity at β = 1,
slope = 1."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny
from torch import nn

from reprlab.errors import ConfigError
from reprlab.prefs.projection import (
    ProjBP,
    ProjectionOptions,
    ProjGrad,
    adapter_modules,
    project,
)


def test_project_components():
    g0 = torch.Generator().manual_seed(0)
    g = torch.randn(16, 50, generator=g0)   # 50 columns, each a vector in a 16-d output space
    u = torch.randn(16, generator=g0)
    uh = u / u.norm()
    c = uh @ g                              # [50] gradient along û; update moves by −c
    orth = g - uh[:, None] * c
    opts = ProjectionOptions(beta=0.3, slope=0.1)
    new = project(g, u, opts, dim=0)
    c_new = uh @ new
    want = torch.where(c < 0, c, 0.1 * c)   # toward chosen (−c > 0): kept; against: × slope
    torch.testing.assert_close(c_new, want)
    torch.testing.assert_close(new - uh[:, None] * c_new, 0.3 * orth)
    assert (c < 0).any() and (c > 0).any()
    # identity
    torch.testing.assert_close(project(g, u, ProjectionOptions(beta=1.0, slope=1.0), dim=0), g)
    # magnitude clip
    clip = project(g, u, ProjectionOptions(beta=1.0, slope=1.0, mag_clip=0.05), dim=0)
    assert (uh @ clip).abs().max() <= 0.05 * u.norm() + 1e-6
    with pytest.raises(ConfigError, match="slope"):
        ProjectionOptions(slope=2.0)


def _peft_llama():
    from peft import LoraConfig, get_peft_model

    lm = make_tiny("llama", layers=2)
    torch.manual_seed(0)
    model = get_peft_model(lm.model, LoraConfig(r=4, lora_alpha=8, target_modules=["o_proj"],
                                                init_lora_weights=False))
    return lm, model


def _batch(lm):
    tok = lm.tokenizer
    enc = tok(["the city of paris", "a cat sat on it", "the city of rome", "a dog ran off"],
              return_tensors="pt", padding=True)
    mask = enc["attention_mask"].bool().clone()
    mask[:, :2] = False
    chosen = torch.tensor([True, True, False, False])
    return enc, mask, chosen


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _step(model, enc, projector=None, mask=None, chosen=None):
    model.zero_grad()
    if projector is not None:
        with projector.observe(mask, chosen):
            out = model(**enc)
    else:
        out = model(**enc)
    out.logits.float().pow(2).mean().backward()
    return out


def test_projgrad_on_lora():
    lm, model = _peft_llama()
    enc, mask, chosen = _batch(lm)
    mods = adapter_modules(model)
    assert len(mods) == 2
    _step(model, enc)
    plain = _grads(model)
    # identity settings: unchanged gradients
    pg = ProjGrad(mods, ProjectionOptions(beta=1.0, slope=1.0))
    _step(model, enc, pg, mask, chosen)
    info = pg.apply()
    assert info["projected"] == 2 and info["left"] == 2  # lora_B projected, lora_A left
    for n, g in _grads(model).items():
        torch.testing.assert_close(g, plain[n])
    pg.remove()
    # real settings: components as stated, direction from the module's own pooled output
    seen = {}
    name, mod = next(iter(mods.items()))
    h = mod.register_forward_hook(lambda m, a, o: seen.__setitem__("out", o.detach()))
    pg = ProjGrad(mods, ProjectionOptions(beta=0.25, slope=0.0))
    _step(model, enc, pg, mask, chosen)
    h.remove()
    w = mask.float().unsqueeze(-1)
    pooled = (seen["out"] * w).sum(1) / w.sum(1)
    u = pooled[chosen].mean(0) - pooled[~chosen].mean(0)
    torch.testing.assert_close(pg.dirs[name], u)
    pg.apply()
    uh = u / u.norm()
    b_name = f"{name}.lora_B.default.weight"
    g_old, g_new = plain[b_name], model.get_parameter(b_name).grad
    c_old, c_new = uh @ g_old, uh @ g_new
    torch.testing.assert_close(c_new, torch.clamp(c_old, max=0.0))
    torch.testing.assert_close(g_new - uh[:, None] * c_new,
                               0.25 * (g_old - uh[:, None] * c_old), atol=1e-6, rtol=1e-5)
    a_name = f"{name}.lora_A.default.weight"
    torch.testing.assert_close(model.get_parameter(a_name).grad, plain[a_name])
    pg.remove()


def test_projbp_identity_on_lora():
    lm, model = _peft_llama()
    enc, mask, chosen = _batch(lm)
    mods = adapter_modules(model)
    _step(model, enc)
    plain = _grads(model)
    pb = ProjBP(mods, ProjectionOptions(beta=1.0, slope=1.0))
    _step(model, enc, pb, mask, chosen)
    for n, g in _grads(model).items():
        torch.testing.assert_close(g, plain[n], atol=1e-6, rtol=1e-5)
    pb.remove()
    pb = ProjBP(mods, ProjectionOptions(beta=0.1, slope=0.0))
    _step(model, enc, pb, mask, chosen)
    changed = [n for n, g in _grads(model).items() if not torch.allclose(g, plain[n])]
    assert changed
    pb.remove()


def test_projbp_activation_gradient():
    torch.manual_seed(0)
    lin = nn.Linear(6, 8)
    x = torch.randn(4, 5, 6, requires_grad=True)
    mask = torch.ones(4, 5, dtype=torch.bool)
    chosen = torch.tensor([True, False, True, False])
    opts = ProjectionOptions(beta=0.5, slope=0.0)
    pb = ProjBP({"lin": lin}, opts)
    w = torch.randn(4, 5, 8)
    with pb.observe(mask, chosen):
        y = lin(x)
    (y * w).sum().backward()
    # expected: per-pair directions, rows 0,2 chosen (pairs 0,1), rows 1,3 rejected
    with torch.no_grad():
        pooled = lin(x).mean(1)
        u = pooled[chosen] - pooled[~chosen]
        rows = u[torch.tensor([0, 0, 1, 1])].unsqueeze(1)
        g2 = project(w, rows, opts)
        g2 = g2 * w.norm() / g2.norm()
        torch.testing.assert_close(x.grad, g2 @ lin.weight)
    pb.remove()


def test_sum_pooling_direction_equals_completion_sums():
    """With a shared prompt, a causal model's prompt states are equal in chosen and rejected
    rows, so the attended-token sum difference is the completion-token sum difference."""
    lm, model = _peft_llama()
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(1000, 2000, (2, 5), generator=g)
    cho = torch.randint(1000, 2000, (2, 3), generator=g)
    rej = torch.randint(1000, 2000, (2, 4), generator=g)
    ids = torch.zeros(4, 9, dtype=torch.long)
    att = torch.zeros(4, 9, dtype=torch.long)
    comp = torch.zeros(4, 9, dtype=torch.bool)
    for i in range(2):
        ids[i, :8], att[i, :8], comp[i, 5:8] = torch.cat([prompt[i], cho[i]]), 1, True
        ids[i + 2, :9], att[i + 2, :9], comp[i + 2, 5:9] = torch.cat([prompt[i], rej[i]]), 1, True
    chosen = torch.tensor([True, True, False, False])
    mods = adapter_modules(model)
    name, mod = next(iter(mods.items()))
    seen = {}
    h = mod.register_forward_hook(lambda m, a, o: seen.__setitem__("out", o.detach()))
    pg = ProjGrad(mods, ProjectionOptions(), pool="sum")
    with torch.no_grad(), pg.observe(att, chosen):
        model(input_ids=ids, attention_mask=att)
    h.remove()
    out = seen["out"]
    sums = (out * comp.unsqueeze(-1)).sum(1)
    want = (sums[:2] - sums[2:]).mean(0)
    torch.testing.assert_close(pg.dirs[name], want, atol=1e-5, rtol=1e-4)
    pg.remove()
