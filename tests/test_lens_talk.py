"""Talkative-lens maths: straight-through one-hots, gradients with a frozen decoder, KV-cached
vs naive decoding, losses and metrics against hand computations, schedules, the activation
dump's cache, every trainable parameter changing, resume, and save/load."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import make_tiny

from reprlab import hooks
from reprlab.errors import ConfigError, StoreError
from reprlab.lenses import load_lens
from reprlab.lenses.metrics import fve, normalised_rmse, token_usage
from reprlab.lenses.schedules import parse_schedule, parse_tau
from reprlab.lenses.talk.data import dump
from reprlab.lenses.talk.evaluate import original_tokens
from reprlab.lenses.talk.lens import TalkativeLens
from reprlab.lenses.talk.losses import combine, normalised_mse, resample_splice
from reprlab.lenses.talk.model import TalkModule, gumbel_noise, straight_through
from reprlab.lenses.talk.train import TalkConfig, train_talk

TEXTS = [f"The {a} {b} is in the city of {c} ." for a in ("old", "tall", "red")
         for b in ("tower", "bridge", "gate") for c in ("Paris", "Rome")]


@pytest.fixture(scope="module")
def lm():
    return make_tiny("llama", hidden=32, layers=2)


def _module(lm, prompt=(5, 6, 7), marker=1, **kw):
    m = lm.model
    return TalkModule(copy.deepcopy(m), copy.deepcopy(m), 32, list(prompt), marker, [8], 1,
                      **kw)


def test_straight_through_forward_is_a_lookup_and_gradient_is_soft():
    torch.manual_seed(0)
    logits = torch.randn(4, 50, requires_grad=True)
    noise = gumbel_noise((4, 50), torch.Generator().manual_seed(1))
    y = straight_through(logits, 0.7, noise)
    idx = (logits + noise).argmax(-1)
    assert torch.equal(y, torch.nn.functional.one_hot(idx, 50).float())
    table = torch.randn(50, 8)
    assert torch.equal(y @ table, table[idx])
    w = torch.randn(4, 50)
    (y * w).sum().backward()
    soft = torch.softmax((logits.detach() + noise) / 0.7, -1)
    expected = soft * (w - (soft * w).sum(-1, keepdim=True)) / 0.7  # softmax Jacobian · w
    assert torch.allclose(logits.grad, expected, atol=1e-6)


def test_gradients_reach_projection_and_prompt_with_decoder_frozen(lm):
    mod = _module(lm, train_decoder=False)
    assert not any(p.requires_grad for p in mod.decoder.parameters())
    a = torch.randn(3, 32)
    noise = gumbel_noise((3, 4, lm.model.config.vocab_size), torch.Generator().manual_seed(0))
    gen = mod.generate(a, 4, 0.5, noise)
    mod.encode(gen.onehots).pow(2).sum().backward()
    for p in (mod.proj_in.weight, mod.proj_in.bias, mod.dec_prompt, mod.enc_prompt,
              mod.proj_out.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert all(p.grad is None for p in mod.decoder.parameters())
    # identity init
    assert torch.equal(mod.proj_in.weight, torch.eye(32)) and mod.proj_in.bias.abs().sum() == 0


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("inject", [None, "layers.0"])
def test_kv_cached_and_naive_decoding_agree(arch, inject):
    lm = make_tiny(arch, hidden=32, layers=2)
    mod = _module(lm, inject=inject, scale=0.25)
    a = torch.randn(3, 32)
    noise = gumbel_noise((3, 5, lm.model.config.vocab_size), torch.Generator().manual_seed(2))
    grads = []
    outs = []
    for cache in (True, False):
        mod.zero_grad()
        gen = mod.generate(a, 5, 0.6, noise, use_cache=cache)
        loss = mod.encode(gen.onehots).pow(2).sum() + gen.logits.logsumexp(-1).sum()
        loss.backward()
        outs.append(gen)
        grads.append({n: p.grad.clone() for n, p in mod.named_parameters() if p.grad is not None})
    assert torch.equal(outs[0].ids, outs[1].ids)
    assert torch.allclose(outs[0].logits, outs[1].logits, atol=1e-5)
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-5, rtol=1e-4), n
    assert "proj_in.weight" in grads[0] and hooks.hook_count(mod.decoder) == 0
    # teacher forcing the sampled tokens gives the logits sampling saw
    with torch.no_grad():
        assert torch.allclose(mod.score(a, outs[0].ids), outs[0].logits, atol=1e-5)


def test_injection_at_the_last_block_reads_out_as_the_logit_lens(lm):
    """A decoder prompt that is only the marker, the activation injected after the last block:
    the first token's logits are the model's head on the activation (the logit lens), exactly,
    at any power-of-two scale."""
    from reprlab.lenses.unembed import unembed

    a = torch.randn(4, 32) * 50
    with torch.no_grad():
        want = unembed(lm, a)
        for scale in (1.0, 2.0 ** -6):
            mod = _module(lm, prompt=(5,), marker=0, inject="layers.1", scale=scale).eval()
            got = mod.generate(a, 2, 1.0, None).logits[:, 0]
            assert torch.allclose(got, want, atol=1e-4, rtol=1e-5), scale
            assert hooks.hook_count(mod.decoder) == 0


def test_metrics_match_hand_computation():
    a = torch.tensor([[1.0, 2.0], [3.0, 0.0], [-1.0, 1.0]])
    a_hat = torch.tensor([[1.5, 2.0], [2.0, 0.5], [-1.0, 0.0]])
    mu = a.mean(0)  # (1, 1)
    sse = 0.25 + 0 + 1 + 0.25 + 0 + 1  # 2.5
    sst = (0 + 1) + (4 + 1) + (4 + 0)  # 10
    assert float(fve(a_hat, a)) == pytest.approx(1 - sse / sst)
    assert float(fve(a_hat, a, torch.zeros(2))) == pytest.approx(1 - sse / (a ** 2).sum())
    assert float(normalised_rmse(a_hat, a)) == pytest.approx(math.sqrt(sse / 6) /
                                                             math.sqrt(16 / 6))  # Σ A² = 16
    var = ((a - mu) ** 2).mean()
    assert float(normalised_mse(a_hat, a, var)) == pytest.approx(sse / sst)
    u = token_usage(torch.tensor([[1, 1, 2], [3, 1, 2]]))
    # counts 3, 2, 1 of 6
    h = -sum(p * math.log2(p) for p in (1 / 2, 1 / 3, 1 / 6))
    assert u["distinct"] == 3 and u["entropy_bits"] == pytest.approx(h)
    x, x2, x2h = torch.randn(2, 4), torch.randn(2, 4), torch.randn(2, 4)
    assert torch.equal(resample_splice(x, x2, x2h), x + (x2 - x2h))
    vals = {"kl": torch.tensor(2.0), "mse": torch.tensor(3.0), "entropy": torch.tensor(5.0)}
    assert float(combine(vals, {"kl": 1.0, "mse": 0.5, "entropy": 0.1})) == pytest.approx(3.0)


def test_schedules():
    assert parse_schedule("0.3")(50, 100) == 0.3
    w = parse_schedule("warmup:2.0:10")
    assert w(0, 100) == 0 and w(5, 100) == 1.0 and w(50, 100) == 2.0
    lin = parse_schedule("linear:1.0:0.0:2ep")
    assert lin(5, 100, steps_per_epoch=5) == pytest.approx(0.5)
    cos = parse_schedule("cosine:1.0:0.1")
    assert cos(0, 10) == pytest.approx(1.0) and cos(10, 10) == pytest.approx(0.1)
    assert cos(5, 10) == pytest.approx(0.55)
    with pytest.raises(ConfigError, match="goes below 0"):
        parse_tau("linear:1.0:-0.5")
    with pytest.raises(ConfigError, match="cannot read"):
        parse_schedule("linear:1.0")


def test_dump_holds_every_non_special_position(lm, tmp_path):
    from reprlab.lenses.talk.data import special_ids

    d = dump(lm, TEXTS, "layers.1", tmp_path / "d", progress=False)
    special = special_ids(lm.tokenizer)
    enc = lm.tokenizer(TEXTS, add_special_tokens=True)["input_ids"]
    want = [(r, p) for r, ids in enumerate(enc) for p, i in enumerate(ids) if i not in special]
    assert list(zip(d.row.tolist(), d.pos.tolist(), strict=True)) == want
    assert len(want) < sum(len(x) for x in enc)  # the special tokens were there, left out
    assert not set(d.token.tolist()) & special
    assert (d.row2 != d.row).all()
    # the split keeps whole texts on one side, at least eval_rows held out
    train, held = d.split(25)
    assert len(held) >= 25 and not {int(d.row[i]) for i in train} & {int(d.row[i]) for i in held}
    assert sorted(train + held) == list(range(len(d)))


def test_dump_is_reused_without_a_forward_and_checks_the_model(lm, tmp_path):
    d1 = dump(lm, TEXTS, "layers.1", tmp_path / "d", progress=False, position="random")
    assert not d1.cache_hit and len(d1) == len(TEXTS)
    assert (d1.row2 != d1.row).all() and (d1.pos >= 1).all() and (d1.pos < d1.lengths).all()
    # A is the activation at (row, pos) of a fresh forward
    with torch.no_grad(), hooks.record(lm, "layers.1") as cache:
        inputs = lm.forward_inputs({"input_ids": d1.input_ids[:1, : int(d1.lengths[0])],
                                    "attention_mask": torch.ones(1, int(d1.lengths[0]),
                                                                 dtype=torch.long)})
        lm.model(**inputs)
    assert torch.allclose(cache["layers.1"][0, d1.pos[0]], d1.a[0], atol=1e-5)
    calls = []
    handle = lm.model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        d2 = dump(lm, TEXTS, "layers.1", tmp_path / "d", progress=False, position="random")
    finally:
        handle.remove()
    assert d2.cache_hit and calls == [] and torch.equal(d1.a, d2.a)
    other = make_tiny("llama", hidden=32, layers=2, seed=5)
    with pytest.raises(StoreError, match="captured from"):
        dump(other, TEXTS, "layers.1", tmp_path / "d", progress=False, position="random")
    ids = original_tokens(d1, torch.tensor([0]), 3)
    p = int(d1.pos[0])
    assert ids[0, -1] == d1.input_ids[0, p]


CFG = dict(site="layers.1", tokens=3, batch_size=6, eval_rows=4, lr=1e-3, proj_lr=1e-2,
           w_lm="0.1", w_ent="0.01", resample_ablation=True)


def test_training_changes_every_parameter_resumes_and_round_trips(lm, tmp_path):
    data = dump(lm, TEXTS, "layers.1", tmp_path / "d", progress=False)
    cfg = TalkConfig(steps=4, checkpoint_every=1, **CFG)
    before = {n: p.detach().clone() for n, p in _module(lm).named_parameters()}
    full, hist, facts = train_talk(lm, data, cfg, progress=False,
                                   state_path=tmp_path / "a.safetensors")
    assert len(hist) == 4 and {"loss_kl", "loss_mse", "loss_lm", "loss_entropy"} <= set(hist[0])
    after = dict(full.module.named_parameters())
    trainable = [n for n, p in _module(lm).named_parameters() if p.requires_grad]
    unchanged = [n for n in trainable if torch.equal(before[n], after[n])]
    assert trainable and not unchanged, unchanged
    with pytest.raises(KeyboardInterrupt):
        train_talk(lm, data, cfg, progress=False, state_path=tmp_path / "b.safetensors",
                   stop_after=2)
    resumed, hist2, _ = train_talk(lm, data, cfg, progress=False,
                                   state_path=tmp_path / "b.safetensors")
    assert [h["loss"] for h in hist2] == [h["loss"] for h in hist]
    for k, v in full.tensors.items():
        assert torch.equal(v, resumed.tensors[k]), k
    stem = full.save(tmp_path / "lens")
    back = load_lens(stem, lm=lm)
    assert isinstance(back, TalkativeLens)
    for k, v in full.tensors.items():
        assert torch.equal(v, back.tensors[k]), k
    a = data.a[:3]
    ids1, r1 = full.reconstruct(a)
    ids2, r2 = back.reconstruct(a)
    assert torch.equal(ids1, ids2) and torch.equal(r1, r2)
    with pytest.raises(ConfigError, match="target model"):
        load_lens(stem)
    rows = back.explain(lm, TEXTS[:2], best_of=3)
    assert len(rows[0]["words"]) == 3 and rows[0]["best_fve"] >= rows[0]["fve"]


def test_warm_start_quotes_the_context_then_the_lens_tokens(lm, tmp_path):
    from reprlab.lenses.talk.explanations import with_context

    d = dump(lm, TEXTS, "layers.1", tmp_path / "d", progress=False)
    lens_ids = torch.arange(len(d) * 4).reshape(len(d), 4) + 1000
    mixed = with_context(d, lens_ids, 2)
    assert torch.equal(mixed[:, :2], original_tokens(d, torch.arange(len(d)), 2))
    assert torch.equal(mixed[:, 1], d.token)  # the current token ends the quote
    assert torch.equal(mixed[:, 2:], lens_ids[:, :2])  # the lens's first tokens follow
    assert with_context(d, lens_ids, 0) is lens_ids
    last = with_context(d, lens_ids, 2, quote_last=True)  # lens tokens first, then the quote
    assert torch.equal(last[:, :2], lens_ids[:, :2]) and torch.equal(last[:, 2:], mixed[:, :2])
    assert torch.equal(with_context(d, lens_ids, 4), original_tokens(d, torch.arange(len(d)), 4))


def test_config_errors(lm):
    with pytest.raises(ConfigError, match="--tokens must be at least 1"):
        TalkConfig(tokens=0)
    with pytest.raises(ConfigError, match="--warm-context must be 0 to --tokens"):
        TalkConfig(tokens=4, warm_context=5)
    with pytest.raises(ConfigError, match="below 0"):
        TalkConfig(tau="cosine:1:-1")
    with pytest.raises(ConfigError, match="all 0"):
        TalkConfig(w_kl="0", w_mse="0", w_lm="0")
    wide = make_tiny("llama", hidden=48, layers=2)
    with pytest.raises(ConfigError, match="width 32 but the decoder LM's is 48"):
        TalkModule(wide.model, wide.model, 32, [5, 6], 0, [], 0)
    rect = TalkModule(wide.model, wide.model, 32, [5, 6], 0, [], 0, allow_rect=True)
    assert rect.proj_in.weight.shape == (48, 32) and rect.proj_out.weight.shape == (32, 48)
    assert rect.encode(torch.tensor([[7, 8, 9]])).shape == (1, 32)
    with pytest.raises(ConfigError, match="--inject layers.9: layer index 9"):
        _module(lm, inject="layers.9")


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_cached_splice_equals_full_forward_splice(arch):
    from reprlab.lenses.talk.splice import splice_logits, target_logits
    from reprlab.sites import resolve_sites

    lm = make_tiny(arch, hidden=32, layers=2)
    site = resolve_sites(lm, "layers.0")[0]
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 2000, (4, 9), generator=g)
    pos = torch.tensor([8, 3, 0, 5])
    splice = torch.randn(4, 32, requires_grad=True)
    orig, rec = splice_logits(lm, site, ids, pos, splice)
    inputs = lm.forward_inputs({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    orig_full = target_logits(lm, site, inputs, pos)
    rec_full = target_logits(lm, site, inputs, pos, splice)
    assert torch.allclose(orig, orig_full, atol=1e-5)
    assert torch.allclose(rec, rec_full, atol=1e-5)
    assert not torch.allclose(rec, orig, atol=1e-3)
    (g1,) = torch.autograd.grad(rec.logsumexp(-1).sum(), splice)
    (g2,) = torch.autograd.grad(rec_full.logsumexp(-1).sum(), splice)
    assert torch.allclose(g1, g2, atol=1e-5)


def test_sample_positions_fixed_and_random():
    from reprlab.lenses.talk.data import _sample_positions

    lengths = torch.tensor([5, 2, 9])
    g = torch.Generator().manual_seed(0)
    assert _sample_positions(lengths, "1", 1, g).tolist() == [1, 1, 1]
    with pytest.raises(ConfigError, match="--position 3 is outside 1 of 3 texts"):
        _sample_positions(lengths, "3", 1, g)  # refused, not clamped to the short text's end
    assert _sample_positions(lengths, "-1", 1, g).tolist() == [4, 1, 8]
    r = torch.stack([_sample_positions(lengths, "random", 1, g) for _ in range(200)])
    assert (r >= 1).all() and (r < lengths).all()
    assert set(r[:, 2].tolist()) == set(range(1, 9))  # every allowed position gets drawn
    with pytest.raises(ConfigError, match="--position"):
        _sample_positions(lengths, "middle", 1, g)
