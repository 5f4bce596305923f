"""Batched limited-memory BFGS for many independent smooth problems at once.

Problems are the leading dimensions of the parameter tensor ``theta [*B, M]``; the objective
returns one value per problem. Each problem keeps its own curvature memory, step size and
convergence flag, so a sweep over layers, labels and regularisation strengths runs as one
computation whose cost per iteration is a few batched matrix products.

The line search exploits objectives whose expensive part is linear in ``theta`` (logits of
linear models): trying another step size then costs no matrix product.

Objectives with a ``[L, P]`` batch (layers x problems) that implement ``restrict`` have their
converged problems dropped from the batch as the run goes: a layer whose problems have all
converged leaves, and each layer's remaining problems are packed to the front, so the
products shrink with the work left (see :class:`Packing`).
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
    steps: torch.Tensor | None = None  # [*B] iterations each problem ran
    stalled: torch.Tensor | None = None  # [*B] bool: stopped short of tol (see stall_after)


@dataclass
class Packing:
    """Where the rows of a packed ``[L', P']`` batch live in the full ``[L, P]`` one:
    ``layers [L']`` and ``problems [L', P']`` (padding slots repeat a finished problem)."""

    layers: torch.Tensor
    problems: torch.Tensor

    def scatter(self, full: torch.Tensor, part: torch.Tensor) -> None:
        """Write ``part [L', P', ...]`` into ``full [L, P, ...]`` in place."""
        if part is full:  # nothing packed or moved yet: the batch is the full one
            return
        full[self.layers[:, None], self.problems] = part


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(-1)


def _pack(done: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Indices (into the current ``[L', P']`` batch) of a smaller batch holding every problem
    that is not done, or None when packing would not shrink it."""
    active = ~done
    per_layer = active.sum(1)
    keep_l = torch.nonzero(per_layer > 0).flatten()
    width = int(per_layer.max()) if keep_l.numel() else 0
    if keep_l.numel() == done.shape[0] and width > 0.7 * done.shape[1]:
        return None  # not worth copying the state for
    # stable order: active problems first, then finished ones as padding
    order = torch.argsort((~active[keep_l]).to(torch.int8), dim=1, stable=True)
    return keep_l, order[:, :width]


def _take(t: torch.Tensor, li: torch.Tensor, pi: torch.Tensor, lead: int = 0) -> torch.Tensor:
    """``t [*lead, L, P, ...] -> [*lead, L', P', ...]`` at layers ``li`` and problems ``pi``."""
    t = t.index_select(lead, li)
    idx = pi.reshape(*([1] * lead), *pi.shape, *([1] * (t.dim() - lead - 2)))
    idx = idx.expand(*t.shape[:lead], *pi.shape, *t.shape[lead + 2:])
    return t.gather(lead + 1, idx)


def minimize(objective: object, theta0: torch.Tensor, *, max_iter: int = 500,
             tol: float = 1e-5, memory: int = 10, c1: float = 1e-4, max_backtrack: int = 30,
             callback: Callable[..., None] | None = None,
             compact: bool = True, stall_after: int | None = None) -> LbfgsResult:
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
    A problem stops once ``max|g| < tol``. An objective solved in another basis than the one
    its tolerance refers to may provide ``screen(g) -> [*B]``, a lower bound of the largest
    entry there, and ``confirm(theta, g, candidates, tol) -> bool mask``, which decides for
    the problems whose bound is below ``tol``. The loop stops when all have.
    With ``stall_after``, a problem whose gradient (its ``screen``, where it has one) has not
    fallen below 0.9 of its smallest value so far for that many iterations stops, marked
    ``stalled``: rounding in the working precision then sets a floor above ``tol``.
    With ``compact`` and an objective that implements ``restrict(layers, problems)`` (batch
    ``[L, P]``), finished problems leave the batch. ``callback(iteration, theta, state,
    packing)`` runs after every iteration (training curves) on the current, possibly packed
    batch; ``packing`` (:class:`Packing`) says where its rows belong.
    """
    theta_full = theta0.clone()
    theta = theta_full
    f, g, state = objective.value_and_grad(theta)
    batch = theta.shape[:-1]
    can_pack = compact and hasattr(objective, "restrict") and len(batch) == 2
    layers = torch.arange(batch[0], device=theta.device) if can_pack else None
    probs = (torch.arange(batch[1], device=theta.device).expand(batch).clone()
             if can_pack else None)
    S = torch.zeros((memory, *theta.shape), dtype=theta.dtype, device=theta.device)
    Y = torch.zeros_like(S)
    rho = torch.zeros((memory, *batch), dtype=theta.dtype, device=theta.device)
    gamma = torch.ones(batch, dtype=theta.dtype, device=theta.device)
    best = _measure(objective, g)  # smallest gradient so far (see stall_after)
    done = _converged(objective, theta, g, best, tol, torch.zeros(batch, dtype=torch.bool,
                                                                  device=theta.device))
    done_full = done.clone()
    g_full = g.abs().amax(-1)
    steps_full = torch.zeros(batch, dtype=torch.long, device=theta.device)
    steps = steps_full.clone()
    since = torch.zeros(batch, dtype=torch.long, device=theta.device)
    stalled = torch.zeros(batch, dtype=torch.bool, device=theta.device)
    stalled_full = stalled.clone()
    it = 0
    head = 0
    for it in range(1, max_iter + 1):
        if bool(done.all()):
            it -= 1
            break
        if can_pack:
            packed = _pack(done)
            if packed is not None:
                li, pi = packed
                pk = Packing(layers, probs)
                pk.scatter(theta_full, theta)
                pk.scatter(done_full, done)
                pk.scatter(g_full, g.abs().amax(-1))
                pk.scatter(steps_full, steps)
                pk.scatter(stalled_full, stalled)
                steps, stalled = _take(steps, li, pi), _take(stalled, li, pi)
                best, since = _take(best, li, pi), _take(since, li, pi)
                objective = objective.restrict(li, pi)
                theta, g, f = _take(theta, li, pi), _take(g, li, pi), _take(f, li, pi)
                done, gamma = _take(done, li, pi), _take(gamma, li, pi)
                S, Y, rho = _take(S, li, pi, 1), _take(Y, li, pi, 1), _take(rho, li, pi, 1)
                state = objective.take_state(state, li, pi)
                layers, probs = layers[li], _take(probs, li, pi)
        precond = getattr(objective, "precondition", None)
        scaled = bool(getattr(objective, "precondition_scaled", False))
        # two-loop recursion, newest pair first
        # (in-place updates and one dot-product kernel: these ~40 small operations are a
        # fifth of an iteration's cost when the problems are small)
        q = g.clone()
        alphas = []
        for j in range(memory):
            k = (head - 1 - j) % memory
            a = torch.linalg.vecdot(S[k], q).mul_(rho[k]).unsqueeze_(-1)
            q.sub_(Y[k] * a)
            alphas.append((k, a))
        r = gamma.unsqueeze(-1) * (precond(q) if precond is not None else q)
        for k, a in reversed(alphas):
            b = torch.linalg.vecdot(Y[k], r).mul_(rho[k]).unsqueeze_(-1)
            r.addcmul_(S[k], a.sub_(b))
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
        f_line = None  # the objective at the accepted steps, when every problem accepted
        for _ in range(max_backtrack):
            ft = objective.line_value(ls, t)
            ok = (ft <= f + c1 * t * slope) & torch.isfinite(ft)
            accepted = accepted | ok
            if bool(accepted.all()):
                f_line = torch.where(done, f, ft)
                break
            t = torch.where(accepted, t, t * 0.5)
        s = t.unsqueeze(-1) * d
        theta = theta + s
        state = objective.line_state(ls, t)
        if f_line is not None and getattr(objective, "reuses_line_value", False):
            f_new, g_new, state = objective.value_and_grad(theta, state, f_line)
        else:
            f_new, g_new, state = objective.value_and_grad(theta, state)
        yv = g_new - g
        sy = _dot(s, yv)
        valid = (sy > 1e-12 * _dot(s, s).clamp_min(1e-30)) & ~done
        S[head] = torch.where(valid.unsqueeze(-1), s, torch.zeros_like(s))
        Y[head] = torch.where(valid.unsqueeze(-1), yv, torch.zeros_like(yv))
        rho[head] = torch.where(valid, 1.0 / sy.where(valid, torch.ones_like(sy)),
                                torch.zeros_like(sy))
        if not scaled:
            yMy = _dot(yv, precond(yv) if precond is not None else yv)
            gamma = torch.where(valid, sy / yMy.clamp_min(1e-30), gamma)
        head = (head + 1) % memory
        f, g = f_new, g_new
        was = done
        now = _measure(objective, g)
        done = _converged(objective, theta, g, now, tol, done)
        steps = torch.where(was, steps, it)
        if stall_after is not None:
            better = now < 0.9 * best
            best = torch.where(better, now, best)
            since = torch.where(better, 0, since + 1)
            stuck = (since >= stall_after) & ~done
            if bool(stuck.any()):
                stalled, done = stalled | stuck, done | stuck
        if callback is not None:
            callback(it, theta, state, Packing(layers, probs) if can_pack else None)
    if can_pack:
        pk = Packing(layers, probs)
        pk.scatter(theta_full, theta)
        pk.scatter(done_full, done)
        pk.scatter(g_full, g.abs().amax(-1))
        pk.scatter(steps_full, steps)
        pk.scatter(stalled_full, stalled)
        return LbfgsResult(theta=theta_full, converged=done_full & ~stalled_full,
                           iterations=it, grad_norm=g_full, steps=steps_full,
                           stalled=stalled_full)
    return LbfgsResult(theta=theta, converged=done & ~stalled, iterations=it,
                       grad_norm=g.abs().amax(-1), steps=steps, stalled=stalled)


def _measure(objective: object, g: torch.Tensor) -> torch.Tensor:
    screen = getattr(objective, "screen", None)
    return screen(g) if screen is not None else g.abs().amax(-1)


def _converged(objective: object, theta: torch.Tensor, g: torch.Tensor, measured: torch.Tensor,
               tol: float, done: torch.Tensor) -> torch.Tensor:
    """``done`` plus the problems whose gradient (``measured``: :func:`_measure`) is below
    ``tol`` and that the objective's ``confirm`` accepts, when it has one."""
    cand = (measured < tol) & ~done
    confirm = getattr(objective, "confirm", None)
    if confirm is not None and bool(cand.any()):
        cand = cand & confirm(theta, g, cand, tol)
    return done | cand
