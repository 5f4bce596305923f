"""L2-regularised logistic regression for many problems at once (binary and softmax).

Objective per problem ``p`` (the same as scikit-learn's up to a constant factor):

    mean_i loss_i(w, b) + (l2 / 2) * ||w||^2        (the intercept b is not penalised)

scikit-learn's ``LogisticRegression(C=C)`` minimises ``C * sum_i loss_i + ||w||^2 / 2``,
i.e. the same optimum at ``l2 = 1 / (C * n)`` for ``n`` training rows (:func:`l2_from_C`).

Binary problems use one logit and the sigmoid; ``K > 2`` classes use ``K`` logits and the
softmax (multinomial). Shapes: activations ``X [L, n, d]`` shared by all problems of a layer
(or ``[L, P, n, d]`` when each problem has its own features), labels ``Y [P, n]`` (or
``[L, P, n]``), strengths ``l2 [P]`` (or ``[L, P]``). The result holds ``weight [L, P, K', d]``
and ``bias [L, P, K']`` with ``K' = 1`` for binary and ``K`` otherwise. All ``L x P`` problems
are solved together by batched L-BFGS (:mod:`reprlab.probes.lbfgs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from reprlab._threads import num_threads
from reprlab.probes import lbfgs


def _eigh(G: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric eigendecomposition; on CPU with one thread, which costs little at these sizes
    and avoids the many-fold slowdowns of multi-threaded LAPACK when cores are oversubscribed."""
    if G.device.type != "cpu":
        return torch.linalg.eigh(G)
    with num_threads(1):
        return torch.linalg.eigh(G)


def l2_from_C(C: float, n: int) -> float:
    """The ``l2`` of this module that matches scikit-learn's ``C`` on ``n`` training rows."""
    return 1.0 / (float(C) * int(n))


def n_logits(n_classes: int) -> int:
    return 1 if n_classes == 2 else n_classes


def linear_logits(X: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``X [L, n, d]`` or ``[L, P, n, d]``, ``weight [L, P, K', d]``, ``bias [L, P, K']``
    -> logits ``[L, P, n, K']``."""
    if X.dim() == 3:
        z = torch.einsum("lnd,lpkd->lpnk", X, weight)
    else:
        z = torch.einsum("lpnd,lpkd->lpnk", X, weight)
    return z + bias.unsqueeze(-2)


def probs_from_logits(z: torch.Tensor) -> torch.Tensor:
    """``[..., K']`` logits -> ``[..., K]`` class probabilities (sigmoid when ``K' = 1``)."""
    if z.shape[-1] == 1:
        p1 = torch.sigmoid(z)
        return torch.cat([1 - p1, p1], -1)
    return torch.softmax(z, -1)


def predict(z: torch.Tensor) -> torch.Tensor:
    """Predicted class from logits ``[..., K']`` -> ``[...]`` (binary: logit > 0)."""
    if z.shape[-1] == 1:
        return (z[..., 0] > 0).long()
    return z.argmax(-1)


def data_loss(z: torch.Tensor, Y: torch.Tensor, Yf: torch.Tensor | None = None) -> torch.Tensor:
    """Mean log-loss over rows. ``z [..., n, K']``, ``Y [..., n]`` -> ``[...]``."""
    if z.shape[-1] == 1:
        zz = z.squeeze(-1)
        return (F.softplus(zz) - (Y.to(z.dtype) if Yf is None else Yf) * zz).mean(-1)
    return (torch.logsumexp(z, -1) - z.gather(-1, Y.unsqueeze(-1)).squeeze(-1)).mean(-1)


def _dlogits(z: torch.Tensor, Y: torch.Tensor, Yf: torch.Tensor | None = None) -> torch.Tensor:
    if z.shape[-1] == 1:
        return torch.sigmoid(z) - (Y.to(z.dtype) if Yf is None else Yf).unsqueeze(-1)
    return torch.softmax(z, -1) - F.one_hot(Y, z.shape[-1]).to(z.dtype)


class _Objective:
    """Mean log-loss + L2 for every (layer, problem); theta ``[L, P, K'*(d+1)]``."""

    def __init__(self, X: torch.Tensor, Y: torch.Tensor, l2: torch.Tensor, k: int,
                 intercept: bool) -> None:
        self.X, self.k, self.intercept = X, k, intercept
        self.L = X.shape[0]
        self.d = X.shape[-1]
        self.n = X.shape[-2]
        self.Y = Y
        self.Yf = Y.to(X.dtype) if k == 1 else None
        self.precondition = None
        self.precondition_scaled = False
        self._calls = 0  # gradients evaluated (the preconditioner refreshes every other one)
        self.l2 = l2  # [L, P]

    def use_diagonal_preconditioner(self) -> None:
        """Precondition with the inverse diagonal of the current Hessian,
        ``1 / (sum_i s_i x_ij^2 / n + l2)`` with ``s_i = p_i (1 - p_i)``, refreshed at every
        other gradient (the diagonal changes slowly, and each refresh is one of the three
        matrix products of an iteration: this cut the fit by a fifth at the same iteration
        count). It is a good inverse-Hessian model when the columns of ``X`` are
        uncorrelated, which :func:`fit_logistic` arranges by rotating each layer into the
        eigenbasis of its Gram matrix (the L2 penalty is rotation invariant)."""
        self._X2 = self.X.pow(2)
        self._pinv = None
        self.precondition = self._precondition
        self.precondition_scaled = True

    def _refresh(self, z: torch.Tensor) -> None:
        if self.k == 1:
            p = torch.sigmoid(z)
        else:
            p = torch.softmax(z, -1)
        s = p * (1 - p) / self.n  # [L, P, n, K']
        diag = torch.einsum("lnd,lpnk->lpkd", self._X2, s) + self.l2[..., None, None]
        bias = s.sum(-2).clamp_min(1e-12) if self.intercept else torch.ones_like(s[..., 0, :])
        self._pinv = torch.cat([1.0 / diag, (1.0 / bias).unsqueeze(-1)], -1).flatten(-2)

    def _precondition(self, q: torch.Tensor) -> torch.Tensor:
        return q * self._pinv

    def split(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = theta.view(*theta.shape[:-1], self.k, self.d + 1)
        return t[..., : self.d], t[..., self.d]

    def logits(self, theta: torch.Tensor) -> torch.Tensor:
        w, b = self.split(theta)
        return linear_logits(self.X, w, b)

    def _value(self, z: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        w, _ = self.split(theta)
        return data_loss(z, self.Y, self.Yf) + 0.5 * self.l2 * w.pow(2).sum((-1, -2))

    def value_and_grad(self, theta: torch.Tensor, z: torch.Tensor | None = None):
        if z is None:
            z = self.logits(theta)
        w, _ = self.split(theta)
        dz = _dlogits(z, self.Y, self.Yf) / self.n  # [L, P, n, K']
        if self.X.dim() == 3:
            gw = torch.einsum("lnd,lpnk->lpkd", self.X, dz)
        else:
            gw = torch.einsum("lpnd,lpnk->lpkd", self.X, dz)
        gw = gw + self.l2[..., None, None] * w
        gb = dz.sum(-2) if self.intercept else torch.zeros_like(dz[..., 0, :])
        if self.precondition is not None and (self._pinv is None or self._calls % 2 == 0):
            self._refresh(z)
        self._calls += 1
        g = torch.cat([gw, gb.unsqueeze(-1)], -1).flatten(-2)
        return self._value(z, theta), g, z

    def line_start(self, theta: torch.Tensor, z: torch.Tensor, delta: torch.Tensor):
        zd = self.logits(delta)
        w, _ = self.split(theta)
        dw, _ = self.split(delta)
        reg = (w.pow(2).sum((-1, -2)), (w * dw).sum((-1, -2)), dw.pow(2).sum((-1, -2)))
        return z, zd, reg

    def line_value(self, ls, t: torch.Tensor) -> torch.Tensor:
        z, zd, (ww, wd, dd) = ls
        reg = 0.5 * self.l2 * (ww + 2 * t * wd + t * t * dd)
        return data_loss(z + t[..., None, None] * zd, self.Y, self.Yf) + reg

    @staticmethod
    def line_state(ls, t: torch.Tensor) -> torch.Tensor:
        z, zd, _ = ls
        return z + t[..., None, None] * zd


@dataclass
class LogisticFit:
    weight: torch.Tensor  # [L, P, K', d]
    bias: torch.Tensor  # [L, P, K']
    converged: torch.Tensor  # [L, P]
    iterations: int
    curves: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [L, P, T]


def _broadcast_problems(Y: torch.Tensor, l2, L: int) -> tuple[torch.Tensor, torch.Tensor]:
    if Y.dim() == 1:
        Y = Y.unsqueeze(0)
    P = Y.shape[-2]
    Y = Y.expand(L, P, Y.shape[-1]) if Y.dim() == 2 else Y
    l2t = torch.as_tensor(l2, dtype=torch.float64)
    if l2t.dim() == 0:
        l2t = l2t.expand(P)
    l2t = l2t.expand(L, P) if l2t.dim() == 1 else l2t
    return Y, l2t


def fit_logistic(X: torch.Tensor, Y: torch.Tensor, *, n_classes: int, l2=1e-3,
                 intercept: bool = True, max_iter: int = 500, tol: float = 1e-5,
                 memory: int = 10, monitor: tuple[torch.Tensor, torch.Tensor] | None = None,
                 dtype: torch.dtype | None = None, precondition: bool = True) -> LogisticFit:
    """Fit every (layer, problem) logistic regression together.

    ``X [L, n, d]`` (or ``[L, P, n, d]``), ``Y [n]`` / ``[P, n]`` / ``[L, P, n]`` class indices,
    ``l2`` scalar / ``[P]`` / ``[L, P]``. ``monitor=(X_eval, Y_eval)`` records loss and accuracy
    on held-out rows at every iteration (``curves``: train_loss, train_acc, eval_loss,
    eval_acc, each ``[L, P, T]``). ``dtype`` (default: X's) is the compute precision.
    ``precondition`` rotates each layer into the eigenbasis of its Gram matrix (one ``d x d``
    eigendecomposition per layer) and seeds L-BFGS with the inverse diagonal of the Hessian
    there, which cuts iterations several-fold on correlated activations.
    """
    dtype = dtype or X.dtype
    X = X.to(dtype)
    L = X.shape[0]
    k = n_logits(n_classes)
    Y, l2t = _broadcast_problems(Y.long().to(X.device), l2, L)
    obj = _Objective(X, Y, l2t.to(dtype=dtype, device=X.device), k, intercept)
    P = Y.shape[1]
    V = None
    if X.dim() == 3 and precondition:
        # rotate each layer into the eigenbasis of its Gram matrix (L2 is rotation invariant)
        _, V = _eigh(X.transpose(-1, -2) @ X / X.shape[-2])  # [L, d, d]
        X = X @ V
        obj = _Objective(X, Y, l2t.to(dtype=dtype, device=X.device), k, intercept)
        obj.use_diagonal_preconditioner()
    theta0 = torch.zeros(L, P, k * (X.shape[-1] + 1), dtype=dtype, device=X.device)
    curves: dict[str, list[torch.Tensor]] = {"train_loss": [], "train_acc": []}
    if monitor is not None:
        Xm = monitor[0].to(dtype)
        Xm = Xm @ V if V is not None else Xm
        Ym, _ = _broadcast_problems(monitor[1].long().to(X.device), 0.0, L)
        curves.update(eval_loss=[], eval_acc=[])

    def record(_it: int, theta: torch.Tensor, z: torch.Tensor | None = None) -> None:
        w, b = obj.split(theta)
        if z is None:
            z = linear_logits(X, w, b)
        curves["train_loss"].append(data_loss(z, Y))
        curves["train_acc"].append((predict(z) == Y).to(dtype).mean(-1))
        if monitor is not None:
            zm = linear_logits(Xm, w, b)
            curves["eval_loss"].append(data_loss(zm, Ym))
            curves["eval_acc"].append((predict(zm) == Ym).to(dtype).mean(-1))

    record(0, theta0)
    res = lbfgs.minimize(obj, theta0, max_iter=max_iter, tol=tol, memory=memory,
                         callback=record)
    w, b = obj.split(res.theta)
    if V is not None:
        w = torch.einsum("lpke,lde->lpkd", w, V)
    return LogisticFit(weight=w.contiguous(), bias=b.contiguous(), converged=res.converged,
                       iterations=res.iterations,
                       curves={k2: torch.stack(v, -1) for k2, v in curves.items()})
