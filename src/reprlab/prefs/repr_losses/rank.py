"""Rank: DPO on the hidden state read as a distribution over its dimensions.

Source: the ``rank`` loss of the ReprPO research (wassname/repr-preference-optimization,
``reprpo/interventions/losses/rank.py``). Each pooled state is turned into pseudo log-probs
over its ``d`` dimensions with a log-softmax; a DPO-shaped loss then asks that, dimension by
dimension, the chosen completion's pseudo-probabilities rise relative to the reference more
than the rejected completion's do. Per site and row::

    θ_cho = logsoftmax(π_cho) − logsoftmax(ref_cho)          [B, d]
    θ_rej = logsoftmax(π_rej) − logsoftmax(ref_rej)          [B, d]
    θ     = θ_cho − θ_rej                                     [B, d]
    loss  = mean_sites mean_d −log σ(β·θ) + α · relu(−ρ)      [B]

The retain term ``relu(−ρ)`` punishes the output preference only when it became worse than
the reference's (the research's ``use_dpo_loss``; set α = 0 to drop it).

Deviation from the research code: its reroute term was ``−log σ(−β·θ)``, which *lowers* the
loss as the rejected completion's states gain pseudo-probability — the opposite of its own
docstring ("making the chosen hs more likely, and the rejected less"). The intent is
implemented. Bounded below by 0; zero at no point, ``log 2`` per dimension at the reference.

What it does at the reference. There θ = 0 and every dimension's term has the same slope,
so the gradient step on the chosen state is exactly along ``1/d − softmax(ref_cho)``
(cosine 1.0, measured on random states): it *flattens the chosen pseudo-softmax* (raises
its entropy) and sharpens the rejected one. That direction is set by the chosen state's own
softmax, not by the preference direction Δr (cosine −0.34 with Δr on random states of
scale 3), so near the reference the loss does not push the states along Δr at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from reprlab.prefs.repr_losses.base import ReprInputs, ReprLoss, check_options, finish, over_sites


@dataclass(frozen=True)
class RankOptions:
    alpha: float = 0.25
    """weight of the output retain term relu(−ρ)"""
    beta: float = 1.0
    """β of the per-dimension DPO-shaped term"""
    eps: float = 1e-4

    def __post_init__(self) -> None:
        check_options(self)


def _site(pc, pr, rc, rr, beta: float) -> dict[str, torch.Tensor]:
    t_cho = pc.log_softmax(-1) - rc.log_softmax(-1)
    t_rej = pr.log_softmax(-1) - rr.log_softmax(-1)
    theta = t_cho - t_rej
    return {"rows": (-F.logsigmoid(beta * theta)).mean(-1), "theta": theta.mean(-1)}


def rank_loss(x: ReprInputs, opts: RankOptions = RankOptions()) -> ReprLoss:
    """Rank (module docstring)."""
    t = over_sites(x, _site, beta=opts.beta)
    rows = t["rows"]
    metrics = {"theta": t["theta"]}
    if opts.alpha > 0:
        rho = x.rho()
        retain = F.relu(-rho)
        rows = rows + opts.alpha * retain
        metrics.update(retain=retain, rho=rho)
    return finish(rows, hidden=t["rows"], **metrics)
