"""Direction estimators: pure torch functions from activations to one direction per site.

Every estimator takes the positive and negative activations of a site (``[n, d]`` each; for
contrast pairs row ``i`` of both is pair ``i``) and returns a direction ``[d]``. Estimators are
kept in the :data:`METHODS` registry. Conventions follow the tools users compare against:

- ``mean-diff``: mean of ``positive - negative`` (CAA, Rimsky et al. 2024; the steering-vectors
  ``mean_aggregator``). Its norm is the raw scale recorded with every steering vector.
- ``pca-diff``: first principal component of the pair differences, centred as scikit-learn's
  ``PCA`` centres them (repeng ``pca_diff``).
- ``pca-center``: first principal component of pair-centred activations, i.e. of
  ``±(positive - negative) / 2`` (repeng ``pca_center``; the same direction as the uncentred
  PCA of differences that steering-vectors' ``pca_aggregator`` computes). Alias ``pca``.
- ``logistic``: L2-regularised logistic regression without intercept on pair-centred
  activations, labels +1/-1 (steering-vectors ``logistic_aggregator``; scikit-learn's default
  ``C = 1``).
- ``class-mean``: difference of class means for labeled (unpaired) rows.

Sign convention: the positive side projects higher. PCA components have no intrinsic sign, so
they are flipped as repeng does: when more pairs have the positive text projecting *below* its
negative than above, the direction is negated (ties are broken by the mean projection gap).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from reprlab.errors import ConfigError, DataError

Estimator = Callable[..., torch.Tensor]


def _check(pos: torch.Tensor, neg: torch.Tensor, paired: bool) -> None:
    if pos.ndim != 2 or neg.ndim != 2 or pos.shape[1] != neg.shape[1]:
        raise DataError(f"activations must be [n, d] with equal d, got {tuple(pos.shape)} and "
                        f"{tuple(neg.shape)}")
    if paired and pos.shape[0] != neg.shape[0]:
        raise DataError(f"paired methods need as many positive as negative rows "
                        f"({pos.shape[0]} vs {neg.shape[0]}); use class-mean for unpaired data")
    if pos.shape[0] == 0 or neg.shape[0] == 0:
        raise DataError("a side of the contrast has no rows: give both positive and negative "
                        "examples")


def raw_mean_diff(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """``mean(pos) - mean(neg)`` -> ``[d]`` (equals the mean of pair differences when paired)."""
    return pos.double().mean(0) - neg.double().mean(0)


def mean_diff(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Mean of the pair differences ``pos - neg``: ``[n, d], [n, d] -> [d]``."""
    _check(pos, neg, paired=True)
    return (pos.double() - neg.double()).mean(0)


def class_mean(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Difference of class means (unpaired): ``[n1, d], [n0, d] -> [d]``."""
    _check(pos, neg, paired=False)
    return raw_mean_diff(pos, neg)


def first_component(x: torch.Tensor, center: bool = True) -> torch.Tensor:
    """Unit first principal axis of ``x [n, d]`` (centred like scikit-learn's PCA) -> ``[d]``."""
    x = x.double()
    if center:
        x = x - x.mean(0, keepdim=True)
    if x.shape[0] >= x.shape[1]:
        evals, evecs = torch.linalg.eigh(x.T @ x)
        return evecs[:, -1]
    _u, _s, vh = torch.linalg.svd(x, full_matrices=False)
    return vh[0]


def orient(direction: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Flip ``direction [d]`` so that positives project above their negatives (repeng's vote)."""
    d = direction.double()
    pp, pn = pos.double() @ d, neg.double() @ d
    if pp.shape == pn.shape:
        larger = (pp > pn).double().mean()
        smaller = (pp < pn).double().mean()
        if smaller > larger:
            return -direction
        if larger > smaller:
            return direction
    return -direction if pp.mean() < pn.mean() else direction


def pca_diff(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """repeng ``pca_diff``: first PC of centred differences, oriented -> unit ``[d]``."""
    _check(pos, neg, paired=True)
    return orient(first_component(pos.double() - neg.double(), center=True), pos, neg)


def pca_center(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """repeng ``pca_center``: first PC of pair-centred activations, oriented -> unit ``[d]``."""
    _check(pos, neg, paired=True)
    half = (pos.double() - neg.double()) / 2
    return orient(first_component(torch.cat([half, -half]), center=True), pos, neg)


def logistic(pos: torch.Tensor, neg: torch.Tensor, c: float = 1.0,
             max_iter: int = 200) -> torch.Tensor:
    """No-intercept L2 logistic regression on centred activations -> unit ``[d]``.

    Minimises ``sum_i log(1 + exp(-y_i w.x_i)) + ||w||^2 / (2 C)`` (scikit-learn's objective,
    lbfgs) with ``y = +1`` for positives. Pairs are centred on their midpoints; unpaired rows on
    the grand mean.
    """
    _check(pos, neg, paired=False)
    p, n = pos.double(), neg.double()
    if p.shape == n.shape:
        mid = (p + n) / 2
        p, n = p - mid, n - mid
    else:
        mean = torch.cat([p, n]).mean(0, keepdim=True)
        p, n = p - mean, n - mean
    x = torch.cat([p, n])
    y = torch.cat([torch.ones(len(p)), -torch.ones(len(n))]).double().to(x.device)
    w = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=max_iter, tolerance_grad=1e-10,
                            tolerance_change=1e-12, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.softplus(-y * (x @ w)).sum() + (w @ w) / (2 * c)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach()


METHODS: dict[str, Estimator] = {
    "mean-diff": mean_diff,
    "pca-diff": pca_diff,
    "pca-center": pca_center,
    "logistic": logistic,
    "class-mean": class_mean,
}
ALIASES = {"pca": "pca-center", "mean": "mean-diff", "caa": "mean-diff", "diff-mean": "mean-diff",
           "pca_diff": "pca-diff", "pca_center": "pca-center", "mean_diff": "mean-diff"}
PAIRED = ("mean-diff", "pca-diff", "pca-center")


def canonical_method(name: str) -> str:
    """Canonical method name; one clear line for an unknown one."""
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    if key not in METHODS:
        raise ConfigError(f"unknown steering method {name!r}; use one of "
                          f"{', '.join(METHODS)} (or pca = pca-center)")
    return key


def estimate(method: str, pos: torch.Tensor, neg: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Run ``method`` and return ``(unit direction [d] float32, raw scale)``.

    The raw scale is ``||mean(pos) - mean(neg)||``, the length of the raw mean difference, so
    that ``scale * direction`` is the CAA vector for ``mean-diff``.
    """
    key = canonical_method(method)
    raw = raw_mean_diff(pos, neg)
    vec = METHODS[key](pos, neg).double()
    norm = vec.norm()
    if not torch.isfinite(norm) or norm == 0:
        raise DataError(f"method {key} gave a zero direction: the positive and negative "
                        "activations do not differ; check the contrast data")
    return (vec / norm).float(), float(raw.norm())
