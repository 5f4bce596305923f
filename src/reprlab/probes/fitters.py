"""Probe families: a registry from name to a batched fitter.

Every fitter takes standardised training activations ``X [L, n, d]`` and ``P`` label vectors
``Y [P, n]`` (the task and its controls) and fits all ``L x P`` problems together, over a
grid of ``H`` hyperparameter settings where the family has one. It returns a
:class:`FamilyFit` whose parameters have leading dimensions ``[L, P, H]``; the sweep picks
``h`` per layer on the validation rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from reprlab.errors import ConfigError
from reprlab.probes import metrics as M
from reprlab.probes.logistic import fit_logistic, linear_logits, prepare, probs_from_logits
from reprlab.probes.massmean import fit_massmean
from reprlab.probes.mlp import fit_mlp, mlp_logits

#: default grid of L2 strengths for logistic probes (mean log-loss + l2/2 ||w||^2)
L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


@dataclass
class FamilyFit:
    """Batched fit: ``params`` tensors ``[L, P, H, ...]``; ``curves`` ``[L, P, H, T]``."""

    family: str
    kind: str  # forward kind of reprlab.probes.frozen.FORWARD
    params: dict[str, torch.Tensor]
    grid: list[dict[str, Any]]
    curves: dict[str, torch.Tensor] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def logits(self, X: torch.Tensor) -> torch.Tensor:
        """Standardised ``X [L, m, d]`` -> logits ``[L, P, H, m, K']``."""
        L, P, H = next(iter(self.params.values())).shape[:3]
        flat = {k: v.flatten(1, 2) for k, v in self.params.items()}
        z = BATCHED_FORWARD[self.kind](X, flat)
        return z.unflatten(1, (P, H))


BATCHED_FORWARD: dict[str, Callable[[torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]] = {
    "linear": lambda X, p: linear_logits(X, p["weight"], p["bias"]),
    "mlp": mlp_logits,
}


def select_setting(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per layer, the grid index with the best validation accuracy (ties: lower log-loss).
    ``z [L, H, m, K']`` logits of one label vector's probes, ``y [m]`` -> ``[L]``."""
    probs = probs_from_logits(z)
    key = (M.accuracy(probs, y).to(torch.float64)
           - 1e-6 * M.log_loss(probs, y).to(torch.float64))
    return key.argmax(-1)


def _pad_curves(c: dict[str, torch.Tensor], T: int) -> dict[str, torch.Tensor]:
    """Extend ``[..., t]`` curves to ``T`` points by repeating the last (converged) value."""
    return {k: torch.cat([v, v[..., -1:].expand(*v.shape[:-1], T - v.shape[-1])], -1)
            for k, v in c.items()}


def _logistic(X, Y, *, n_classes, scale, X_val, Y_val, monitor, seed, options) -> FamilyFit:
    """Task and control probes at every strength of the grid, all in one batch (default,
    ``control_grid="all"``), or the random-label controls only at the strength the task chose
    on the validation rows, in a second batch (``control_grid="chosen"``). The sweep reads
    the control at the task's strength either way. One batch is the default because each
    product streams the layer's rows once whatever the number of problems (up to a few
    dozen), so a second batch costs a second run of iterations."""
    l2 = options.get("l2")
    grid = [float(l2)] if l2 is not None else [float(v) for v in options.get("l2_grid", L2_GRID)]
    P, H = Y.shape[0], len(grid)
    L, n = X.shape[0], X.shape[1]
    kw = {"n_classes": n_classes, "max_iter": int(options.get("max_iter", 500)),
          "tol": float(options.get("tol", 1e-4)), "intercept": bool(options.get("intercept", True)),
          "threads": options.get("threads")}
    l2_grid = torch.tensor(grid, dtype=X.dtype)
    hyper = [{"l2": v, "sklearn_C": 1.0 / (v * n)} for v in grid]
    mode = options.get("control_grid", "all")
    if mode not in ("all", "chosen"):
        raise ConfigError(f"control_grid must be 'all' or 'chosen', got {mode!r}")
    together = P == 1 or H == 1 or mode == "all"
    X = prepare(X, options.get("precondition", "auto"), options.get("rank"),
                threads=options.get("threads"))  # one factorisation for task and controls
    if together:
        mon = None if monitor is None else (monitor[0], monitor[1].repeat_interleave(H, 0))
        fit = fit_logistic(X, Y.repeat_interleave(H, 0), l2=l2_grid.repeat(P), monitor=mon, **kw)
        params = {"weight": fit.weight.unflatten(1, (P, H)), "bias": fit.bias.unflatten(1, (P, H))}
        curves = {k: v.unflatten(1, (P, H)) for k, v in fit.curves.items()}
        return FamilyFit("logistic", "linear", params, hyper, curves,
                         {"iterations": fit.iterations, "layers": L,
                          "converged": float(fit.converged.to(torch.float64).mean()),
                          "polished": fit.info.get("polished", 0),
                          "tol": kw["tol"], "max_iter": kw["max_iter"]})
    mon = None if monitor is None else (monitor[0], monitor[1][:1].expand(H, -1))
    task = fit_logistic(X, Y[:1].expand(H, -1), l2=l2_grid, monitor=mon, **kw)  # [L, H]
    h = select_setting(linear_logits(X_val.to(task.weight.dtype), task.weight, task.bias),
                       Y_val[0])  # [L]
    mon = None if monitor is None else (monitor[0], monitor[1][1:])
    ctl = fit_logistic(X, Y[1:], l2=l2_grid[h][:, None].expand(L, P - 1), monitor=mon, **kw)
    weight = torch.cat([task.weight[:, None], ctl.weight[:, :, None].expand(-1, -1, H, -1, -1)], 1)
    bias = torch.cat([task.bias[:, None], ctl.bias[:, :, None].expand(-1, -1, H, -1)], 1)
    curves = {}
    if task.curves:
        T = max(next(iter(task.curves.values())).shape[-1], next(iter(ctl.curves.values())).shape[-1])
        tc, cc = _pad_curves(task.curves, T), _pad_curves(ctl.curves, T)
        curves = {k: torch.cat([tc[k][:, None], cc[k][:, :, None].expand(-1, -1, H, -1)], 1)
                  for k in tc}
    conv = torch.cat([task.converged.flatten(), ctl.converged.flatten()]).to(torch.float64)
    return FamilyFit("logistic", "linear", {"weight": weight.contiguous(), "bias": bias.contiguous()},
                     hyper, curves, {"iterations": task.iterations + ctl.iterations, "layers": L,
                                     "converged": float(conv.mean()),
                                     "polished": task.info.get("polished", 0)
                                     + ctl.info.get("polished", 0),
                                     "tol": kw["tol"], "max_iter": kw["max_iter"],
                                     "control_at": "chosen strength"})


def _massmean(iid: bool):
    def fit(X, Y, *, n_classes, scale, X_val, Y_val, monitor, seed, options) -> FamilyFit:
        out = fit_massmean(X, Y, n_classes=n_classes, scale=scale, iid=iid,
                           shrinkage=options.get("shrinkage", "auto"))
        info: dict[str, Any] = {}
        if iid:
            info["shrinkage"] = out["shrinkage"].mean().item()
        return FamilyFit("mass-mean-iid" if iid else "mass-mean", "linear",
                         {"weight": out["weight"].unsqueeze(2), "bias": out["bias"].unsqueeze(2)},
                         [{"iid": iid}], {}, info)
    return fit


def _mlp(X, Y, *, n_classes, scale, X_val, Y_val, monitor, seed, options) -> FamilyFit:
    hp = {"width": int(options.get("width", 64)),
          "weight_decay": float(options.get("weight_decay", 1e-2)),
          "lr": float(options.get("lr", 3e-3)),
          "max_epochs": int(options.get("max_epochs", 300)),
          "patience": int(options.get("patience", 20))}
    out = fit_mlp(X, Y, n_classes=n_classes, X_val=X_val, Y_val=Y_val, seed=seed,
                  monitor=monitor, **hp)
    return FamilyFit("mlp", "mlp", {k: v.unsqueeze(2) for k, v in out["params"].items()},
                     [hp], {k: v.unsqueeze(2) for k, v in out["curves"].items()},
                     {"epochs": out["epochs"]})


#: family name -> batched fitter
FAMILIES: dict[str, Callable[..., FamilyFit]] = {
    "logistic": _logistic,
    "mass-mean": _massmean(iid=False),
    "mass-mean-iid": _massmean(iid=True),
    "mlp": _mlp,
}

#: families whose fit is iterative (training curves are recorded)
ITERATIVE = ("logistic", "mlp")


def check_families(names: list[str]) -> list[str]:
    """Validate family names; ConfigError listing the known ones otherwise."""
    out = []
    for n in names:
        key = n.strip().lower().replace("_", "-")
        if key in ("massmean", "mm", "mean-diff", "diff-means"):
            key = "mass-mean"
        if key not in FAMILIES:
            raise ConfigError(f"unknown probe family {n!r}; known families: "
                              f"{', '.join(FAMILIES)}")
        out.append(key)
    if not out:
        raise ConfigError(f"no probe family given; choose from {', '.join(FAMILIES)}")
    return list(dict.fromkeys(out))


def fit_family(name: str, X: torch.Tensor, Y: torch.Tensor, *, n_classes: int,
               scale: torch.Tensor, X_val: torch.Tensor, Y_val: torch.Tensor,
               monitor: tuple[torch.Tensor, torch.Tensor] | None = None, seed: int = 0,
               options: dict[str, Any] | None = None) -> FamilyFit:
    """Fit family ``name`` on every layer and label vector (see module docstring)."""
    (key,) = check_families([name])
    return FAMILIES[key](X, Y, n_classes=n_classes, scale=scale, X_val=X_val, Y_val=Y_val,
                         monitor=monitor, seed=seed, options=dict(options or {}))
