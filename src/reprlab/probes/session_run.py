"""`reprlab probe --backend local|nnsight [--remote]`: one logistic probe trained where the
model runs, inside a session (on NDIF: one request, only weights and losses come back).

The store-based sweep needs every activation on this machine; for a 70B model on NDIF that
is the one thing we cannot have. Here the training split is trained in one session
(:func:`reprlab.sessions.remote_probe.train_probe_in_session`) and a second session returns
only the test rows' pooled activations at the probed site, which are scored here. The run
directory has the layout of a sweep run (results.json rows, probes/, report.html), so
``reprlab probe apply`` and steering read it as they read any probe run.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch

from reprlab.errors import ConfigError, DataError

logger = logging.getLogger(__name__)


def session_features(lm: Any, texts: list[str], site: str, position: Any, *, backend: str,
                     remote: bool, batch_size: int, progress: bool = True,
                     on_log: Any = None) -> torch.Tensor:
    """Pooled activations ``[N, d]`` of ``texts`` at ``site`` read in one session (each
    forward stops after ``site``)."""
    from reprlab.sessions import session

    with session(lm, backend=backend, remote=remote, on_log=on_log, progress=progress) as s:
        for i in range(0, len(texts), batch_size):
            with s.trace(texts[i:i + batch_size]) as t:
                t.save(t.read(site, pos=position), f"x{i}")
                t.stop()
    return torch.cat([s.results[f"x{i}"].float().cpu() for i in range(0, len(texts), batch_size)])


def probe_in_session(model: Any, data: Any, *, site: str, position: Any = "last",
                     backend: str = "nnsight", remote: bool = False, mode: str = "session",
                     epochs: int = 5, batch_size: int = 32, lr: float = 1e-2,
                     weight_decay: float = 0.0, split: tuple[float, float] = (0.8, 0.2),
                     seed: int = 0, bootstrap: int = 1000, out: str | Path = "runs/probe",
                     limit: int | None = None, data_kwargs: dict[str, Any] | None = None,
                     progress: bool = True, on_log: Any = None) -> dict[str, Any]:
    """Train a logistic probe on ``site`` at ``position`` inside session(s) on ``backend``,
    score it on a held-out split and write a run directory at ``out``. Returns the results."""
    from reprlab.data import load_dataset
    from reprlab.probes import metrics as M
    from reprlab.probes.frozen import Probe
    from reprlab.probes.splits import split_rows
    from reprlab.report import RunDir
    from reprlab.sessions import session_model
    from reprlab.sessions.remote_probe import train_probe_in_session

    if backend not in ("local", "nnsight"):
        raise ConfigError(f"unknown session backend {backend!r}; use local or nnsight")
    if remote and backend != "nnsight":
        raise ConfigError("--remote needs --backend nnsight")
    kw = dict(data_kwargs or {})
    if limit:
        kw["limit"] = int(limit)
    ds = load_dataset(data, **kw) if isinstance(data, str) else data
    lm = session_model(model, remote)
    y_all = torch.as_tensor([int(v) for v in ds.labels])
    parts = split_rows(y_all, split, groups=getattr(ds, "groups", None), seed=seed,
                       names=("train", "test"))
    tr, te = parts["train"].tolist(), parts["test"].tolist()
    texts = list(ds.texts)
    fit = train_probe_in_session(lm, [texts[i] for i in tr], [int(y_all[i]) for i in tr], site,
                                 position, epochs=epochs, batch_size=batch_size, lr=lr,
                                 seed=seed, backend=backend, remote=remote, mode=mode,
                                 weight_decay=weight_decay, on_log=on_log, progress=progress)
    # fit.classes are the label indices seen in training; map back to class names
    names = [ds.classes[int(c)] for c in fit.classes]
    feats = session_features(lm, [texts[i] for i in te], site, position, backend=backend,
                             remote=remote, batch_size=batch_size, progress=progress,
                             on_log=on_log)
    d = feats.shape[1]
    probe = Probe("logistic", "linear", {"weight": fit.weight.float(), "bias": fit.bias.float()},
                  torch.zeros(d), torch.ones(d), names,
                  {"site": fit.site, "position": str(position), "backend": backend,
                   "remote": remote, "mode": mode, "seed": seed})
    probs = probe(feats)
    y_te = y_all[te]
    scored = M.score(probs[None], y_te, resamples=bootstrap, seed=seed)
    pick = {k: {q: (None if math.isnan(float(t[0])) else float(t[0])) for q, t in v.items()}
            for k, v in scored.items()}
    row = {"site": fit.site, "position": str(position), "family": "logistic",
           "test_acc": pick["accuracy"]["value"], "test_acc_lo": pick["accuracy"]["lo"],
           "test_acc_hi": pick["accuracy"]["hi"], "test_auroc": pick["auroc"]["value"],
           "test_logloss": pick["log_loss"]["value"], "control_acc": None, "selectivity": None,
           "majority_acc": M.majority_baseline(y_all[tr], y_te, len(ds.classes)),
           "n_train": len(tr), "n_test": len(te)}
    surface = _surface(texts, y_all, tr, te, getattr(ds, "groups", None), len(ds.classes),
                       bootstrap, seed)
    if surface is not None:
        row["surface_acc"] = surface["test_acc"]
        row["beyond_surface"] = row["test_acc"] - max(surface["test_acc"], row["majority_acc"])
    losses = [float(v) for v in fit.losses]
    results = {"rows": [row], "best": {k: row[k] for k in ("site", "position", "family",
                                                           "test_acc")},
               "surface": surface,
               "training": {"backend": backend, "remote": remote, "mode": mode,
                            "sessions": fit.n_sessions, "epochs": epochs,
                            "batch_size": batch_size, "lr": lr, "loss_per_epoch": losses}}
    run = RunDir.create(out, workflow="probe-session",
                        config={"site": site, "position": str(position), "epochs": epochs,
                                "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
                                "split": list(split), "backend": backend, "remote": remote,
                                "mode": mode},
                        inputs={"model": {"name": lm.name}, "data": {
                            "name": str(data), "hash": ds.hash(), "rows": len(texts)}},
                        seed=seed)
    run.figure(_loss_figure(losses, fit.site), "curves.png", title="Training loss",
               caption=f"Mean training loss per epoch, trained in {fit.n_sessions} "
                       f"{backend} session(s){' on NDIF' if remote else ''}.")
    run.table("Probe", [row])
    stem = f"probes/{fit.site}__{str(position).replace(':', '_')}__logistic"
    probe.save(run.path / stem)
    run.files.extend([stem + ".safetensors", stem + ".json"])
    ci = ""
    if row["test_acc_lo"] is not None:
        ci = f" (95% CI {row['test_acc_lo']:.3f}-{row['test_acc_hi']:.3f})"
    summary = (f"Logistic probe at {fit.site} / {position} trained in {fit.n_sessions} "
               f"{backend} session(s){' on NDIF' if remote else ''}: test accuracy "
               f"{row['test_acc']:.3f}{ci}, majority baseline {row['majority_acc']:.3f}"
               + ("" if surface is None else
                  f", bag-of-words baseline {surface['test_acc']:.3f}") + ".")
    results["summary"] = summary
    run.finish(results, title=f"reprlab probe (session): {lm.name}", summary=summary)
    results["run_dir"] = str(run.path)
    return results


def _surface(texts: list[str], y: torch.Tensor, tr: list[int], te: list[int],
             groups: list[str] | None, n_classes: int, bootstrap: int,
             seed: int) -> dict[str, Any] | None:
    """The bag-of-words baseline on the probe's test rows: trained on three quarters of its
    training rows, its strength chosen on the other quarter (the session probe has no
    validation split). None where the training rows are too few to split."""
    from reprlab.probes.splits import split_rows
    from reprlab.probes.surface import surface_baseline

    trt = torch.as_tensor(tr)
    try:
        sub = split_rows(y[trt], (0.75, 0.25), None if groups is None else
                         [groups[i] for i in tr], seed, names=("train", "val"))
    except DataError:
        return None
    out = surface_baseline(texts, y, [(trt[sub["train"]], trt[sub["val"]], torch.as_tensor(te))],
                           n_classes=n_classes, bootstrap=bootstrap, seed=seed)
    out.pop("probs")
    return out


def _loss_figure(losses: list[float], site: str) -> Any:
    from reprlab.report.plots import new_figure

    fig, ax = new_figure(5.0, 3.2)
    ax.plot(range(1, len(losses) + 1), losses, marker="o")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    ax.set_title(f"logistic probe at {site}")
    return fig
