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

from reprlab import _threads
from reprlab.probes import lbfgs
from reprlab.probes import precondition as P
from reprlab.probes.lbfgs import _take


def l2_from_C(C: float, n: int) -> float:
    """The ``l2`` of this module that matches scikit-learn's ``C`` on ``n`` training rows."""
    return 1.0 / (float(C) * int(n))


def n_logits(n_classes: int) -> int:
    return 1 if n_classes == 2 else n_classes


#: up to this many rows of weights a product runs as ``W X^T`` (about 2.5x faster in MKL on
#: skinny products), beyond it as ``X W^T`` (faster from 4 rows on)
FEW_ROWS = 3


def linear_logits(X: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``X [L, n, d]`` or ``[L, P, n, d]``, ``weight [L, P, K', d]``, ``bias [L, P, K']``
    -> logits ``[L, P, n, K']``."""
    if X.dim() == 3:
        L, P, K, d = weight.shape
        if P * K <= FEW_ROWS:  # stream X as W X^T
            z = torch.bmm(weight.reshape(L, P * K, d), X.transpose(1, 2))
            z = z.view(L, P, K, -1).transpose(-1, -2)
        else:
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


class _Objective:
    """Mean log-loss + L2 for every (layer, problem); theta ``[L, P, K'*(d+1)]``.

    ``pre``: an optional preconditioner (:mod:`reprlab.probes.precondition`), refreshed from
    the logits at every gradient; ``basis [L, d, r]``: the orthonormal basis ``X`` was rotated
    into, used to confirm convergence in the original coordinates. ``layers``: for layers
    too big for the caches (``fused``), which layers of ``X`` the batch holds: they are
    worked on one at a time, so packing never copies the rows."""

    def __init__(self, X: torch.Tensor, Y: torch.Tensor, l2: torch.Tensor, k: int,
                 intercept: bool, pre=None, basis: torch.Tensor | None = None,
                 layers: torch.Tensor | None = None) -> None:
        self.X, self.k, self.intercept = X, k, intercept
        self.d = X.shape[-1]
        self.n = X.shape[-2]
        self.Y = Y
        self.Yf = Y.to(X.dtype) if k == 1 else None
        self.l2 = l2  # [L, P]
        self.pre = pre
        self.basis = basis
        self.precondition = pre.apply if pre is not None else None
        self.precondition_scaled = pre is not None
        self.reuses_line_value = True  # line_value is exactly the objective (see lbfgs)
        # (on a GPU two large products beat thousands of small launches: CPU only)
        self.fused = (X.dim() == 3 and X.device.type == "cpu"
                      and X[0].numel() * X.element_size() >= FUSE_BYTES)
        self.layers = layers if self.fused else None
        self._unit: tuple[torch.Tensor, torch.Tensor] | None = None  # (state, X^T dz) at t=1
        self.gradients = 0  # evaluated so far (carried over by restrict)
        self.tol: float | None = None  # the stopping tolerance, set by the fit

    def restrict(self, li: torch.Tensor, pi: torch.Tensor) -> _Objective:
        """The same objective on layers ``li`` and, per layer, problems ``pi [L', P']``."""
        same = li.numel() == self.Y.shape[0]  # every layer stays (in order): keep X as is
        layers = None
        if self.fused:
            X, layers = self.X, self._layer_ids()[li]
        elif self.X.dim() == 3:
            X = self.X if same else self.X.index_select(0, li)
        else:
            X = _take(self.X, li, pi)
        pre = self.pre.take(li, pi) if self.pre is not None else None
        basis = self.basis if self.basis is None or same else self.basis.index_select(0, li)
        out = _Objective(X, _take(self.Y, li, pi), _take(self.l2, li, pi), self.k,
                         self.intercept, pre, basis, layers)
        out.gradients, out.tol = self.gradients, self.tol
        return out

    @staticmethod
    def take_state(z: torch.Tensor, li: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
        return _take(z, li, pi)

    def split(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = theta.view(*theta.shape[:-1], self.k, self.d + 1)
        return t[..., : self.d], t[..., self.d]

    def _layer_ids(self) -> torch.Tensor:
        if self.layers is None:
            return torch.arange(self.Y.shape[0], device=self.X.device)
        return self.layers

    def _rows(self, i: int) -> torch.Tensor:
        """The rows ``[n, d]`` of the batch's layer ``i`` (a view)."""
        return self.X[int(self.layers[i])] if self.layers is not None else self.X[i]

    def logits(self, theta: torch.Tensor) -> torch.Tensor:
        w, b = self.split(theta)
        if self.fused:
            return torch.cat([linear_logits(self._rows(i)[None], w[i:i + 1], b[i:i + 1])
                              for i in range(w.shape[0])])
        return linear_logits(self.X, w, b)

    def _value(self, z: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        w, _ = self.split(theta)
        return data_loss(z, self.Y, self.Yf) + 0.5 * self.l2 * w.pow(2).sum((-1, -2))

    def value_and_grad(self, theta: torch.Tensor, z: torch.Tensor | None = None,
                       f: torch.Tensor | None = None):
        """``f``: the objective at ``theta`` when the caller has it (the line search's value
        at the accepted step), which saves evaluating the loss again."""
        if z is None:
            z = self.logits(theta)
        w, _ = self.split(theta)
        p, dz = self._residual(z)
        unit, self._unit = self._unit, None
        if unit is not None and unit[0] is z:  # the line search's pass already made it
            gw = unit[1]
        elif self.fused:
            gw = torch.stack([torch.einsum("nd,pnk->pkd", self._rows(i), dz[i])
                              for i in range(dz.shape[0])])
        elif self.X.dim() == 3:
            gw = torch.einsum("lnd,lpnk->lpkd", self.X, dz)
        else:
            gw = torch.einsum("lpnd,lpnk->lpkd", self.X, dz)
        gw = gw + self.l2[..., None, None] * w
        gb = dz.sum(-2) if self.intercept else torch.zeros_like(dz[..., 0, :])
        g = torch.cat([gw, gb.unsqueeze(-1)], -1).flatten(-2)
        self.gradients += 1
        if self._newton_pays(g):
            self.pre = P.ExactNewton.build(self.X, p, self.l2, self.intercept) or self.pre
            self.precondition = self.pre.apply if self.pre is not None else None
            self.precondition_scaled = self.pre is not None
        if self.pre is not None:
            self.pre.refresh(p, self.l2)
        return (self._value(z, theta) if f is None else f), g, z

    def screen(self, g: torch.Tensor) -> torch.Tensor:
        """A lower bound of each problem's largest gradient entry in the original ``D``
        coordinates, where the tolerance applies. With a basis (rows rotated into their
        ``r``-dimensional row space) it is ``||g_w|| / sqrt(K D)``, since the rotation keeps
        the Euclidean norm. The largest rotated entry is no bound: it concentrates the norm
        on ``r`` coordinates, and with ``r << D`` its float32 rounding alone (the rotated rows
        are ``sqrt(D / r)`` times larger) stayed above tolerances the original coordinates
        met, so that such problems ran to the iteration cap."""
        if self.basis is None:
            return g.abs().amax(-1)
        gw, gb = self.split(g)
        norm = gw.pow(2).sum((-1, -2)).sqrt() / (self.k * self.basis.shape[-2]) ** 0.5
        return torch.maximum(norm, gb.abs().amax(-1))

    def confirm(self, theta: torch.Tensor, g: torch.Tensor, cand: torch.Tensor,
                tol: float) -> torch.Tensor:
        """Candidates (see :meth:`screen`) whose gradient is below the tolerance in the
        original coordinates. Those below it in the Euclidean norm, which bounds the largest
        entry, need no rotating back."""
        if self.basis is None:
            return cand
        gw, gb = self.split(g)
        need = cand & (gw.pow(2).sum((-1, -2)) >= tol * tol)
        if not bool(need.any()):
            return cand
        out = cand.clone()
        for i in torch.nonzero(need.any(1)).flatten().tolist():  # views of the basis: no copy
            largest = (gw[i] @ self.basis[i].T).abs().amax((-1, -2))  # [P, K, r] -> [P]
            out[i] = cand[i] & (torch.maximum(largest, gb[i].abs().amax(-1)) < tol)
        return out

    def _newton_pays(self, g: torch.Tensor) -> bool:
        """Whether to replace the model by the exact Hessians of the problems left
        (:class:`precondition.ExactNewton`): binary problems on a small basis, once the run
        has gone on for a while, every gradient is within ``NEWTON_NEAR`` times the
        tolerance (near the optimum, where the Hessian no longer changes much: built earlier,
        on separable data, it went stale and cost iterations), and building the Hessians
        costs less than the iterations so far (floating-point operations, plus the fixed cost
        of an iteration's ~500 small operations, which dominates for small problems). On the
        bundled probe workload it cuts the slow tail of the weakly regularised problems from
        53 iterations to 24."""
        if (isinstance(self.pre, P.ExactNewton) or self.k != 1 or self.X.dim() != 3
                or self.fused
                or self.gradients < NEWTON_AFTER or self.d + 1 > NEWTON_MAX_DIM
                or self.tol is None or float(g.abs().amax()) > NEWTON_NEAR * self.tol):
            return False
        L, n, r = self.X.shape
        count = L * self.l2.shape[1]
        hessians = count * (2.0 * n * (r + 1) ** 2 + (r + 1) ** 3 / 3)
        iteration = count * 4.0 * n * r + ITERATION_FLOPS
        return hessians <= self.gradients * iteration

    def _residual(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Probabilities and the gradient of the mean loss w.r.t. the logits."""
        p = torch.sigmoid(z) if self.k == 1 else torch.softmax(z, -1)
        if self.k == 1:
            return p, (p - self.Yf.unsqueeze(-1)) / self.n  # [L, P, n, K']
        return p, (p - F.one_hot(self.Y, self.k).to(z.dtype)) / self.n

    def line_start(self, theta: torch.Tensor, z: torch.Tensor, delta: torch.Tensor):
        w, _ = self.split(theta)
        dw, db = self.split(delta)
        reg = (w.pow(2).sum((-1, -2)), (w * dw).sum((-1, -2)), dw.pow(2).sum((-1, -2)))
        if not self.fused:
            return z, self.logits(delta), reg, None
        zd, gw = self._fused_pass(z, dw, db)
        return z, zd, reg, (gw, (delta == 0).all(-1))

    def _fused_pass(self, z: torch.Tensor, dw: torch.Tensor, db: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of the direction and, in the same sweep over the rows, the data gradient
        at the unit step ``theta + delta``: block by block, so that each block of ``X`` is
        read from memory once instead of twice (the usual step is the unit one). Each layer
        works on ``[P K, rows]`` copies of its logits and labels."""
        L, P, K, d = dw.shape
        n, PK = self.n, P * K
        zd = torch.empty_like(z)
        gw = torch.empty_like(dw, memory_format=torch.contiguous_format)
        block = max(8, FUSE_BLOCK // (d * self.X.element_size()))
        onehot = F.one_hot(self.Y, self.k).to(z.dtype) if self.k > 1 else None
        for li in range(L):
            rows = self._rows(li)
            wl = dw[li].reshape(PK, d)
            wt = wl.T.contiguous() if PK > FEW_ROWS else None  # else W X^T
            zl = z[li].transpose(1, 2).reshape(PK, n) + db[li].reshape(PK, 1)
            tl = (self.Yf[li] if self.k == 1 else onehot[li].transpose(1, 2)).reshape(PK, n)
            zdl = torch.empty(PK, n, dtype=z.dtype, device=z.device)
            gl = gw[li].view(PK, d).zero_()
            for s in range(0, n, block):
                xb = rows[s:s + block]  # [b, d]
                zdb = (xb @ wt).T if wt is not None else wl @ xb.T  # [P K, b]
                zdl[:, s:s + block] = zdb
                zt = zl[:, s:s + block] + zdb
                p = torch.sigmoid(zt) if K == 1 else torch.softmax(zt.view(P, K, -1), 1).view(
                    PK, -1)
                gl.addmm_(p.sub_(tl[:, s:s + block]), xb, alpha=1.0 / n)
            zd[li] = zdl.view(P, K, n).transpose(1, 2) + db[li].unsqueeze(1)
        return zd, gw

    def line_value(self, ls, t: torch.Tensor) -> torch.Tensor:
        z, zd, (ww, wd, dd), _ = ls
        reg = 0.5 * self.l2 * (ww + 2 * t * wd + t * t * dd)
        return data_loss(z + t[..., None, None] * zd, self.Y, self.Yf) + reg

    def line_state(self, ls, t: torch.Tensor) -> torch.Tensor:
        z, zd, _, unit = ls
        z_new = z + t[..., None, None] * zd
        if unit is not None and bool(((t == 1) | unit[1]).all()):
            self._unit = (z_new, unit[0])  # every problem took the unit step (or none)
        return z_new


@dataclass
class LogisticFit:
    weight: torch.Tensor  # [L, P, K', d]
    bias: torch.Tensor  # [L, P, K']
    converged: torch.Tensor  # [L, P]
    iterations: int
    curves: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [L, P, T]
    # preconditioner; steps and stalled [L, P] per problem; polished (float64 finishes)
    info: dict = field(default_factory=dict)


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


#: on the CPU, layers whose rows take at least this many bytes (more than a core's caches
#: hold) fuse the line search's product with the next gradient's, in blocks of about
#: ``FUSE_BLOCK`` bytes
FUSE_BYTES = 16 * 2**20
FUSE_BLOCK = 2**19

#: the exact-Hessian preconditioner: considered from this many gradients on, up to this many
#: coordinates, with an iteration's fixed cost counted as this many floating-point operations
#: (~1.5 ms of small operations at ~100 GFLOP/s)
NEWTON_AFTER = 10
NEWTON_NEAR = 100.0
NEWTON_MAX_DIM = 1025
ITERATION_FLOPS = 1.5e8

#: a problem whose gradient has not fallen below 0.9 of its smallest value for this many
#: iterations has stalled (:func:`fit_logistic`): soon where a float64 finish follows,
#: late where the stop is final; float64 finishes hold at most this many bytes of rows
STALL_AFTER = 20
STALL_FINAL = 100
POLISH_BYTES = 2**30

#: ``precondition="auto"`` rotates into the full eigenbasis up to this many columns
#: (``min(n, d)``), above it uses the low-rank model (:func:`precondition.top_eigen`)
EIGEN_MAX = 1024


@dataclass
class Prepared:
    """Features made ready for :func:`fit_logistic` once and reused by several fits:
    ``X`` in the solver's coordinates, the basis ``V [L, d, r]`` it was rotated by (or None)
    and what the preconditioner needs (see :func:`prepare`)."""

    kind: str
    X: torch.Tensor
    V: torch.Tensor | None = None
    parts: tuple = ()
    source: torch.Tensor | None = None  # the rows as given (for a float64 finish)
    rank: int | None = None

    def preconditioner(self, intercept: bool):
        if self.kind == "eigen":
            return P.EigenDiagonal(*self.parts[:1], intercept, *self.parts[1:])
        if self.kind == "lowrank":
            return P.LowRank(*self.parts, intercept)
        return None


def prepare(X: torch.Tensor, precondition: bool | str = "auto", rank: int | None = None,
            dtype: torch.dtype | None = None, threads: int | None = None) -> Prepared:
    """Rotate / factorise ``X [L, n, d]`` for ``precondition`` (see :func:`fit_logistic`)."""
    source, X = X, X.to(dtype or X.dtype)
    kind = _kind(precondition, X)
    if kind == "none":
        return Prepared(kind, X, source=source)
    L, n, d = X.shape
    # at the thread count the fit will take (see _product_flops): a fit that switched from
    # two threads for its set-up to one leaves the idle thread spinning, which cost 80% more
    # CPU on the bundled workload for no gain in wall time
    with _threads.for_work("matmul", _product_flops(L, n, min(n, d), 8), threads):
        if kind == "eigen" and n < d:  # solve in the n-dimensional row space
            Xr, lam, V = P.eigen_rotation(X)
            return Prepared(kind, Xr, V, (lam,), source)
        if kind == "eigen":  # the model rotates, the rows stay
            return Prepared(kind, X, None, P.eigen_basis(X), source)
        if kind == "lowrank":
            return Prepared(kind, X, None, P.top_eigen(X, rank or P.default_rank(d)), source,
                            rank)
    raise ValueError(f"unknown preconditioner {kind!r}: choose auto, eigen, lowrank or none")


def _product_flops(layers: int, rows: int, dims: int, columns: int) -> float:
    """Floating-point operations of one of the fit's batched products: what the thread
    policy sizes both the set-up and the iterations by."""
    return 2.0 * layers * rows * dims * columns


def _kind(precondition, X: torch.Tensor) -> str:
    if precondition is False or precondition is None or X.dim() == 4:
        return "none"
    if precondition is True or precondition == "auto":
        return "eigen" if min(X.shape[-2:]) <= EIGEN_MAX else "lowrank"
    return str(precondition)


def fit_logistic(X: torch.Tensor | Prepared, Y: torch.Tensor, *, n_classes: int, l2=1e-3,
                 intercept: bool = True, max_iter: int = 500, tol: float = 1e-5,
                 memory: int = 10, monitor: tuple[torch.Tensor, torch.Tensor] | None = None,
                 dtype: torch.dtype | None = None, precondition: bool | str = "auto",
                 rank: int | None = None, threads: int | None = None,
                 compact: bool = True,
                 init: tuple[torch.Tensor, torch.Tensor] | None = None,
                 polish: bool = True) -> LogisticFit:
    """Fit every (layer, problem) logistic regression together.

    ``X [L, n, d]`` (or ``[L, P, n, d]``), ``Y [n]`` / ``[P, n]`` / ``[L, P, n]`` class indices,
    ``l2`` scalar / ``[P]`` / ``[L, P]``. ``monitor=(X_eval, Y_eval)`` records loss and accuracy
    on held-out rows at every iteration (``curves``: train_loss, train_acc, eval_loss,
    eval_acc, each ``[L, P, T]``; a problem's values stay flat once it has converged).
    ``dtype`` (default: X's) is the compute precision. A problem whose gradient stops
    falling short of ``tol`` (for ``STALL_AFTER`` iterations) has met the floor that rounding
    sets; with ``polish`` (and a precision below float64) its layer's problems are finished
    in float64 from where they stopped, a layer's rows at a time (``info["polished"]``
    counts them; training curves end where they stopped). Otherwise, after
    ``STALL_FINAL`` iterations, it stops unconverged (``info["stalled"] [L, P]``).

    A problem has converged when the largest absolute entry of its gradient (weights and
    intercept, in the coordinates of ``X``) is below ``tol`` - scikit-learn's lbfgs rule on
    the same objective (:func:`l2_from_C`). With shared features (``X [L, n, d]``)
    ``precondition`` chooses the inverse-Hessian model that seeds L-BFGS
    (:mod:`reprlab.probes.precondition`): ``"eigen"`` models the Hessian in the eigenbasis
    of each layer's Gram matrix (solving in the row space when ``n < d``), ``"lowrank"`` keeps the
    top ``rank`` eigenpairs, ``"auto"`` (or True) picks eigen up to ``EIGEN_MAX`` columns,
    ``"none"``/False plain L-BFGS. ``compact`` drops converged problems from the batch.
    ``threads``: torch threads (default: :func:`reprlab._threads.choose` for the size of one
    product). ``X`` may be a :class:`Prepared` (:func:`prepare`) shared by several fits on
    the same rows; ``precondition``, ``rank`` and ``dtype`` are then its. ``init=(weight
    [L, P, K', d], bias [L, P, K'])`` starts from a previous solution (warm start).
    """
    prep = X if isinstance(X, Prepared) else prepare(X, precondition, rank, dtype, threads)
    Xr = prep.X
    dtype = Xr.dtype
    L, n, r = Xr.shape[0], Xr.shape[-2], Xr.shape[-1]
    k = n_logits(n_classes)
    Y, l2t = _broadcast_problems(Y.long().to(Xr.device), l2, L)
    P_ = Y.shape[1]
    flops = _product_flops(L, n, r, P_ if Xr.dim() == 4 else max(P_ * k, 8))
    with _threads.for_work("matmul", flops, threads), torch.inference_mode():
        finish = polish and dtype != torch.float64 and prep.source is not None
        fit = _fit(prep, Y, l2t.to(dtype=dtype, device=Xr.device), k, intercept, max_iter,
                   tol, memory, monitor, compact, init,
                   STALL_AFTER if finish else STALL_FINAL)
        if finish and bool(fit.info["stalled"].any()):
            fit = _polish(fit, prep, Y, l2t, k, intercept, max_iter, tol, memory, compact)
    # inference mode skips autograd's bookkeeping on the ~500 small operations of an
    # iteration (about 10% of a fit); the results leave it as ordinary tensors
    return LogisticFit(fit.weight.clone(), fit.bias.clone(), fit.converged.clone(),
                       fit.iterations, {k2: v.clone() for k2, v in fit.curves.items()},
                       {k2: v.clone() if torch.is_tensor(v) else v for k2, v in fit.info.items()})


def _fit(prep: Prepared, Y, l2t, k, intercept, max_iter, tol, memory, monitor,
         compact, init, stall_after: int) -> LogisticFit:
    Xr, V = prep.X, prep.V
    dtype = Xr.dtype
    L, P_ = Y.shape[0], Y.shape[1]
    obj = _Objective(Xr, Y, l2t, k, intercept, prep.preconditioner(intercept), V)
    obj.tol = tol
    r = Xr.shape[-1]
    theta0 = torch.zeros(L, P_, k * (r + 1), dtype=dtype, device=Xr.device)
    if init is not None:  # warm start from weights in the original coordinates
        w0, b0 = (t.to(dtype=dtype, device=Xr.device) for t in init)
        if V is not None:
            w0 = torch.einsum("lpkd,ldr->lpkr", w0, V)
        theta0 = torch.cat([w0.expand(L, P_, k, r), b0.expand(L, P_, k).unsqueeze(-1)],
                           -1).flatten(-2).contiguous()
    names = ["train_loss", "train_acc"]
    Xm = Ym = None
    if monitor is not None:
        Xm = monitor[0].to(dtype)
        Xm = Xm @ V if V is not None else Xm
        Ym, _ = _broadcast_problems(monitor[1].long().to(Xr.device), 0.0, L)
        Ym = Ym.expand(L, P_, Ym.shape[-1])
        names += ["eval_loss", "eval_acc"]
    curves: dict[str, list[torch.Tensor]] = {name: [] for name in names}

    def measure(theta, z, Yt, Xe, Ye):
        w, b = obj.split(theta)
        if z is None:
            z = linear_logits(Xr, w, b)
        out = [data_loss(z, Yt), (predict(z) == Yt).to(dtype).mean(-1)]
        if Xe is not None:
            zm = linear_logits(Xe, w, b)
            out += [data_loss(zm, Ye), (predict(zm) == Ye).to(dtype).mean(-1)]
        return out

    seen: dict[str, torch.Tensor] = {}

    def eval_rows(li: torch.Tensor) -> torch.Tensor | None:
        """The monitored rows of layers ``li`` (selected again only when the packing changes)."""
        if Xm is None:
            return None
        if "li" not in seen or not torch.equal(seen["li"], li):
            seen["li"], seen["X"] = li, Xm.index_select(0, li)
        return seen["X"]

    def record(_it: int, theta: torch.Tensor, z: torch.Tensor | None = None,
               where: lbfgs.Packing | None = None) -> None:
        if where is None:
            vals = measure(theta, z, Y, Xm, Ym)
            for name, v in zip(names, vals, strict=True):
                curves[name].append(v)
            return
        li, pi = where.layers, where.problems
        vals = measure(theta, z, _take(Y, li, pi), eval_rows(li),
                       _take(Ym, li, pi) if Ym is not None else None)
        for name, v in zip(names, vals, strict=True):
            full = curves[name][-1].clone()
            where.scatter(full, v)
            curves[name].append(full)

    if monitor is not None:
        record(0, theta0)
    res = lbfgs.minimize(obj, theta0, max_iter=max_iter, tol=tol, memory=memory,
                         callback=record if monitor is not None else None, compact=compact,
                         stall_after=stall_after)
    w, b = obj.split(res.theta)
    if V is not None:
        w = torch.einsum("lpke,lde->lpkd", w, V)
    info = {"preconditioner": prep.kind, "steps": res.steps, "stalled": res.stalled}
    return LogisticFit(weight=w.contiguous(), bias=b.contiguous(), converged=res.converged,
                       iterations=res.iterations,
                       curves={k2: torch.stack(v, -1) for k2, v in curves.items() if v}, info=info)


def _polish(fit: LogisticFit, prep: Prepared, Y, l2t, k, intercept, max_iter, tol, memory,
            compact) -> LogisticFit:
    """Finish in float64 the layers with stalled problems (see :func:`fit_logistic`), from
    the stalled solutions, with the basis or model prepared again in float64 from the rows
    as given; at most ``POLISH_BYTES`` of float64 rows at a time."""
    layers = torch.nonzero(fit.info["stalled"].any(1)).flatten()
    n, d = prep.source.shape[-2:]
    chunk = max(1, POLISH_BYTES // (8 * n * d))
    weight, bias, conv = fit.weight.clone(), fit.bias.clone(), fit.converged.clone()
    steps, stalled = fit.info["steps"].clone(), fit.info["stalled"].clone()
    iterations = fit.iterations
    for s in range(0, len(layers), chunk):
        li = layers[s:s + chunk].to(prep.source.device)
        sub = prepare(prep.source.index_select(0, li), prep.kind, prep.rank, torch.float64)
        out = _fit(sub, Y.index_select(0, li), l2t.index_select(0, li).to(
            dtype=torch.float64, device=sub.X.device), k, intercept, max_iter, tol, memory, None,
            compact, (weight[li], bias[li]), STALL_FINAL)
        weight[li], bias[li] = out.weight.to(weight.dtype), out.bias.to(bias.dtype)
        conv[li], stalled[li] = out.converged, out.info["stalled"]
        steps[li] += out.info["steps"]
        iterations += out.iterations
    info = dict(fit.info, steps=steps, stalled=stalled,
                polished=int(fit.info["stalled"].sum()))
    return LogisticFit(weight, bias, conv, iterations, fit.curves, info)
