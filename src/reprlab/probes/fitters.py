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
from reprlab.probes.logistic import fit_logistic, linear_logits
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


def _logistic(X, Y, *, n_classes, scale, X_val, Y_val, monitor, seed, options) -> FamilyFit:
    l2 = options.get("l2")
    grid = [float(l2)] if l2 is not None else [float(v) for v in options.get("l2_grid", L2_GRID)]
    P, H = Y.shape[0], len(grid)
    Yq = Y.repeat_interleave(H, 0)  # problem-major: q = p * H + h
    l2q = torch.tensor(grid, dtype=X.dtype).repeat(P)
    mon = None
    if monitor is not None:
        mon = (monitor[0], monitor[1].repeat_interleave(H, 0))
    fit = fit_logistic(X, Yq, n_classes=n_classes, l2=l2q, max_iter=int(options.get("max_iter", 500)),
                       tol=float(options.get("tol", 1e-4)), monitor=mon,
                       intercept=bool(options.get("intercept", True)))
    L = X.shape[0]
    return FamilyFit(
        "logistic", "linear",
        {"weight": fit.weight.unflatten(1, (P, H)), "bias": fit.bias.unflatten(1, (P, H))},
        [{"l2": v, "sklearn_C": 1.0 / (v * X.shape[1])} for v in grid],
        {k: v.unflatten(1, (P, H)) for k, v in fit.curves.items()},
        {"iterations": fit.iterations, "converged": float(fit.converged.to(torch.float64).mean()),
         "layers": L})


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
