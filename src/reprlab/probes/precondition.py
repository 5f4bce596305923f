"""Bases and preconditioners for batched L2 logistic regression on shared features.

Every problem of a layer shares that layer's rows ``X [n, d]``, so one factorisation of its
Gram matrix ``G = X^T X / n`` serves all of them. The Hessian of a problem is
``X^T S X / n + l2 I`` with ``S = diag(p (1 - p))``; modelling ``S`` by its mean ``s``
(recomputed from the current probabilities at every gradient, at no matrix product) gives the
inverse-Hessian model ``(s G + l2 I)^-1``, which is exact when ``S`` is constant.

Three ways to apply it:

- :func:`eigen_basis` + :class:`EigenDiagonal` with ``V``: one symmetric eigendecomposition
  of ``G`` per layer; the model ``1 / (s lambda_j + l2)`` is diagonal in the eigenbasis and is
  applied as ``V diag V^T``, so the rows stay in their own coordinates.
- :func:`eigen_rotation` + :class:`EigenDiagonal`: when ``n < d``, rotate ``X`` into the
  ``n``-dimensional row space (from the ``n x n`` kernel) and solve there exactly, since an
  L2-penalised solution lies in it; the model is then diagonal.
- :func:`top_eigen` + :class:`LowRank`: for wide layers where a full eigendecomposition
  costs more than the fit, the top ``k`` eigenpairs from randomised subspace iteration and
  one scalar for the rest of the spectrum (the ``k``-th eigenvalue, as in randomised Nystrom
  preconditioning, Frangella, Tropp & Udell 2023).

Near the optimum, :class:`ExactNewton` replaces the model by each remaining problem's exact
Hessian when that pays (small bases; see ``logistic._Objective._newton_pays``).
"""

from __future__ import annotations

import torch

from reprlab import _threads
from reprlab.probes.lbfgs import _take


def _eigh(G: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if G.device.type != "cpu":
        return torch.linalg.eigh(G)
    with _threads.for_work("eigh", flops=4.0 * G.shape[-1] ** 3 * max(1, G.shape[0])):
        return torch.linalg.eigh(G)


def eigen_rotation(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``X [L, n, d]`` -> ``(X V [L, n, r], lambda [L, r], V [L, d, r])`` with ``V``
    orthonormal eigenvectors of ``X^T X / n`` and ``r = min(n, d)``.

    With fewer rows than columns the eigenvectors come from the ``n x n`` kernel ``X X^T / n``
    (``V = X^T U / sqrt(n mu)``), so the cost is that of the smaller side; directions of zero
    variance get a zero column (their weight stays zero under L2)."""
    L, n, d = X.shape
    if n < d:
        mu, U = _eigh(X @ X.transpose(-1, -2) / n)  # [L, n], [L, n, n]
        keep = mu > mu.amax(-1, keepdim=True).clamp_min(1e-30) * (n * torch.finfo(X.dtype).eps)
        mu = torch.where(keep, mu, torch.zeros_like(mu))
        root = (n * mu).sqrt()
        inv = torch.where(keep, 1.0 / root.clamp_min(1e-30), torch.zeros_like(root))
        V = (X.transpose(-1, -2) @ U) * inv[:, None, :]
        return U * root[:, None, :], mu, V
    lam, V = eigen_basis(X)
    return X @ V, lam, V


def eigen_basis(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues ``[L, d]`` and orthonormal eigenvectors ``[L, d, d]`` of ``X^T X / n``."""
    lam, V = _eigh(X.transpose(-1, -2) @ X / X.shape[-2])
    return lam.clamp_min(0.0), V


def top_eigen(X: torch.Tensor, k: int, *, iters: int = 2, oversample: int = 16,
              seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-``k`` eigenpairs of ``G = X^T X / n`` for every layer by randomised subspace
    iteration: ``(U [L, d, k], lambda [L, k], tail [L])`` where ``tail``, the scale of the
    other ``d - k`` directions, is the ``k``-th eigenvalue: an upper bound of theirs, so the
    model never overshoots along a direction it does not resolve and the unit step is taken
    (with the mean of the rest, about 11x smaller on a 1/i spectrum, L-BFGS backtracked at
    nearly every iteration and needed 30% more of them). Costs ``2 (iters + 1)`` products of
    ``X`` with ``k + oversample`` columns per layer."""
    L, n, d = X.shape
    m = min(d, k + oversample)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    Q = torch.randn(d, m, generator=gen, dtype=X.dtype).to(X.device).expand(L, d, m)
    Q = torch.linalg.qr(Q).Q
    def gram_times(Q: torch.Tensor) -> torch.Tensor:  # G Q, as ((X Q)^T X)^T: 25% faster
        return ((X @ Q).transpose(-1, -2) @ X).transpose(-1, -2) / n

    for _ in range(iters):
        Q = torch.linalg.qr(gram_times(Q)).Q
    GQ = gram_times(Q)
    lam, W = _eigh(Q.transpose(-1, -2) @ GQ)  # ascending
    lam, W = lam.flip(-1)[..., :k].clamp_min(0.0), W.flip(-1)[..., :k]
    U = Q @ W
    return U, lam, lam[..., -1].clone()


def _curvature(p: torch.Tensor) -> torch.Tensor:
    """Mean ``p (1 - p)`` over rows per logit: probabilities ``[L, P, n, K'] -> [L, P, K']``."""
    return (p * (1 - p)).mean(-2)


class EigenDiagonal:
    """``1 / (s lambda_j + l2)`` for weights in the eigenbasis, ``1 / s`` for intercepts.

    With ``V [L, d, d]`` the problem stays in its own coordinates and the model is applied as
    ``V diag V^T`` (two small products per iteration, cheaper than rotating the rows and
    checking convergence back in the original coordinates); without, the rows were rotated
    (:func:`eigen_rotation`)."""

    def __init__(self, lam: torch.Tensor, intercept: bool, V: torch.Tensor | None = None
                 ) -> None:
        self.lam, self.intercept, self.V = lam, intercept, V  # [L, r], [L, d, r]
        self.pinv: torch.Tensor | None = None

    def refresh(self, p: torch.Tensor, l2: torch.Tensor) -> None:
        """``p``: current probabilities ``[L, P, n, K']`` (sigmoid or softmax of the logits)."""
        s = _curvature(p).clamp_min(1e-12)  # [L, P, K']
        diag = s[..., None] * self.lam[:, None, None, :] + l2[..., None, None]
        bias = s if self.intercept else torch.ones_like(s)
        self.pinv = torch.cat([1.0 / diag, (1.0 / bias).unsqueeze(-1)], -1).flatten(-2)

    def apply(self, q: torch.Tensor) -> torch.Tensor:
        if self.V is None:
            return q * self.pinv
        d = self.V.shape[1]
        qq = q.view(*q.shape[:-1], -1, d + 1)
        w = torch.einsum("ldr,lpkd->lpkr", self.V, qq[..., :d])
        qq = torch.cat([w, qq[..., d:]], -1).flatten(-2) * self.pinv
        qq = qq.view(*q.shape[:-1], -1, d + 1)
        w = torch.einsum("ldr,lpkr->lpkd", self.V, qq[..., :d])
        return torch.cat([w, qq[..., d:]], -1).flatten(-2)

    def take(self, li: torch.Tensor, pi: torch.Tensor) -> EigenDiagonal:
        same = li.numel() == self.lam.shape[0]
        out = EigenDiagonal(self.lam if same else self.lam.index_select(0, li), self.intercept,
                            self.V if same or self.V is None else self.V.index_select(0, li))
        out.pinv = _take(self.pinv, li, pi) if self.pinv is not None else None
        return out


class ExactNewton:
    """The inverse of each problem's exact Hessian at one point, ``(X^T S X / n + l2 I)^-1``
    with the intercept, by Cholesky factors ``[L, P, r+1, r+1]``: a fixed model that L-BFGS
    refines, for the last iterations of problems on a small basis (see
    ``logistic._Objective._newton_pays``)."""

    def __init__(self, chol: torch.Tensor) -> None:
        self.chol = chol

    @classmethod
    def build(cls, X: torch.Tensor, p: torch.Tensor, l2: torch.Tensor, intercept: bool
              ) -> ExactNewton | None:
        """From rows ``X [L, n, r]`` and probabilities ``p [L, P, n, 1]``; None when a
        factorisation fails (the caller keeps its model)."""
        L, n, r = X.shape
        col = torch.ones if intercept else torch.zeros
        Xa = torch.cat([X, col(L, n, 1, dtype=X.dtype, device=X.device)], -1)
        w = (p * (1 - p))[..., 0] / n  # [L, P, n]
        H = torch.einsum("lnr,lpn,lns->lprs", Xa, w, Xa)
        # the penalty on the weights; the intercept's own curvature (1 when there is none)
        last = torch.full_like(l2[..., None], 1e-12 if intercept else 1.0)
        H = H + torch.diag_embed(torch.cat([l2[..., None].expand(*l2.shape, r), last], -1))
        chol, info = torch.linalg.cholesky_ex(H)
        return cls(chol) if not bool(info.any()) else None

    def refresh(self, p: torch.Tensor, l2: torch.Tensor) -> None:
        """Fixed: built once."""

    def apply(self, q: torch.Tensor) -> torch.Tensor:
        return torch.cholesky_solve(q.unsqueeze(-1), self.chol).squeeze(-1)

    def take(self, li: torch.Tensor, pi: torch.Tensor) -> ExactNewton:
        return ExactNewton(_take(self.chol, li, pi))


class LowRank:
    """``U diag(1 / (s lambda + l2)) U^T + (I - U U^T) / (s tail + l2)`` for the weights of
    each logit, ``1 / s`` for intercepts."""

    def __init__(self, U: torch.Tensor, lam: torch.Tensor, tail: torch.Tensor,
                 intercept: bool) -> None:
        self.U, self.lam, self.tail, self.intercept = U, lam, tail, intercept
        self.a = self.t = self.b = None

    def refresh(self, p: torch.Tensor, l2: torch.Tensor) -> None:
        """``p``: current probabilities ``[L, P, n, K']`` (sigmoid or softmax of the logits)."""
        s = _curvature(p).clamp_min(1e-12)  # [L, P, K']
        self.a = 1.0 / (s[..., None] * self.lam[:, None, None, :] + l2[..., None, None])
        self.t = 1.0 / (s * self.tail[:, None, None] + l2[..., None])
        self.b = 1.0 / s if self.intercept else torch.ones_like(s)

    def apply(self, q: torch.Tensor) -> torch.Tensor:
        d = self.U.shape[1]
        qq = q.view(*q.shape[:-1], -1, d + 1)
        w, b = qq[..., :d], qq[..., d]
        c = torch.einsum("ldk,lpjd->lpjk", self.U, w)
        out = self.t[..., None] * w + torch.einsum("ldk,lpjk->lpjd", self.U,
                                                   (self.a - self.t[..., None]) * c)
        return torch.cat([out, (self.b * b).unsqueeze(-1)], -1).flatten(-2)

    def take(self, li: torch.Tensor, pi: torch.Tensor) -> LowRank:
        out = LowRank(self.U.index_select(0, li), self.lam.index_select(0, li),
                      self.tail.index_select(0, li), self.intercept)
        if self.a is not None:
            out.a, out.t, out.b = _take(self.a, li, pi), _take(self.t, li, pi), _take(
                self.b, li, pi)
        return out


def default_rank(d: int) -> int:
    """Rank of the low-rank preconditioner for ``d`` features: 64 (on 4,096-dim synthetic
    layers with a 1/i spectrum, ranks 64 to 512 needed the same 30-39 iterations while the
    set-up cost grew four-fold)."""
    return int(min(d, 64))
