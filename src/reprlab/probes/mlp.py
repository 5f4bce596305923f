"""One-hidden-layer MLP probes, trained for many (layer, problem) pairs at once.

All problems share one parameter tensor per layer of the network with leading dimensions
``[L, P]``; the loss is the sum of the per-problem mean log-losses, so the gradient (and
AdamW, an element-wise update) of each problem is exactly that of training it alone.
Full-batch training with early stopping on the validation log-loss (per problem: its best
parameters are kept and it stops counting once ``patience`` epochs pass without gain).
Each epoch reports the mean train/validation log-loss and validation accuracy over all
problems through :func:`reprlab.sweeps.progress.report` (when something listens).
"""

from __future__ import annotations

import math

import torch

from reprlab.probes.logistic import data_loss, n_logits, predict
from reprlab.sweeps import progress


def mlp_logits(X: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """``X [L, n, d]``, ``w1 [L, P, d, h]``, ``b1 [L, P, h]``, ``w2 [L, P, h, K']``,
    ``b2 [L, P, K']`` -> logits ``[L, P, n, K']``."""
    h = torch.einsum("lnd,lpdh->lpnh", X, params["w1"]) + params["b1"].unsqueeze(-2)
    h = torch.relu(h)
    return h @ params["w2"] + params["b2"].unsqueeze(-2)


def init_mlp(L: int, P: int, d: int, width: int, k: int, *, seed: int,
             dtype: torch.dtype, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Uniform fan-in initialisation (as ``nn.Linear``) from a seeded generator."""
    gen = torch.Generator().manual_seed(int(seed))

    def u(shape, fan_in):
        bound = 1.0 / math.sqrt(fan_in)
        return ((torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1) * bound).to(
            dtype=dtype, device=device)

    return {"w1": u((L, P, d, width), d), "b1": u((L, P, width), d),
            "w2": u((L, P, width, k), width), "b2": u((L, P, k), width)}


def fit_mlp(X: torch.Tensor, Y: torch.Tensor, *, n_classes: int, X_val: torch.Tensor,
            Y_val: torch.Tensor, width: int = 64, weight_decay: float = 1e-2, lr: float = 3e-3,
            max_epochs: int = 300, patience: int = 20, seed: int = 0,
            monitor: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict:
    """Train ``L x P`` MLPs. ``X [L, n, d]`` (standardised), ``Y [P, n]``, ``X_val [L, m, d]``,
    ``Y_val [P, m]``. Returns the best-on-validation parameters, ``epochs`` run and
    ``curves`` (train/val/eval loss and accuracy per epoch, ``[L, P, T]``)."""
    if Y.dim() == 1:
        Y = Y.unsqueeze(0)
    if Y_val.dim() == 1:
        Y_val = Y_val.unsqueeze(0)
    L, P = X.shape[0], Y.shape[0]
    k = n_logits(n_classes)
    params = init_mlp(L, P, X.shape[-1], width, k, seed=seed, dtype=X.dtype, device=X.device)
    for p in params.values():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(list(params.values()), lr=lr, weight_decay=weight_decay)
    YL, YvL = Y.expand(L, P, -1), Y_val.expand(L, P, -1)
    best = {n: p.detach().clone() for n, p in params.items()}
    best_val = torch.full((L, P), float("inf"), dtype=X.dtype, device=X.device)
    since = torch.zeros((L, P), dtype=torch.long, device=X.device)
    names = ["train_loss", "train_acc", "val_loss", "val_acc"]
    if monitor is not None:
        Xm, Ym = monitor[0], (monitor[1] if monitor[1].dim() > 1 else monitor[1].unsqueeze(0))
        YmL = Ym.expand(L, P, -1)
        names += ["eval_loss", "eval_acc"]
    curves: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    epoch = 0
    for _ in range(max_epochs):
        epoch += 1
        opt.zero_grad(set_to_none=True)
        z = mlp_logits(X, params)
        loss = data_loss(z, YL)
        loss.sum().backward()
        opt.step()
        with torch.no_grad():
            curves["train_loss"].append(loss.detach())
            curves["train_acc"].append((predict(z) == YL).to(X.dtype).mean(-1))
            zv = mlp_logits(X_val, params)
            vl = data_loss(zv, YvL)
            curves["val_loss"].append(vl)
            curves["val_acc"].append((predict(zv) == YvL).to(X.dtype).mean(-1))
            if monitor is not None:
                zm = mlp_logits(Xm, params)
                curves["eval_loss"].append(data_loss(zm, YmL))
                curves["eval_acc"].append((predict(zm) == YmL).to(X.dtype).mean(-1))
            better = vl < best_val - 1e-6
            best_val = torch.where(better, vl, best_val)
            since = torch.where(better, torch.zeros_like(since), since + 1)
            for n, p in params.items():
                m = better.view(L, P, *([1] * (p.dim() - 2)))
                best[n] = torch.where(m, p.detach(), best[n])
            if progress.active():  # the mean over problems; a device sync, so only on demand
                progress.report(epoch, train_loss=float(loss.detach().mean()),
                                val_loss=float(vl.mean()),
                                val_acc=float(curves["val_acc"][-1].mean()))
            if bool((since >= patience).all()):
                break
    return {"params": best, "epochs": epoch,
            "curves": {n: torch.stack(v, -1) for n, v in curves.items()}}
