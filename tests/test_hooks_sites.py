from __future__ import annotations

import pytest
import torch
from conftest import ARCHS, TEXTS, make_tiny

from reprlab import hooks
from reprlab.errors import SiteError
from reprlab.sites import deepest, parse_sites, resolve_sites


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("side", ["left", "right"])
def test_block_outputs_equal_hidden_states(arch, side):
    lm = make_tiny(arch)
    enc = lm.encode(TEXTS, padding_side=side)
    sites = resolve_sites(lm, "embed,layers.*")
    with torch.no_grad():
        ref = lm.model(**enc, output_hidden_states=True).hidden_states
    n_hooks = hooks.hook_count(lm.model)  # transformers adds its own on the first forward
    with torch.no_grad(), hooks.record(lm, sites) as cache:
        lm.model(**enc)
    n = lm.arch.n_layers
    assert len(ref) == n + 1
    assert torch.equal(cache["embed"], ref[0])
    for i in range(n - 1):
        out = cache[f"layers.{i}"]
        assert out.shape == ref[i + 1].shape  # a [0] on a tensor output would drop the batch dim
        assert torch.equal(out, ref[i + 1]), (arch, i)
    last = cache[f"layers.{n - 1}"]
    if lm.arch.final_norm_path:
        with torch.no_grad(), hooks.record(lm, "final_norm") as c2:
            lm.model(**enc)
        assert torch.equal(c2["final_norm"], ref[n])
    else:
        assert torch.equal(last, ref[n])
    assert hooks.hook_count(lm.model) == n_hooks


def test_grammar(tiny_gpt2):
    arch = tiny_gpt2.arch  # 3 layers
    names = lambda spec: [s.name for s in parse_sites(spec, arch)]  # noqa: E731
    assert names("layers.-1") == ["layers.2"]
    assert names("layers.0.5") == ["layers.1"]
    assert names("layers.1.0") == ["layers.2"]
    assert names("layers.0:3:2") == ["layers.0", "layers.2"]
    assert names("layers.*") == ["layers.0", "layers.1", "layers.2"]
    assert names("layers.*.mlp") == ["layers.0.mlp", "layers.1.mlp", "layers.2.mlp"]
    assert names("embed, final_norm") == ["embed", "final_norm"]
    assert names(["layers.1", "layers.1"]) == ["layers.1"]
    assert parse_sites("module:transformer.h.0.attn", arch)[0].module_path == "transformer.h.0.attn"
    for bad in ("layers.3", "layers.-4", "blocks.1", "layers.x", "layers.1.5"):
        with pytest.raises(SiteError, match="valid sites|must lie"):
            parse_sites(bad, arch)
    with pytest.raises(SiteError, match="no module"):
        resolve_sites(tiny_gpt2, "module:transformer.nope")
    assert deepest(parse_sites("layers.1,layers.1.mlp,embed", arch)).name == "layers.1"


@pytest.mark.parametrize("arch", ["gpt2", "llama", "bert", "gpt_neox"])
def test_attn_mlp_sites_resolve_and_record(arch):
    lm = make_tiny(arch)
    enc = lm.encode(TEXTS[:2])
    with torch.no_grad(), hooks.record(lm, "layers.0.attn,layers.0.mlp") as cache:
        lm.model(**enc)
    B, T = enc["input_ids"].shape
    for k in ("layers.0.attn", "layers.0.mlp"):
        assert cache[k].shape == (B, T, lm.arch.hidden_size)


def test_hooks_removed_after_exception_and_logits_restored(tiny_gpt2):
    lm = tiny_gpt2
    enc = lm.encode(TEXTS)
    with torch.no_grad():
        before = lm.model(**enc).logits
    n_hooks = hooks.hook_count(lm.model)
    with pytest.raises(RuntimeError, match="boom"):
        with hooks.add(lm, "layers.1", torch.ones(lm.arch.hidden_size), coeff=5.0):
            assert hooks.hook_count(lm.model) == n_hooks + 1
            raise RuntimeError("boom")
    assert hooks.hook_count(lm.model) == n_hooks
    with torch.no_grad():
        after = lm.model(**enc).logits
    assert torch.equal(before, after)


def test_add_then_subtract_and_edit_changes_output(tiny_gpt2):
    lm = tiny_gpt2
    enc = lm.encode(TEXTS)
    v = torch.randn(lm.arch.hidden_size)
    with torch.no_grad():
        with hooks.record(lm, "layers.1") as ref:
            base = lm.model(**enc).logits
        with hooks.add(lm, "layers.1", v, 3.0), hooks.record(lm, "layers.1") as c:
            steered = lm.model(**enc).logits
    assert torch.allclose(c["layers.1"] - 3.0 * v, ref["layers.1"], atol=1e-5)
    assert not torch.allclose(base, steered)


def test_edit_in_graph_gradients_flow(tiny_gpt2):
    lm = tiny_gpt2
    enc = lm.encode(TEXTS[:2])
    delta = torch.zeros(lm.arch.hidden_size, requires_grad=True)
    with hooks.edit(lm, {"layers.0": lambda h: h + delta}), \
            hooks.record(lm, "layers.2", detach=False) as cache:
        lm.model(**enc)
    cache["layers.2"].pow(2).sum().backward()
    assert delta.grad is not None and delta.grad.abs().sum() > 0


def test_stop_early_skips_later_blocks(tiny_gpt2):
    lm = tiny_gpt2
    enc = lm.encode(TEXTS)
    ran = []
    late = lm.model.get_submodule(f"{lm.arch.layers_path}.2")
    h = late.register_forward_hook(lambda *a: ran.append(1))
    try:
        with torch.no_grad(), hooks.record(lm, "layers.0", stop=True) as cache:
            out = hooks.run_until_stop(lambda: lm.model(**enc))
    finally:
        h.remove()
    assert out is None and ran == [] and "layers.0" in cache


def test_opt_has_no_mlp_module_and_says_so():
    lm = make_tiny("opt")
    with pytest.raises(SiteError, match="no mlp sub-module"):
        resolve_sites(lm, "layers.0.mlp")
