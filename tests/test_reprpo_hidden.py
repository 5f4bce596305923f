"""Completion-pooled hidden states for representation losses."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny

from reprlab.errors import SiteError
from reprlab.hooks import hook_count, record
from reprlab.prefs.hidden import (
    completion_mask,
    expand_fraction_ranges,
    pool_completion,
    pooled_states,
    resolve_repr_sites,
    sink_mask,
    special_token_mask,
)


def _batch(lm):
    tok = lm.tokenizer
    enc = tok(["the city of paris is in france", "hello there friend"], return_tensors="pt",
              padding=True)
    ids, attn = enc["input_ids"], enc["attention_mask"]
    prompt = torch.zeros_like(attn, dtype=torch.bool)
    prompt[:, :3] = True
    mask = completion_mask(attn, prompt, special_token_mask(ids, tok))
    return ids, attn, mask


def test_pooled_in_graph_equals_detached_record():
    lm = make_tiny("llama", layers=4)
    ids, attn, mask = _batch(lm)
    sites = resolve_repr_sites(lm, "layers.0.5:-1")
    assert [s.name for s in sites] == ["layers.2"]  # round(0.5 * 3) .. second-to-last
    sites = resolve_repr_sites(lm, "layers.1:-1")
    n0 = hook_count(lm.model)
    with torch.no_grad(), record(lm, sites, detach=True) as raw:
        lm.model(input_ids=ids, attention_mask=attn)
    with pooled_states(lm, sites, mask) as pooled:
        lm.model(input_ids=ids, attention_mask=attn)
    assert hook_count(lm.model) == n0
    for s in sites:
        h = raw[s.name]
        w = mask.float().unsqueeze(-1)
        want = (h * w).sum(1) / w.sum(1)
        torch.testing.assert_close(pooled[s.name].detach(), want)
        assert pooled[s.name].requires_grad
    loss = sum(v.pow(2).sum() for v in pooled.values())
    loss.backward()
    grads = [p.grad for p in lm.model.model.layers[0].parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_masks_exclude_prompt_padding_and_special_tokens():
    lm = make_tiny("gpt2")
    ids, attn, mask = _batch(lm)
    special = special_token_mask(ids, lm.tokenizer)
    assert special.any()  # [CLS]/[SEP]/[PAD] of the bundled tokenizer
    assert not (mask & special).any() and not mask[:, :3].any()
    assert not (mask & ~attn.bool()).any()
    h = torch.randn(*ids.shape, 8)
    base = pool_completion(h, mask)
    h2 = h.clone()
    h2[~mask] = 1e6  # anything outside the completion must not matter
    torch.testing.assert_close(pool_completion(h2, mask), base)


def test_sink_dropping_recovers_mean_of_other_tokens():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(3, 12, 16, generator=g)
    mask = torch.ones(3, 12, dtype=torch.bool)
    h[1, 4] *= 200.0  # a planted attention sink in row 1
    sinks = sink_mask(h, mask)
    assert sinks[1, 4] and sinks.sum() == 1
    out = pool_completion(h, mask, drop_sinks=True)
    keep = torch.ones(12, dtype=torch.bool)
    keep[4] = False
    torch.testing.assert_close(out[1], h[1, keep].mean(0))
    torch.testing.assert_close(out[0], h[0].mean(0))
    # a row whose mask holds one token keeps it
    one = torch.zeros(3, 12, dtype=torch.bool)
    one[:, 0] = True
    torch.testing.assert_close(pool_completion(h, one, drop_sinks=True), h[:, 0])


def test_side_inputs_read_output_projection_inputs():
    lm = make_tiny("llama", layers=3)
    ids, attn, mask = _batch(lm)
    sites = resolve_repr_sites(lm, "layers.1", side=True)
    assert [s.name for s in sites] == ["layers.1.attn.in", "layers.1.mlp.in"]
    assert [s.hook for s in sites] == ["pre", "pre"]
    seen = {}
    blk = lm.model.model.layers[1]
    hs = [blk.self_attn.o_proj.register_forward_pre_hook(
              lambda m, a: seen.__setitem__("attn", a[0])),
          blk.mlp.down_proj.register_forward_pre_hook(
              lambda m, a: seen.__setitem__("mlp", a[0]))]
    with pooled_states(lm, sites, mask) as pooled:
        lm.model(input_ids=ids, attention_mask=attn)
    for h in hs:
        h.remove()
    torch.testing.assert_close(pooled["layers.1.attn.in"], pool_completion(seen["attn"], mask))
    torch.testing.assert_close(pooled["layers.1.mlp.in"], pool_completion(seen["mlp"], mask))
    assert pooled["layers.1.mlp.in"].shape[-1] == lm.model.config.intermediate_size
    gpt2 = make_tiny("gpt2")
    assert [s.module_path for s in resolve_repr_sites(gpt2, "layers.0", side=True)] == [
        "transformer.h.0.attn.c_proj", "transformer.h.0.mlp.c_proj"]


def test_site_list_resolving_to_nothing_is_refused():
    lm = make_tiny("llama", layers=4)
    with pytest.raises(SiteError, match="resolves to no site|selects no layer"):
        resolve_repr_sites(lm, "layers.3:1")
    with pytest.raises(SiteError, match="fraction"):
        expand_fraction_ranges("layers.1.5:-1", 4)
    assert expand_fraction_ranges("layers.0.5:-1,layers.0", 7) == ["layers.3:-1", "layers.0"]
