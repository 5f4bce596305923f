"""Talkative-lens baselines against hand computations, GRPO's maths and one step of it, scale
matching, and the nla recipe's warm start + GRPO resuming bit for bit."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_tiny

from reprlab.lenses.metrics import fve
from reprlab.lenses.talk.data import dump
from reprlab.lenses.talk.evaluate import (
    evaluate_talk,
    pca_reconstruction,
    token_lookup,
)
from reprlab.lenses.talk.grpo import (
    group_advantages,
    policy_loss,
    reconstruction_reward,
    sequence_logprob,
)
from reprlab.lenses.talk.model import (
    TalkModule,
    from_embedding_scale,
    gumbel_noise,
    matching_scale,
    to_embedding_scale,
)
from reprlab.lenses.talk.train import TalkConfig, train_talk

TEXTS = [f"The {a} {b} is in the city of {c} ." for a in ("old", "tall", "red")
         for b in ("tower", "bridge", "gate") for c in ("Paris", "Rome")]


@pytest.fixture(scope="module")
def lm():
    return make_tiny("llama", hidden=32, layers=2)


def test_lookup_equals_hand_computation():
    train_a = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0], [0.0, -1.0]])
    train_tok = torch.tensor([7, 7, 9, 4])
    mean = torch.tensor([0.5, 0.5])
    got = token_lookup(train_a, train_tok, torch.tensor([9, 7, 8, 4, 7]), mean)
    want = torch.tensor([[5.0, 5.0], [2.0, 1.0], [0.5, 0.5], [0.0, -1.0], [2.0, 1.0]])
    assert torch.equal(got, want)  # token 8 never seen in training: the training mean


def test_pca_baseline_is_the_projection_on_the_top_components():
    g = torch.Generator().manual_seed(0)
    # variance mostly along the first two axes
    train = torch.randn(200, 5, generator=g) * torch.tensor([10.0, 5.0, 0.1, 0.1, 0.1])
    mean = train.mean(0)
    a = torch.randn(7, 5, generator=g)
    rec = pca_reconstruction(train, a, mean, 2)
    assert torch.allclose(rec[:, 2:], mean[2:].expand(7, -1), atol=0.05)
    assert torch.allclose(rec[:, :2], a[:, :2], atol=0.05)
    assert torch.allclose(pca_reconstruction(train, a, mean, 5), a, atol=1e-5)


def test_grpo_advantages_favour_the_better_reconstruction():
    a = torch.zeros(2, 3)
    # two activations x three samples: errors 0, 1, 4 and 2, 2, 2
    a_hat = torch.tensor([[0.0, 0, 0], [1, 0, 0], [2, 0, 0], [1, 1, 0], [1, 1, 0], [1, 1, 0]])
    r = reconstruction_reward(a_hat, a.repeat_interleave(3, 0), 1.0)
    assert torch.allclose(r, -torch.tensor([0, 1, 4, 2, 2, 2]) / 3)
    adv = group_advantages(r, 3)
    assert adv[0] > adv[1] > adv[2] and adv[:3].sum().abs() < 1e-5
    assert torch.equal(adv[3:], torch.zeros(3))  # a tied group teaches nothing
    logits = torch.zeros(2, 4, 5, requires_grad=True)
    ids = torch.tensor([[1, 2, 3, 4], [0, 0, 0, 0]])
    assert torch.allclose(sequence_logprob(logits, ids), torch.full((2,), 4 * -torch.log(
        torch.tensor(5.0))))
    policy_loss(logits, ids, torch.tensor([1.0, -1.0])).backward()
    # descending the loss raises the logit of the advantaged sample's tokens
    assert logits.grad[0, 0, 1] < 0 and logits.grad[1, 0, 0] > 0


def test_a_grpo_step_raises_the_reward_on_a_fixed_batch(lm):
    from reprlab.lenses.talk.data import LensData
    from reprlab.lenses.talk.losses import combine
    from reprlab.lenses.talk.steps import grpo_losses

    torch.manual_seed(0)
    m = lm.model
    mod = TalkModule(copy.deepcopy(m), copy.deepcopy(m), 32, [5, 0, 6], 1, [8], 1)
    ref = copy.deepcopy(mod)
    n, k, t = 4, 6, 3
    a = torch.randn(n, 32)
    data = LensData(a=a, a2=a.roll(1, 0), input_ids=torch.zeros(n, 2, dtype=torch.long),
                    lengths=torch.full((n,), 2), row=torch.arange(n), pos=torch.ones(n,
                    dtype=torch.long), row2=torch.arange(n).roll(1), pos2=torch.ones(n,
                    dtype=torch.long), site="layers.1", path=None, cache_hit=True, texts=[])
    idx = torch.arange(n)
    vocab = m.config.vocab_size
    noise = gumbel_noise((n * k, t, vocab), torch.Generator().manual_seed(1))
    # fix the samples and their rewards; measure the policy's expected reward over them
    with torch.no_grad():
        ids = mod.generate(a.repeat_interleave(k, 0), t, 1.0, noise).ids
        r = reconstruction_reward(mod.encode(ids), a.repeat_interleave(k, 0), 1.0)

    def expected() -> float:
        with torch.no_grad():
            lp = sequence_logprob(mod.score(a.repeat_interleave(k, 0), ids), ids).view(n, k)
            w = torch.softmax(lp, 1)
            return float((w * r.view(n, k)).sum(1).mean())

    before = expected()
    opt = torch.optim.SGD([p for p in mod.decoder.parameters()] + [mod.proj_in.weight], lr=0.5)
    for p in mod.encoder.parameters():
        p.requires_grad_(False)
    values, _ = grpo_losses(mod, ref, data, idx, k, noise, 1.0, 0.0, "cpu")
    opt.zero_grad()
    combine({"pg": values["pg"]}, {"pg": 1.0}).backward()
    opt.step()
    assert expected() > before


def test_grpo_reward_subtracts_the_spliced_kl(lm, tmp_path):
    """``reward_kl``: each sample's reward loses w × KL(model ‖ model with its reconstruction
    spliced in), the KL computed here with a full forward per row."""
    from reprlab.lenses.metrics import kl_logits
    from reprlab.lenses.talk.splice import target_logits
    from reprlab.lenses.talk.steps import grpo_losses
    from reprlab.sites import resolve_sites

    data = dump(lm, TEXTS, "layers.0", tmp_path / "d", progress=False)
    m = lm.model
    mod = TalkModule(copy.deepcopy(m), copy.deepcopy(m), 32, [5, 0, 6], 1, [8], 0)
    site = resolve_sites(lm, "layers.0")[0]
    idx, k, t = torch.tensor([0, 5, 9]), 2, 3
    noise = gumbel_noise((3 * k, t, m.config.vocab_size), torch.Generator().manual_seed(3))
    plain, _ = grpo_losses(mod, mod, data, idx, k, noise, 1.0, 0.0, "cpu")
    with_kl, _ = grpo_losses(mod, mod, data, idx, k, noise, 1.0, 0.0, "cpu", reward_kl=0.5,
                             lm=lm, site=site)
    with torch.no_grad():
        a_hat = mod.encode(mod.generate(data.a[idx].repeat_interleave(k, 0), t, 1.0,
                                        noise).ids)
        ctx, pos = data.context(idx)
        kl = []
        for r in range(3 * k):
            row, p = ctx[r // k: r // k + 1, : int(pos[r // k]) + 1], pos[r // k: r // k + 1]
            inputs = lm.forward_inputs({"input_ids": row, "attention_mask": torch.ones_like(row)})
            kl.append(kl_logits(target_logits(lm, site, inputs, p),
                                target_logits(lm, site, inputs, p, a_hat[r: r + 1])))
    kl = torch.cat(kl)
    assert kl.min() > 0
    assert torch.allclose(with_kl["reward"], plain["reward"] - 0.5 * kl.mean(), atol=1e-5)


def test_scale_matching_round_trips_exactly(lm):
    s = matching_scale(230.0, 1.1)
    assert s == 2.0 ** -8  # the power of two nearest 1.1 / 230
    a = torch.randn(50, 32) * 230
    assert torch.equal(from_embedding_scale(to_embedding_scale(a, s), s), a)
    m = lm.model
    mod = TalkModule(copy.deepcopy(m), copy.deepcopy(m), 32, [5, 0, 6], 1, [8], 1, scale=s)
    with torch.no_grad():
        slot = mod.prefix(a[:3])[:, 1]
    assert torch.equal(slot, a[:3] * s)  # identity projection: the slot is the scaled vector
    plain = TalkModule(copy.deepcopy(m), copy.deepcopy(m), 32, [5, 0, 6], 1, [8], 1)
    ids = torch.tensor([[7, 8, 9]])
    with torch.no_grad():  # at the identity init the encoder's read does not depend on s
        assert torch.allclose(mod.encode(ids), plain.encode(ids), rtol=1e-6, atol=1e-6)
    assert matching_scale(0.0, 1.0) == 1.0


def test_evaluate_baselines_follow_their_definitions(lm, tmp_path):
    data = dump(lm, TEXTS, "layers.1", tmp_path / "d", progress=False)
    cfg = TalkConfig(site="layers.1", tokens=3, steps=2, batch_size=8, eval_rows=20,
                     curve_rows=8)
    lens, _, facts = train_talk(lm, data, cfg, progress=False)
    held = facts["eval_indices"]
    train = [i for i in range(len(data)) if i not in set(held)]
    m = evaluate_talk(lm, lens, data, held, train_idx=train, best_of=3, echo_epochs=0.5)
    mean = data.a[torch.tensor(train)].mean(0)
    assert torch.allclose(lens.tensors["a_mean"], mean)
    a = data.a[torch.tensor(held)]
    look = token_lookup(data.a[torch.tensor(train)], data.token[torch.tensor(train)],
                        data.token[torch.tensor(held)], mean)
    assert m["fve_lookup"] == pytest.approx(float(fve(look, a, mean)), abs=1e-6)
    assert m["fve_resample"] == pytest.approx(
        float(fve(data.a2[torch.tensor(held)], a, mean)), abs=1e-6)
    assert m["fve_mean"] == pytest.approx(0.0, abs=1e-9)
    assert m["fve_pca"] == pytest.approx(float(fve(pca_reconstruction(
        data.a[torch.tensor(train)], a, mean, 3), a, mean)), abs=1e-5)
    with torch.no_grad():
        ids, a_hat = lens.reconstruct(a)
        empty = lens.module.encode(ids[:, :0])
        other = lens.module.encode(ids.roll(1, 0))
    assert torch.allclose(empty, empty[:1].expand_as(empty))  # one vector for every row
    assert m["fve"] == pytest.approx(float(fve(a_hat, a, mean)), abs=1e-6)
    # other_row is computed per batch of 32; the held-out set fits in one batch here
    assert len(held) <= 32
    assert m["fve_other_row"] == pytest.approx(float(fve(other, a, mean)), abs=1e-6)
    assert m["fve_empty"] == pytest.approx(float(fve(empty, a, mean)), abs=1e-6)
    assert m["fve_best_of_3"] >= m["fve"] - 1e-9
    assert m["share_of_lookup_residual"] == pytest.approx(
        (m["fve"] - m["fve_lookup"]) / (1 - m["fve_lookup"]))
    assert [c["step"] for c in facts["curves"]][-1] == 2


def test_nla_warm_start_then_grpo_resumes_bitwise(lm, tmp_path):
    data = dump(lm, TEXTS, "layers.1", tmp_path / "d", progress=False)
    expl = torch.randint(1000, 2000, (len(data), 3), generator=torch.Generator().manual_seed(0))
    cfg = TalkConfig(site="layers.1", tokens=3, recipe="nla", steps=4, warm_epochs=0.2,
                     batch_size=40, eval_rows=20, grpo_samples=3, checkpoint_every=1,
                     lr=1e-3, curve_rows=0)
    full, hist, facts = train_talk(lm, data, cfg, progress=False, explanations=expl,
                                   state_path=tmp_path / "a.safetensors")
    assert facts["warm_steps"] == 1
    assert [h.get("phase") for h in hist] == ["warm", "grpo", "grpo", "grpo"]
    assert {"loss_pg", "loss_kl_ref", "loss_reward"} <= set(hist[-1])
    with pytest.raises(KeyboardInterrupt):
        train_talk(lm, data, cfg, progress=False, explanations=expl,
                   state_path=tmp_path / "b.safetensors", stop_after=2)
    resumed, hist2, _ = train_talk(lm, data, cfg, progress=False, explanations=expl,
                                   state_path=tmp_path / "b.safetensors")
    assert [h["loss"] for h in hist2] == [h["loss"] for h in hist]
    for key, v in full.tensors.items():
        assert torch.equal(v, resumed.tensors[key]), key
    from reprlab.errors import ConfigError

    with pytest.raises(ConfigError, match="one row of --tokens tokens per sample"):
        train_talk(lm, data, cfg, progress=False, explanations=expl[:5])
    with pytest.raises(ConfigError, match="--recipe nla needs"):
        train_talk(lm, data, cfg, progress=False)


def test_text_bootstrap_is_paired_and_brackets_the_fve():
    """Texts drawn with replacement, every method on the same draws: a method whose error is
    a fixed share of each sample's spread has a zero-width interval, and a lens that is
    0.1 better than the lookup on every sample has a zero-width difference, although the
    lookup's own FVE varies from text to text."""
    from reprlab.lenses.talk.evaluate import text_bootstrap

    g = torch.Generator().manual_seed(0)
    groups = torch.arange(20).repeat_interleave(5)
    spread = torch.rand(100, generator=g, dtype=torch.float64) + 0.5
    share = torch.rand(20, generator=g, dtype=torch.float64).repeat_interleave(5)
    lookup = share * spread
    ci = text_bootstrap({"lens": lookup - 0.1 * spread, "lookup": lookup,
                         "half": 0.5 * spread}, spread, groups, draws=400)
    assert ci["half"] == pytest.approx((0.5, 0.5), abs=1e-12)
    assert ci["lens-lookup"] == pytest.approx((0.1, 0.1), abs=1e-12)
    lo, hi = ci["lookup"]
    point = 1 - float(lookup.sum() / spread.sum())
    assert lo < point < hi and hi - lo > 0.1  # the texts differ: a real spread
