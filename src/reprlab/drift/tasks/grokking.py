"""Modular addition that groks: a one-layer transformer trained full-batch with AdamW.

The task (Power et al. 2022; Nanda et al. 2023): inputs ``[a, b, =]`` with ``a, b`` in
``0..p-1`` and ``=`` the token ``p``; the target is ``(a + b) mod p`` read at ``=``. A fraction of
the ``p**2`` pairs is used for training (full batch), the rest for testing. With weight decay
the network first memorises the training pairs (train accuracy 100%, test accuracy low) and
much later generalises: test accuracy jumps. That jump is a phase transition whose effect on the
representations :mod:`reprlab.drift` measures.

Model (Nanda et al. 2023): token and position embeddings, one attention block (``n_heads``
heads, causal), one ReLU MLP, unembedding; no LayerNorm, no biases in attention. Weights are
initialised ``N(0, 1/d_model)`` (the unembedding ``N(0, 1/p)``), times ``init_scale``.

Presets (:data:`PRESETS`):

``nanda``
    The published setting: p = 113, 30% of pairs for training, d_model 128, 4 heads, d_mlp 512,
    AdamW lr 1e-3, weight decay 1.0, betas (0.9, 0.98), 10-step linear warm-up. Grokking there
    takes of the order of 10k epochs (about 20-30 minutes on two CPU cores) and is sensitive to
    details; expect to run it on a GPU.
``small``
    A setting that groks in about a minute of CPU (the default): the Nanda model with p = 59,
    35% of pairs for training, AdamW lr 5e-3 and weight decay 2.0 (10-step warm-up), 1,000
    epochs, checkpoints every 20. Measured on two busy CPU cores, one thread, ~0.02 s per
    epoch (the forward computes only the position that reaches the logits): train accuracy
    99% by epoch 50-75; test accuracy creeps from 0.16 to 0.35 during memorisation
    (non-symmetric split below 0.03), crosses 50% at epoch ~420 (seed 0; 325-475 over the
    settings' seeds) and passes 0.95 by ~580. ``reprlab drift train --task grokking`` took 59 s
    of CPU in all (training, clouds, the drift analysis) and 5 min 20 s of wall time at a load
    average of 10-15 on two cores. Why these values: grid-searched here on p = 59 at 35%
    (epoch at which test accuracy crosses 50%, seeds 0 and 1): lr 3e-3 and wd 1.0 (the
    previous preset) 1,225 / 1,125; lr 5e-3 650 / 575; wd 2.0 600 / 475; both 425 / 325;
    p = 47 at 40% 825 / 750. Weight decay speeds grokking (Power et al. 2022) and a larger
    learning rate shortens every phase; both together cut the run three-fold while the
    memorisation plateau stays six times longer than memorisation itself. A larger training
    fraction groks sooner still, but at 50% about half of the test pairs have their transpose
    in training, so test accuracy sits near 0.45 during memorisation and the jump is hard to
    see; 0.35 keeps the plateau low.
``tiny``
    A cut-down ``small`` for fast end-to-end checks: it does not grok (the CLI and report say
    "test accuracy did not reach 50%").
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from reprlab.errors import ConfigError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GrokConfig:
    """Task, model and optimiser settings of a grokking run."""

    p: int = 113
    train_frac: float = 0.3
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    lr: float = 1e-3
    weight_decay: float = 1.0
    beta1: float = 0.9
    beta2: float = 0.98
    warmup: int = 10
    epochs: int = 20_000
    every: int = 100
    init_scale: float = 1.0
    seed: int = 0
    n_eval: int = 512

    def __post_init__(self) -> None:
        if self.p < 3:
            raise ConfigError(f"p must be >= 3, got {self.p}")
        if not 0.0 < self.train_frac < 1.0:
            raise ConfigError(f"train_frac must lie in (0, 1), got {self.train_frac}")
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}; change one")
        if self.every < 1 or self.epochs < 1:
            raise ConfigError("epochs and every must be positive integers")
        if self.lr <= 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, GrokConfig] = {
    "nanda": GrokConfig(),
    "small": GrokConfig(p=59, train_frac=0.35, lr=5e-3, weight_decay=2.0, epochs=1000, every=20),
    "tiny": GrokConfig(p=23, train_frac=0.5, d_model=32, n_heads=2, d_mlp=64, lr=3e-3,
                       epochs=60, every=10, n_eval=128),
}


def preset(name: str, **overrides) -> GrokConfig:
    """A named preset with optional field overrides (``None`` values are ignored)."""
    try:
        cfg = PRESETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown grokking preset {name!r}; use one of {', '.join(PRESETS)}") from None
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return replace(cfg, **overrides) if overrides else cfg


class GrokTransformer(nn.Module):
    """One-layer attention + ReLU-MLP transformer without LayerNorm.

    ``forward(tokens [B, 3]) -> logits [B, p]`` read at the last position. With
    ``return_cache=True`` it also returns a dict of residual-stream tensors at the last
    position ``[B, d_model]``: ``"embed"`` (token + position), ``"attn"`` (after attention),
    ``"mlp"`` (after the MLP; the final residual stream) and ``"mlp_hidden"`` ``[B, d_mlp]``.
    """

    def __init__(self, p: int, d_model: int = 128, n_heads: int = 4, d_mlp: int = 512,
                 n_ctx: int = 3, init_scale: float = 1.0):
        super().__init__()
        self.p, self.d_model, self.n_heads, self.d_mlp = p, d_model, n_heads, d_mlp
        d_head = d_model // n_heads
        s = init_scale / math.sqrt(d_model)

        def param(*shape: int, scale: float = s) -> nn.Parameter:
            return nn.Parameter(torch.randn(*shape) * scale)

        self.W_E = param(p + 1, d_model)
        self.W_pos = param(n_ctx, d_model)
        self.W_Q = param(n_heads, d_model, d_head)
        self.W_K = param(n_heads, d_model, d_head)
        self.W_V = param(n_heads, d_model, d_head)
        self.W_O = param(n_heads, d_head, d_model)
        self.W_in = param(d_model, d_mlp)
        self.b_in = nn.Parameter(torch.zeros(d_mlp))
        self.W_out = param(d_mlp, d_model)
        self.b_out = nn.Parameter(torch.zeros(d_model))
        self.W_U = param(d_model, p, scale=init_scale / math.sqrt(p))

    def forward(self, tokens: torch.Tensor, return_cache: bool = False):
        """Only the last position reaches the logits (causal attention, no LayerNorm), so
        queries, the attention output and the MLP are computed there alone; keys and values
        come from every position. Identical logits at about a third of the MLP cost."""
        T = tokens.shape[1]
        x = self.W_E[tokens] + self.W_pos[:T]                              # [B, T, d]
        last = x[:, -1]                                                    # [B, d]
        q = torch.einsum("bd,hde->bhe", last, self.W_Q)                    # [B, H, e]
        k = torch.einsum("btd,hde->bhte", x, self.W_K)
        v = torch.einsum("btd,hde->bhte", x, self.W_V)
        scores = torch.einsum("bhe,bhte->bht", q, k) / math.sqrt(q.shape[-1])  # [B, H, T]
        z = torch.einsum("bht,bhte->bhe", scores.softmax(-1), v)           # [B, H, e]
        resid = last + torch.einsum("bhe,hed->bd", z, self.W_O)
        hidden = torch.relu(resid @ self.W_in + self.b_in)                 # [B, m]
        out = resid + hidden @ self.W_out + self.b_out
        logits = out @ self.W_U                                            # [B, p]
        if return_cache:
            return logits, {"embed": last, "attn": resid, "mlp_hidden": hidden, "mlp": out}
        return logits


@dataclass
class GrokData:
    """All ``p**2`` pairs split into train / test, plus the fixed evaluation subset."""

    tokens: torch.Tensor        # [p*p, 3]
    labels: torch.Tensor        # [p*p]
    train_idx: torch.Tensor     # [n_train]
    test_idx: torch.Tensor      # [n_test]
    test_nonsym_idx: torch.Tensor  # test pairs whose transpose is not in training
    eval_idx: torch.Tensor      # [n_eval] fixed subset of all pairs (clouds are read here)


def make_data(cfg: GrokConfig) -> GrokData:
    """Deterministic split of the ``p**2`` pairs (seeded by ``cfg.seed``)."""
    p = cfg.p
    a = torch.arange(p).repeat_interleave(p)
    b = torch.arange(p).repeat(p)
    tokens = torch.stack([a, b, torch.full_like(a, p)], dim=1)
    labels = (a + b) % p
    g = torch.Generator().manual_seed(cfg.seed)
    perm = torch.randperm(p * p, generator=g)
    n_train = int(round(cfg.train_frac * p * p))
    train_idx, test_idx = perm[:n_train].sort().values, perm[n_train:].sort().values
    in_train = torch.zeros(p * p, dtype=torch.bool)
    in_train[train_idx] = True
    transpose = b * p + a
    nonsym = test_idx[~in_train[transpose[test_idx]]]
    n_eval = min(cfg.n_eval, p * p)
    eval_idx = torch.randperm(p * p, generator=g)[:n_eval].sort().values
    return GrokData(tokens, labels, train_idx, test_idx, nonsym, eval_idx)


def build_model(cfg: GrokConfig) -> GrokTransformer:
    torch.manual_seed(cfg.seed)
    return GrokTransformer(cfg.p, cfg.d_model, cfg.n_heads, cfg.d_mlp, init_scale=cfg.init_scale)


def build_optimizer(model: nn.Module, cfg: GrokConfig):
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                            betas=(cfg.beta1, cfg.beta2))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: min(1.0, (step + 1) / max(1, cfg.warmup)))
    return opt, sched


@torch.no_grad()
def evaluate(model: GrokTransformer, data: GrokData) -> dict[str, float]:
    """Loss and accuracy on train, test and the non-symmetric test split."""
    logits = model(data.tokens)
    loss = torch.nn.functional.cross_entropy(logits, data.labels, reduction="none")
    correct = (logits.argmax(-1) == data.labels).float()
    out: dict[str, float] = {}
    for name, idx in (("train", data.train_idx), ("test", data.test_idx),
                      ("test_nonsym", data.test_nonsym_idx)):
        if len(idx):
            out[f"{name}_loss"] = float(loss[idx].mean())
            out[f"{name}_acc"] = float(correct[idx].mean())
    out["weight_norm"] = float(torch.sqrt(sum((p.detach() ** 2).sum() for p in model.parameters())))
    return out


@torch.no_grad()
def eval_clouds(model: GrokTransformer, data: GrokData,
                sites: tuple[str, ...] = ("attn", "mlp", "mlp_hidden")
                ) -> dict[str, torch.Tensor]:
    """Residual stream (and MLP activations) at the ``=`` token for the fixed eval pairs.

    The embedding at ``=`` is left out by default: it is the same vector for every input.

    Returns ``{site: [n_eval, d]}``, the same rows in the same order at every checkpoint.
    """
    _, cache = model(data.tokens[data.eval_idx], return_cache=True)
    return {s: cache[s].detach().clone() for s in sites}


def train_step(model: GrokTransformer, data: GrokData, opt, sched) -> float:
    """One full-batch AdamW step on the training pairs; returns the training loss."""
    idx = data.train_idx
    logits = model(data.tokens[idx])
    loss = torch.nn.functional.cross_entropy(logits, data.labels[idx])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    return float(loss.detach())


def train(cfg: GrokConfig, on_checkpoint: Callable[[int, GrokTransformer, dict], None] | None = None,
          ) -> list[dict]:
    """Train from scratch; evaluate at epoch 0 and every ``cfg.every`` epochs.

    ``on_checkpoint(epoch, model, metrics)`` is called at each checkpoint. Returns the list of
    metric dicts (with ``"step"``). For resumable runs with stored clouds use
    :func:`reprlab.drift.track.track_grokking`.
    """
    data = make_data(cfg)
    model = build_model(cfg)
    opt, sched = build_optimizer(model, cfg)
    history = []
    for epoch in range(cfg.epochs + 1):
        if epoch % cfg.every == 0 or epoch == cfg.epochs:
            m = {"step": epoch, **evaluate(model, data)}
            history.append(m)
            if on_checkpoint is not None:
                on_checkpoint(epoch, model, m)
        if epoch < cfg.epochs:
            train_step(model, data, opt, sched)
    return history
