"""Probe sweep: every requested site x position x family from one store, fitted together.

For each position the requested sites are stacked into ``X [L, N, d]``; each family fits all
``L`` layers, the task labels and their random-label controls, over its hyperparameter grid,
in one batched computation (:mod:`reprlab.probes.fitters`). Standardisation is fitted per
layer on the training rows only. Hyperparameters are chosen per layer on the validation
rows and the control reuses the task's choice (same family, hyperparameters and budget).
Test metrics carry 95% percentile-bootstrap intervals; with ``folds`` the metrics are
computed on pooled out-of-fold predictions (every row scored once).
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from reprlab.errors import ConfigError, DataError, SiteError
from reprlab.probes import directions as dirs
from reprlab.probes import metrics as M
from reprlab.probes.controls import permuted_labels
from reprlab.probes.fitters import ITERATIVE, FamilyFit, check_families, fit_family, select_setting
from reprlab.probes.frozen import Probe
from reprlab.probes.logistic import probs_from_logits
from reprlab.probes.splits import kfold_rows, split_rows

logger = logging.getLogger(__name__)

#: families whose probe is one linear score (a direction steering can use)
LINEAR_FAMILIES = ("logistic", "mass-mean", "mass-mean-iid")


def rank(row: dict[str, Any]) -> tuple[float, float]:
    """How rows compare for "best": validation accuracy, then validation log-loss (lower
    first). The test rows play no part in the choice, so the best row's test accuracy is an
    honest estimate. (A run without validation rows has a single row.)"""
    acc, loss = row.get("val_acc"), row.get("val_log_loss")
    return (acc if acc is not None else -1.0), -(loss if loss is not None else 0.0)


def pick_linear(rows: list[dict[str, Any]], position: str | None = None,
                family: str | None = None) -> dict[str, Any]:
    """The best row (validation accuracy) among linear families, narrowed to ``position`` /
    ``family`` when given."""
    cand = [r for r in rows if r["family"] in LINEAR_FAMILIES
            and (position is None or r["position"] == position)
            and (family is None or r["family"] == family)]
    if not cand:
        raise ConfigError("no linear probe (logistic, mass-mean) matches "
                          f"position={position or 'any'} family={family or 'any'}; add "
                          "--probes logistic or pick a position/family the run has")
    return max(cand, key=rank)

#: datasets up to this many rows use k-fold cross-validation unless a split is forced
CV_MAX_ROWS = 100


@dataclass
class SweepResult:
    """Everything a sweep measured. ``rows``: one dict per site x position x family."""

    rows: list[dict[str, Any]]
    probes: dict[tuple[str, str, str], Probe]
    curves: dict[tuple[str, str, str], dict[str, list[float]]]
    predictions: list[dict[str, Any]]
    config: dict[str, Any]
    directions: dict[tuple[str, str], dict[str, torch.Tensor]] = field(default_factory=dict)
    run_dir: Any = None  # set when a report was written
    validation: dict[str, Any] | None = None  # steering validation, when asked for
    #: the bag-of-words baseline on the same rows (:mod:`reprlab.probes.surface`), or None
    #: where the store holds no texts
    surface: dict[str, Any] | None = None

    @property
    def best(self) -> dict[str, Any]:
        """Best row by validation accuracy (ties: validation log-loss), with its test
        accuracy, its probe and raw unit direction (the probe's for linear families, else
        the mean difference)."""
        row = max(self.rows, key=rank)
        key = (row["site"], row["position"], row["family"])
        probe = self.probes.get(key)
        d = probe.direction if probe is not None else None
        if d is None:
            d = self.directions.get((row["site"], row["position"]), {}).get("mean_difference")
        return {"site": row["site"], "position": row["position"], "family": row["family"],
                "val_acc": row["val_acc"], "test_acc": row["test_acc"], "direction": d,
                "probe": probe, "row": row}

    def linear_probes(self, position: str | None = None,
                      family: str | None = None) -> dict[str, Probe]:
        """``{site: probe}`` of one linear family at one position (default: those of the best
        linear row): the directions steering validates."""
        row = pick_linear(self.rows, position, family)
        return {k[0]: p for k, p in self.probes.items()
                if k[1:] == (row["position"], row["family"])}

    def table(self, family: str | None = None, position: str | None = None) -> list[dict]:
        return [r for r in self.rows if (family is None or r["family"] == family)
                and (position is None or r["position"] == position)]

    def to_dict(self) -> dict[str, Any]:
        surface = None if self.surface is None else {
            k: v for k, v in self.surface.items() if k != "probs"}
        return {"config": self.config, "rows": self.rows, "best": {
                    k: v for k, v in self.best.items() if k not in ("direction", "probe")},
                "surface": surface,
                "curves": [{"site": s, "position": p, "family": f, **c}
                           for (s, p, f), c in self.curves.items()]}


def select_sites(store: Any, sites: str | list[str] | None) -> list[str]:
    """Store sites matching the patterns (``layers.*``), ordered by layer."""
    have = list(store.sites)
    if sites is None or sites == "" or sites == []:
        chosen = have
    else:
        pats = [s.strip() for s in (sites.split(",") if isinstance(sites, str) else sites) if s.strip()]
        chosen = []
        for p in pats:
            hits = [s for s in have if fnmatch.fnmatchcase(s, p)]
            if not hits:
                raise SiteError(f"site {p!r} is not in the store; it holds: {', '.join(have)}")
            chosen.extend(hits)
        chosen = list(dict.fromkeys(chosen))

    def order(s: str) -> tuple:
        layer = store.layer_of(s) if hasattr(store, "layer_of") else None
        return (0, layer, have.index(s)) if layer is not None else (1, 0, have.index(s))
    return sorted(chosen, key=order)


def select_positions(store: Any, positions: str | list[str] | None) -> list[str]:
    have = [p for p in store.positions if p != "all"]
    if positions is None or positions == "" or positions == []:
        if not have:
            raise SiteError("the store holds only per-token ('all') activations; capture a pooled "
                            "position such as last or mean")
        return have
    want = [p.strip() for p in (positions.split(",") if isinstance(positions, str) else positions) if p.strip()]
    for p in want:
        if p not in have:
            raise SiteError(f"position {p!r} is not in the store; it holds: {', '.join(have)}")
    return want


def _labels_of(store: Any, what: str) -> torch.Tensor:
    labels = getattr(store, "labels", None)
    if labels is None:
        raise DataError(f"the {what} store has no labels: capture a labeled dataset "
                        "(columns text,label) to train probes")
    return torch.as_tensor(labels).long()


def _stack(store: Any, sites: list[str], pos: str, dtype, device) -> torch.Tensor:
    return torch.stack([torch.as_tensor(store[s, pos]).to(dtype=dtype, device=device)
                        for s in sites])


def _select_h(fit: FamilyFit, Xv: torch.Tensor, yv: torch.Tensor) -> torch.Tensor:
    """Per layer, the grid index with the best task validation accuracy (ties: log-loss)."""
    if len(fit.grid) == 1:
        return torch.zeros(Xv.shape[0], dtype=torch.long)
    return select_setting(fit.logits(Xv)[:, 0], yv)


def _pick(fit: FamilyFit, h: torch.Tensor) -> dict[str, torch.Tensor]:
    L = h.shape[0]
    ar = torch.arange(L)
    return {k: v[ar, :, h] for k, v in fit.params.items()}  # [L, P, ...]


def _warn_unconverged(fit: FamilyFit) -> None:
    """One warning when some logistic fits stopped at their iteration cap short of ``tol``
    (their numbers may still move), saying how to give them more."""
    share = fit.info.get("converged")
    if fit.family != "logistic" or share is None or share >= 1.0:
        return
    logger.warning("logistic probes: %.1f%% of the fits (layer x strength x labels) stopped "
                   "before their gradient reached tol %g, at max_iter %d; their numbers may "
                   "still move: give more with options={'logistic': {'max_iter': N}}",
                   100 * (1 - share), fit.info["tol"], fit.info["max_iter"])


class _Fold:
    """One train/val/test fit of every family for one position."""

    def __init__(self, X: torch.Tensor, Y: torch.Tensor, tr, va, te, families, n_classes,
                 seed, options, curves: bool) -> None:
        Xtr = X[:, tr]
        self.mean = Xtr.mean(1)
        self.std = Xtr.std(1, unbiased=False).clamp_min(1e-6)
        std = lambda Z: (Z - self.mean[:, None]) / self.std[:, None]  # noqa: E731
        self.standardise = std
        Xs_tr, Xs_va, Xs_te = std(Xtr), std(X[:, va]), std(X[:, te])
        self.fits: dict[str, dict[str, Any]] = {}
        for fam in families:
            fit = fit_family(fam, Xs_tr, Y[:, tr], n_classes=n_classes, scale=self.std,
                             X_val=Xs_va, Y_val=Y[:, va],
                             monitor=(Xs_te, Y[:, te]) if curves else None, seed=seed,
                             options=options.get(fam, {}))
            _warn_unconverged(fit)
            h = _select_h(fit, Xs_va, Y[0, va])
            params = _pick(fit, h)
            sel = FamilyFit(fit.family, fit.kind, {k: v.unsqueeze(2) for k, v in params.items()},
                            [fit.grid[0]], {}, fit.info)
            def lg(Z: torch.Tensor, sel: FamilyFit = sel) -> torch.Tensor:
                return probs_from_logits(sel.logits(Z)[:, :, 0])

            ar = torch.arange(X.shape[0])
            self.fits[fam] = {
                "kind": fit.kind, "params": params, "grid": [fit.grid[i] for i in h.tolist()],
                "info": fit.info, "probs_test": lg(Xs_te), "probs_train": lg(Xs_tr),
                "probs_val": lg(Xs_va), "predict": lg,
                "curves": {k: v[ar, :, h] for k, v in fit.curves.items()},
            }


def sweep(store: Any, *, sites: str | list[str] | None = None,
          positions: str | list[str] | None = None,
          probes: str | list[str] = ("logistic", "mass-mean"),
          split: tuple[float, float, float] = (0.6, 0.2, 0.2), test: Any = None,
          folds: int | None = None, evals: dict[str, Any] | None = None, seed: int = 0,
          controls: bool | int = True, bootstrap: int = 1000,
          options: dict[str, dict] | None = None,
          dtype: str | torch.dtype = "float32", device: str | torch.device = "cpu",
          progress: bool = True, surface: bool = True) -> SweepResult:
    """Train probes of every family at every site x position of ``store``.

    ``store``: an :class:`~reprlab.store.ActivationStore` (or :class:`TensorStore`) with labels.
    ``split``: train/val/test fractions (stratified, group-aware on ``store.groups``).
    ``test``: a store of held-out rows used as the test set instead (train/val then split
    ``store`` by the first two fractions). ``folds``: k-fold cross-validation (default for
    stores of at most 100 rows). ``evals``: name -> store scored by every probe (OOD sets).
    ``options``: per-family options, e.g. ``{"logistic": {"l2": 1e-2}, "mlp": {"width": 32}}``.
    ``controls``: random-label control permutations per layer (``True`` = 1, ``False`` = 0);
    with several, ``control_acc`` is their mean and ``control_acc_each`` lists them.
    ``surface``: fit the bag-of-words baseline (:mod:`reprlab.probes.surface`) on the same
    rows where the stores hold their texts: ``surface_acc`` per row, and ``beyond_surface``
    = test accuracy - the larger of it and the majority baseline (on sets balanced so that no
    word predicts the label, the words score at or below chance).
    "Best" is chosen on validation accuracy (pooled over folds with ``folds``); its test
    accuracy is reported. Deterministic for a given ``seed``.
    """
    names = probes.split(",") if isinstance(probes, str) else [q for p in probes for q in p.split(",")]
    families = check_families(names)
    dt = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    site_list = select_sites(store, sites)
    pos_list = select_positions(store, positions)
    y_all = _labels_of(store, "training")
    classes = list(store.classes or [str(i) for i in range(int(y_all.max()) + 1)])
    K = len(classes)
    present = sorted(set(y_all.tolist()))
    if len(present) < 2:
        raise DataError(f"the store's labels hold a single class ({[classes[i] for i in present]}): "
                        "probing needs rows of at least two classes")
    groups = getattr(store, "groups", None)
    options = {k.replace("_", "-"): v for k, v in (options or {}).items()}
    N = len(y_all)
    if test is not None:
        _labels_of(test, "test")
        mode = "given-test"
    elif folds or N <= CV_MAX_ROWS:
        mode = "cv"
        folds = int(folds or 5)
    else:
        mode = "split"
    # ----------------------------------------------------------------- row assignment
    if mode == "split":
        parts = split_rows(y_all, split, groups, seed)
        plan = [(parts["train"], parts["val"], parts["test"])]
    elif mode == "given-test":
        parts = split_rows(y_all, (split[0], split[1]), groups, seed, names=("train", "val"))
        plan = [(parts["train"], parts["val"], None)]
    else:
        fl = kfold_rows(y_all, folds, groups, seed)
        plan = [(torch.cat([fl[j] for j in range(folds) if j not in (i, (i + 1) % folds)]).sort().values,
                 fl[(i + 1) % folds], fl[i]) for i in range(folds)]
    n_controls = int(controls)  # True -> one permutation
    if n_controls < 0:
        raise ConfigError(f"controls must be 0 or more permutations, got {controls}")
    controls = n_controls > 0
    Yctl = permuted_labels(y_all, groups, seed, n_controls) if controls else y_all.new_zeros(0, N)
    Y = torch.cat([y_all[None], Yctl]).to(device)
    config = {"sites": site_list, "positions": pos_list, "families": families, "mode": mode,
              "split": list(split), "folds": folds if mode == "cv" else None, "seed": seed,
              "controls": n_controls, "bootstrap": bootstrap, "classes": classes,
              "n_rows": N, "options": options, "dtype": str(dt).replace("torch.", ""),
              "evals": sorted(evals or {})}
    rows: list[dict[str, Any]] = []
    probes_out: dict[tuple[str, str, str], Probe] = {}
    curves_out: dict[tuple[str, str, str], dict[str, list[float]]] = {}
    preds: list[dict[str, Any]] = []
    dir_out: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    ids = list(getattr(store, "ids", None) or [str(i) for i in range(N)])
    surf = _surface(store, test, y_all, plan, mode, K, bootstrap, seed) if surface else None
    layers = [store.layer_of(s) if hasattr(store, "layer_of") else None for s in site_list]
    bar = tqdm(total=len(pos_list) * len(plan), desc="probe sweep", disable=not progress,
               unit="fit")
    for pos in pos_list:
        X = _stack(store, site_list, pos, dt, device)  # [L, N, d]
        if mode == "given-test":
            Xt = _stack(test, site_list, pos, dt, device)
            yt = _labels_of(test, "test").to(device)
            Yt = torch.cat([yt[None], permuted_labels(yt, getattr(test, "groups", None), seed,
                                                      n_controls)]) if controls else yt[None]
            Xfull, Yfull = torch.cat([X, Xt], 1), torch.cat([Y, Yt], 1)
            tr, va = plan[0][0], plan[0][1]
            te = torch.arange(N, N + Xt.shape[1])
            runs = [(tr, va, te)]
            test_ids = list(getattr(test, "ids", None) or [f"test-{i}" for i in range(len(yt))])
        else:
            Xfull, Yfull = X, Y
            runs = plan
            test_ids = ids
        fits = []
        for i, (tr, va, te) in enumerate(runs):
            fits.append((te, _Fold(Xfull, Yfull, tr, va, te, families, K, seed, options,
                                   curves=(i == 0))))
            bar.update(1)
        first = fits[0][1]
        tr0, va0, te0 = runs[0]
        te_all = torch.cat([te for te, _ in fits])
        y_te = Yfull[0, te_all]
        # directions from the first fit's training rows (raw space)
        md = dirs.mean_difference(Xfull[:, tr0], Yfull[0, tr0], K)
        for fam in families:
            pt = torch.cat([f.fits[fam]["probs_test"] for _, f in fits], 2)  # [L, P, m, K]
            task = M.score(pt[:, 0], y_te, resamples=bootstrap, seed=seed)
            # each control permutation is scored on its own permuted test labels
            ctl_each = M.accuracy(pt[:, 1:], Yfull[1:, te_all]) if controls else None  # [L, C]
            ctl_acc = ctl_each.mean(1) if controls else None
            fit0 = first.fits[fam]
            tr_acc = M.accuracy(fit0["probs_train"], Yfull[:, tr0])  # [L, P]
            # validation: pooled over folds (one fold's rows with a single split)
            pv = torch.cat([f.fits[fam]["probs_val"][:, 0] for _, f in fits], 1)  # [L, m, K]
            yv = Yfull[0, torch.cat([va for _, va, _ in runs])]
            va_acc, va_loss = M.accuracy(pv, yv), M.log_loss(pv, yv)
            majority = M.majority_baseline(Yfull[0, tr0], y_te, K)
            linear = fit0["kind"] == "linear"
            if linear:
                pdir = dirs.raw_directions(fit0["params"]["weight"][:, 0], first.std)
                cos_md = dirs.cosine(pdir, md)
                nb_p, nb_m = dirs.neighbour_cosines(pdir), dirs.neighbour_cosines(md)
            else:
                nb_m = dirs.neighbour_cosines(md)
            for li, site in enumerate(site_list):
                key = (site, pos, fam)
                row = {"site": site, "layer": layers[li], "position": pos, "family": fam,
                       "n_train": len(tr0), "n_val": len(va0), "n_test": len(te_all),
                       "test_acc": _num(task["accuracy"]["value"][li]),
                       "test_acc_lo": _num(task["accuracy"]["lo"][li]),
                       "test_acc_hi": _num(task["accuracy"]["hi"][li]),
                       "test_auroc": _num(task["auroc"]["value"][li]),
                       "test_auroc_lo": _num(task["auroc"]["lo"][li]),
                       "test_auroc_hi": _num(task["auroc"]["hi"][li]),
                       "test_log_loss": _num(task["log_loss"]["value"][li]),
                       "test_log_loss_lo": _num(task["log_loss"]["lo"][li]),
                       "test_log_loss_hi": _num(task["log_loss"]["hi"][li]),
                       "train_acc": float(tr_acc[li, 0]), "val_acc": float(va_acc[li]),
                       "val_log_loss": float(va_loss[li]),
                       "control_acc": float(ctl_acc[li]) if controls else None,
                       "control_train_acc": (float(tr_acc[li, 1:].mean()) if controls
                                             else None),
                       "control_acc_each": ([float(v) for v in ctl_each[li]]
                                            if n_controls > 1 else None),
                       "selectivity": (_num(task["accuracy"]["value"][li] - ctl_acc[li])
                                       if controls else None),
                       "majority_acc": majority, "chance": 1.0 / K,
                       "surface_acc": surf["test_acc"] if surf else None,
                       "beyond_surface": (_num(task["accuracy"]["value"][li]
                                               - max(surf["test_acc"], majority))
                                          if surf else None),
                       "cos_probe_meandiff": float(cos_md[li]) if linear else None,
                       "cos_probe_prev": (float(nb_p[li - 1]) if linear and li > 0 else None),
                       "cos_meandiff_prev": float(nb_m[li - 1]) if li > 0 else None,
                       "hyper": fit0["grid"][li]}
                rows.append(row)
                params = {k: v[li, 0] for k, v in fit0["params"].items()}  # Probe copies
                probes_out[key] = Probe(fam, fit0["kind"], params, first.mean[li],
                                        first.std[li], classes,
                                        {"site": site, "position": pos, "layer": layers[li],
                                         "hyper": fit0["grid"][li], "seed": seed,
                                         "test_acc": row["test_acc"]})
                if fam in ITERATIVE and fit0["curves"]:
                    curves_out[key] = {f"{name}_{tag}": fit0["curves"][name][li, p].tolist()
                                       for name in fit0["curves"]
                                       for p, tag in ((0, "task"), (1, "control"))[:Y.shape[0]]}
            # per-example predictions on the test rows
            for li, site in enumerate(site_list):
                for j, r in enumerate(te_all.tolist()):
                    rid = test_ids[r - N] if mode == "given-test" else ids[r]
                    preds.append(_pred_row("test", rid, int(y_te[j]), site, pos, fam,
                                           pt[li, 0, j], classes))
            # out-of-distribution sets
            for name, ev in (evals or {}).items():
                Xe = first.standardise(_stack(ev, site_list, pos, dt, device))
                pe = fit0["predict"](Xe)[:, 0]  # [L, M, K]
                ye = getattr(ev, "labels", None)
                ye = None if ye is None else _align_labels(ev, classes, name).to(device)
                eids = list(getattr(ev, "ids", None) or range(pe.shape[1]))
                if ye is not None:
                    es = M.score(pe, ye, resamples=bootstrap, seed=seed)
                for li, site in enumerate(site_list):
                    row = next(r for r in rows if r["site"] == site and r["position"] == pos
                               and r["family"] == fam)
                    if ye is not None:
                        for met in ("accuracy", "auroc"):
                            short = "acc" if met == "accuracy" else met
                            row[f"eval_{name}_{short}"] = _num(es[met]["value"][li])
                            row[f"eval_{name}_{short}_lo"] = _num(es[met]["lo"][li])
                            row[f"eval_{name}_{short}_hi"] = _num(es[met]["hi"][li])
                    for j in range(pe.shape[1]):
                        preds.append(_pred_row(name, eids[j], None if ye is None else int(ye[j]),
                                               site, pos, fam, pe[li, j], classes))
        for li, site in enumerate(site_list):
            dir_out[(site, pos)] = {"mean_difference": md[li].clone()}
    bar.close()
    logger.info("probe sweep: %d sites x %d positions x %d families", len(site_list),
                len(pos_list), len(families))
    return SweepResult(rows, probes_out, curves_out, preds, config, dir_out, surface=surf)


def _surface(store: Any, test: Any, y_all: torch.Tensor, plan: list, mode: str, K: int,
             bootstrap: int, seed: int) -> dict[str, Any] | None:
    """The bag-of-words baseline on the sweep's rows, or None without texts."""
    from reprlab.probes.surface import surface_baseline

    texts = getattr(store, "texts", None)
    if not texts:
        return None
    if mode == "given-test":
        test_texts = getattr(test, "texts", None)
        if not test_texts:
            return None
        N = len(texts)
        texts = list(texts) + list(test_texts)
        y_all = torch.cat([y_all, _labels_of(test, "test")])
        plan = [(plan[0][0], plan[0][1], torch.arange(N, N + len(test_texts)))]
    out = surface_baseline(list(texts), y_all, plan, n_classes=K, bootstrap=bootstrap,
                           seed=seed)
    logger.info("bag-of-words baseline: test accuracy %.3f (%d words)", out["test_acc"],
                out["features"])
    return out


def _num(x: Any) -> float | None:
    """A float for results.json, or None where the value is undefined (NaN)."""
    v = float(x)
    return None if v != v else v


def _pred_row(split: str, rid: Any, label: int | None, site: str, pos: str, fam: str,
              probs: torch.Tensor, classes: list[str]) -> dict[str, Any]:
    out = {"set": split, "id": rid, "label": classes[label] if label is not None else "",
           "site": site, "position": pos, "family": fam,
           "predicted": classes[int(probs.argmax())]}
    for c, p in zip(classes, probs.tolist()):
        out[f"p_{c}"] = round(p, 6)
    return out


def _align_labels(ev: Any, classes: list[str], name: str) -> torch.Tensor:
    y = torch.as_tensor(ev.labels).long()
    ev_classes = getattr(ev, "classes", None)
    if ev_classes is None or list(ev_classes) == list(classes):
        return y
    mapping = []
    for c in ev_classes:
        if c not in classes:
            raise ConfigError(f"eval set {name!r} has class {c!r} which the training data lacks "
                              f"(classes: {classes}): use the same class names")
        mapping.append(classes.index(c))
    return torch.tensor(mapping)[y]
