"""Every preference loss equals TRL 1.16's on the same tensors (sum and mean aggregation).

TRL has no standalone loss function: ``DPOTrainer._compute_loss`` is called with a stub model
that returns fixed per-token log-probs, and with precomputed reference log-probs.
"""

from __future__ import annotations

import types

import pytest
import torch

from reprlab.prefs.losses import LOSSES, PairLogps, compute_loss

B, T = 5, 9


@pytest.fixture(scope="module")
def trl_trainer(tmp_path_factory):
    from prefs_helpers import chat_tiny, trl_dpo_trainer

    lm = chat_tiny()
    trainer = trl_dpo_trainer(lm, [{"prompt": "a b", "chosen": "c", "rejected": "d"}] * 2,
                              tmp_path_factory.mktemp("trl"), beta=0.1, lora_r=2)
    trainer.precompute_ref_logps = True
    return trainer


@pytest.fixture(scope="module")
def tensors():
    g = torch.Generator().manual_seed(3)
    cmask = torch.zeros(2 * B, T, dtype=torch.long)
    for row in range(2 * B):  # prompt of 2-4 tokens, completion of 1-5 tokens, right padding
        start = 2 + row % 3
        length = 1 + (row * 7) % 5
        cmask[row, start:start + length] = 1
    per_token = -3 * torch.rand(2 * B, T - 1, generator=g, dtype=torch.float64) * cmask[:, 1:]
    ref = -3 * torch.rand(2 * B, generator=g, dtype=torch.float64) * 2
    return per_token, cmask, ref


def _stub(per_token):
    class Stub(torch.nn.Module):
        def forward(self, **_):
            z = torch.zeros_like(per_token)
            return types.SimpleNamespace(log_probs=per_token, entropy=z, mean_logits=z,
                                         is_top1=z.bool(), aux_loss=None)
    return Stub()


def _trl(trainer, per_token, cmask, ref, loss_types, weights=None, beta=0.1, eps=0.0):
    trainer.loss_types = list(loss_types)
    trainer.loss_weights = list(weights or [1.0] * len(loss_types))
    trainer.beta = beta
    trainer.label_smoothing = eps
    inputs = {"input_ids": torch.zeros(per_token.shape[0], T, dtype=torch.long),
              "attention_mask": torch.ones(per_token.shape[0], T, dtype=torch.long),
              "completion_mask": cmask, "ref_chosen_logps": ref[: len(ref) // 2],
              "ref_rejected_logps": ref[len(ref) // 2:]}
    with torch.no_grad():
        return trainer._compute_loss(_stub(per_token), inputs, False).double()


def _ours(per_token, cmask, ref, loss, aggregation, beta=0.1, eps=0.0, nll=0.0):
    sums = per_token.sum(1)
    n = cmask[:, 1:].sum(1)
    logps = PairLogps(sums[:B], sums[B:], ref[:B], ref[B:], n[:B], n[B:])
    return compute_loss(loss, logps, beta=beta, label_smoothing=eps, aggregation=aggregation,
                        nll_weight=nll)


def _per_token_mean(per_token, cmask, ref):
    """Tensors whose *sums* are the per-token means of the originals (TRL only sums)."""
    n = cmask[:, 1:].sum(1).clamp(min=1).to(per_token.dtype)
    return per_token / n[:, None], ref / n


CASES = [  # our loss, TRL loss_type, beta, label smoothing
    ("sigmoid", "sigmoid", 0.1, 0.0),
    ("sigmoid", "sigmoid", 0.5, 0.0),
    ("hinge", "hinge", 0.3, 0.0),
    ("robust", "robust", 0.1, 0.2),
    ("ipo", "ipo", 0.1, 0.0),
]


@pytest.mark.parametrize("aggregation", ["sum", "mean"])
@pytest.mark.parametrize("ours,theirs,beta,eps", CASES)
def test_loss_equals_trl(trl_trainer, tensors, ours, theirs, beta, eps, aggregation):
    per_token, cmask, ref = tensors
    mine = _ours(per_token, cmask, ref, ours, aggregation, beta, eps)
    if aggregation == "mean" and ours != "ipo":  # IPO is already per token in both
        per_token, ref = _per_token_mean(per_token, cmask, ref)
    want = _trl(trl_trainer, per_token, cmask, ref, [theirs], beta=beta, eps=eps)
    assert torch.isfinite(mine) and mine.abs() > 1e-3
    torch.testing.assert_close(mine, want, rtol=1e-6, atol=1e-7)


def test_mean_sigmoid_is_trl_sigmoid_norm(trl_trainer, tensors):
    per_token, cmask, ref = tensors
    want = _trl(trl_trainer, per_token, cmask, ref, ["sigmoid_norm"], beta=0.7)
    torch.testing.assert_close(_ours(per_token, cmask, ref, "sigmoid", "mean", 0.7), want,
                               rtol=1e-6, atol=1e-7)
    assert not torch.allclose(_ours(per_token, cmask, ref, "sigmoid", "sum", 0.7), want)


@pytest.mark.parametrize("aggregation", ["sum", "mean"])
def test_conservative_equals_trl_aot_pair_by_pair(trl_trainer, tensors, aggregation):
    per_token, cmask, ref = tensors
    mine = _ours(per_token, cmask, ref, "conservative", aggregation, 0.2, 0.15)
    if aggregation == "mean":
        per_token, ref = _per_token_mean(per_token, cmask, ref)
    rows = []
    for i in range(B):  # one pair at a time, TRL's sort is the identity
        idx = torch.tensor([i, B + i])
        rows.append(_trl(trl_trainer, per_token[idx], cmask[idx], ref[idx], ["aot"], beta=0.2,
                         eps=0.15))
    torch.testing.assert_close(mine, torch.stack(rows).mean(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("aggregation", ["sum", "mean"])
def test_nll_term_equals_trl_sft_term(trl_trainer, tensors, aggregation):
    per_token, cmask, ref = tensors
    mine = _ours(per_token, cmask, ref, "sigmoid", "sum", 0.1, nll=0.5)
    want = _trl(trl_trainer, per_token, cmask, ref, ["sigmoid", "sft"], [1.0, 0.5])
    torch.testing.assert_close(mine, want, rtol=1e-6, atol=1e-7)
    assert mine > _ours(per_token, cmask, ref, "sigmoid", "sum", 0.1)


def test_simper_formula_and_gradient_signs(tensors):
    per_token, cmask, _ = tensors
    sums = per_token.sum(1).clone().requires_grad_(True)
    n = cmask[:, 1:].sum(1)
    logps = PairLogps(sums[:B], sums[B:], None, None, n[:B], n[B:])
    loss = compute_loss("simper", logps)
    want = (-torch.exp(sums[:B] / n[:B]) + torch.exp(sums[B:] / n[B:])).mean()
    torch.testing.assert_close(loss, want)
    loss.backward()
    assert (sums.grad[:B] < 0).all() and (sums.grad[B:] > 0).all()  # raise chosen, lower rejected
    assert not LOSSES["simper"].needs_reference
    assert all(info.needs_reference for k, info in LOSSES.items() if k != "simper")


def test_dpo_gradient_pushes_margin_up(tensors):
    per_token, cmask, ref = tensors
    sums = per_token.sum(1).clone().requires_grad_(True)
    n = cmask[:, 1:].sum(1)
    for name in ("sigmoid", "hinge", "robust", "conservative"):  # IPO regresses to a target
        sums.grad = None
        logps = PairLogps(sums[:B], sums[B:], ref[:B], ref[B:], n[:B], n[B:])
        compute_loss(name, logps, beta=0.1, label_smoothing=0.1).backward()
        assert (sums.grad[:B] <= 0).all() and (sums.grad[B:] >= 0).all(), name
