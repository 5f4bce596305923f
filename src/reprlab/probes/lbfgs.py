"""Batched limited-memory BFGS for many independent smooth problems at once.

Problems are the leading dimensions of the parameter tensor ``theta [*B, M]``; the objective
returns one value per problem. Each problem keeps its own curvature memory, step size and
convergence flag, so a sweep over layers, labels and regularisation strengths runs as one
computation whose cost per iteration is a few batched matrix products.

The line search exploits objectives whose expensive part is linear in ``theta`` (logits of
linear models): trying another step size then costs no matrix product.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class LbfgsResult:
    theta: torch.Tensor  # [*B, M]
    converged: torch.Tensor  # [*B] bool
    iterations: int
    grad_norm: torch.Tensor  # [*B] max-abs gradient at the end
    history: dict[str, list[torch.Tensor]] = field(default_factory=dict)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(-1)


def minimize(objective: object, theta0: torch.Tensor, *, max_iter: int = 500,
             tol: float = 1e-5, memory: int = 10, c1: float = 1e-4, max_backtrack: int = 30,
             callback: Callable[[int, torch.Tensor, object], None] | None = None) -> LbfgsResult:
    """Minimise every problem in the batch.

    ``objective`` provides ``value_and_grad(theta, state=None) -> (f [*B], g [*B, M], state)``,
    ``line_start(theta, state, delta) -> ls`` (precomputes what the line search needs),
    ``line_value(ls, t [*B]) -> f [*B]`` (objective at ``theta + t * delta``) and
    ``line_state(ls, t) -> state`` (the state at the accepted step). Backtracking halves each
    problem's step until the Armijo condition holds. An optional
    ``precondition(q) -> M q`` (an approximate inverse Hessian) seeds the curvature model
    (scaled by ``s.y / y.My`` unless the objective sets ``precondition_scaled``: its
    preconditioner already carries the right scale); good preconditioners cut the iteration
    count several-fold.
    A problem stops once ``max|g| < tol``; the loop stops when all have.
    ``callback(iteration, theta, state)`` runs after every iteration (training curves).
    """
    theta = theta0.clone()
    precond = getattr(objective, "precondition", None)
    scaled = bool(getattr(objective, "precondition_scaled", False))
    f, g, state = objective.value_and_grad(theta)
    batch = theta.shape[:-1]
    S = torch.zeros((memory, *theta.shape), dtype=theta.dtype, device=theta.device)
    Y = torch.zeros_like(S)
    rho = torch.zeros((memory, *batch), dtype=theta.dtype, device=theta.device)
    gamma = torch.ones(batch, dtype=theta.dtype, device=theta.device)
    done = g.abs().amax(-1) < tol
    it = 0
    head = 0
    for it in range(1, max_iter + 1):
        if bool(done.all()):
            it -= 1
            break
        # two-loop recursion, newest pair first
        q = g.clone()
        alphas = []
        for j in range(memory):
            k = (head - 1 - j) % memory
            a = rho[k] * _dot(S[k], q)
            q = q - a.unsqueeze(-1) * Y[k]
            alphas.append((k, a))
        r = gamma.unsqueeze(-1) * (precond(q) if precond is not None else q)
        for k, a in reversed(alphas):
            b = rho[k] * _dot(Y[k], r)
            r = r + S[k] * (a - b).unsqueeze(-1)
        d = -r
        slope = _dot(g, d)
        bad = slope >= 0  # not a descent direction: fall back to steepest descent
        if bool(bad.any()):
            d = torch.where(bad.unsqueeze(-1), -g, d)
            slope = torch.where(bad, -_dot(g, g), slope)
        d = torch.where(done.unsqueeze(-1), torch.zeros_like(d), d)
        ls = objective.line_start(theta, state, d)
        t = torch.where(done, torch.zeros_like(f), torch.ones_like(f))
        accepted = done.clone()
        for _ in range(max_backtrack):
            ft = objective.line_value(ls, t)
            ok = (ft <= f + c1 * t * slope) & torch.isfinite(ft)
            accepted = accepted | ok
            if bool(accepted.all()):
                break
            t = torch.where(accepted, t, t * 0.5)
        s = t.unsqueeze(-1) * d
        theta = theta + s
        state = objective.line_state(ls, t)
        f_new, g_new, state = objective.value_and_grad(theta, state)
        yv = g_new - g
        sy = _dot(s, yv)
        valid = (sy > 1e-12 * _dot(s, s).clamp_min(1e-30)) & ~done
        S[head] = torch.where(valid.unsqueeze(-1), s, torch.zeros_like(s))
        Y[head] = torch.where(valid.unsqueeze(-1), yv, torch.zeros_like(yv))
        rho[head] = torch.where(valid, 1.0 / sy.where(valid, torch.ones_like(sy)),
                                torch.zeros_like(sy))
        yMy = _dot(yv, precond(yv) if precond is not None else yv)
        if not scaled:
            gamma = torch.where(valid, sy / yMy.clamp_min(1e-30), gamma)
        head = (head + 1) % memory
        f, g = f_new, g_new
        done = done | (g.abs().amax(-1) < tol)
        if callback is not None:
            callback(it, theta, state)
    return LbfgsResult(theta=theta, converged=done, iterations=it,
                       grad_norm=g.abs().amax(-1))
