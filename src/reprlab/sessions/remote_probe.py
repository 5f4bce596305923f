"""Train a logistic probe inside one session: every epoch and batch where the model runs.

``mode="session"``: the whole loop (epochs × batches: forward to the probed site and stop
there, probe loss, backward, optimizer step) is one session. On NDIF that is one request;
only the final weights and the per-epoch losses come back.

``mode="steps"``: one session per batch returns the loss gradients; the optimizer step
happens here. Many small requests, but the weights never leave this machine.

Both give the same weights as :func:`fit_on_features` on locally computed features with the
same data, seed and batch order (zero initialisation; the seed fixes the batches and their
order in each epoch).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from reprlab.errors import ConfigError, DataError, SiteError
from reprlab.sessions import runtime as rt
from reprlab.sessions.api import PRE, encode, session

logger = logging.getLogger(__name__)

MODES = ("session", "steps")


@dataclass
class ProbeTraining:
    """Weights of a trained logistic probe and its training curve."""

    weight: torch.Tensor     # [n_out, d]; n_out = 1 for two classes
    bias: torch.Tensor       # [n_out]
    losses: torch.Tensor     # [epochs] mean training loss per epoch
    classes: list
    site: str
    position: Any
    mode: str
    backend: str
    remote: bool
    n_sessions: int
    extra: dict = field(default_factory=dict)

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """Class indices for features [N, d]."""
        logits = features.to(self.weight.dtype) @ self.weight.T + self.bias
        if self.weight.shape[0] == 1:
            return (logits[:, 0] > 0).long()
        return logits.argmax(-1)


def _labels(labels: Sequence[Any]) -> tuple[torch.Tensor, list]:
    if isinstance(labels, torch.Tensor):
        labels = labels.tolist()
    classes = sorted(set(labels), key=lambda x: (str(type(x)), x))
    if len(classes) < 2:
        raise DataError("probe training needs at least two classes in the labels")
    index = {c: i for i, c in enumerate(classes)}
    return torch.tensor([index[v] for v in labels], dtype=torch.long), classes


def batch_plan(n: int, batch_size: int, epochs: int, seed: int) -> tuple[list[list[int]],
                                                                         list[list[int]]]:
    """Fixed batches (a seeded shuffle cut into ``batch_size`` pieces) and, per epoch, a
    seeded order of those batches."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g).tolist()
    batches = [perm[i:i + batch_size] for i in range(0, n, batch_size)]
    orders = [torch.randperm(len(batches), generator=g).tolist() for _ in range(epochs)]
    return batches, orders


def _site(lm: Any, site: str) -> Any:
    from reprlab.sites import resolve_sites

    sites = resolve_sites(lm, site)
    if len(sites) != 1:
        raise SiteError(f"{site!r} names {len(sites)} sites; a probe reads one site")
    return sites[0]


def _validate(texts: Sequence[str], labels: Sequence[Any], epochs: int, batch_size: int,
              lr: float, mode: str, optimizer: str, position: Any) -> None:
    if len(texts) != len(labels):
        raise DataError(f"{len(texts)} texts but {len(labels)} labels; give one label per text")
    if not texts:
        raise DataError("no texts to train on")
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ConfigError("epochs and batch_size must be >= 1 and lr > 0")
    if mode not in MODES:
        raise ConfigError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    if optimizer not in rt.OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {optimizer!r}; use one of "
                          f"{', '.join(rt.OPTIMIZERS)}")
    if position not in ("last", "first", "middle", "mean") and not isinstance(position, int):
        raise ConfigError(f"bad probe position {position!r}; use last, first, middle, mean or "
                          "an int")


def train_probe_in_session(lm: Any, texts: Sequence[str], labels: Sequence[Any], site: str,
                           position: int | str = "last", epochs: int = 5, batch_size: int = 32,
                           lr: float = 1e-2, seed: int = 0, backend: str = "local",
                           remote: bool = False, mode: str = "session",
                           optimizer: str = "adamw", weight_decay: float = 0.0,
                           on_log: Callable[[str], Any] | None = None,
                           progress: bool = True, threads: int | None = None) -> ProbeTraining:
    """Train a logistic probe on ``site`` at ``position`` inside session(s).

    ``backend="nnsight", remote=True, mode="session"`` trains it entirely on NDIF: one
    request, only weights and losses downloaded. ``threads``: torch threads for local
    forwards (None: reprlab's policy, see :func:`reprlab.sessions.session`).
    """
    _validate(texts, labels, epochs, batch_size, lr, mode, optimizer, position)
    y, classes = _labels(labels)
    s_ = _site(lm, site)
    n_out = 1 if len(classes) == 2 else len(classes)
    batches_idx, orders = batch_plan(len(texts), batch_size, epochs, seed)
    batches = []
    for idx in batches_idx:
        inputs = encode(lm, [texts[i] for i in idx])
        batches.append({"inputs": inputs, "mask": inputs["attention_mask"], "y": y[idx]})
    common = {"model": 0, "site": s_.name, "path": s_.module_path, "hook": s_.hook,
              "pos": position}
    if mode == "session":
        with session(lm, backend=backend, remote=remote, on_log=on_log, progress=progress,
                     threads=threads) as s:
            vals = {k: s._new(None, PRE, k) for k in ("w", "b", "losses")}
            s.add_step({"kind": "probe_fit", **common, "batches": batches, "orders": orders,
                        "dim": lm.arch.hidden_size, "n_out": n_out, "lr": float(lr),
                        "optimizer": optimizer, "weight_decay": float(weight_decay),
                        "seed": seed, "out": {k: v._id for k, v in vals.items()}})
            for k, v in vals.items():
                s.save(v, k)
        r = s.results
        return ProbeTraining(r["w"], r["b"], r["losses"], classes, s_.name, position, mode,
                             backend, remote, 1, {"batches": len(batches)})
    w, b = rt.probe_params(lm.arch.hidden_size, n_out, seed)
    opt = rt.make_optimizer(optimizer, [w, b], float(lr), float(weight_decay))
    losses, n_sessions = [], 0
    from tqdm.auto import tqdm

    bar = tqdm(total=epochs * len(batches), desc="probe steps", disable=not progress)
    for epoch, order in enumerate(orders):
        total, count = torch.zeros(()), 0
        for bi in order:
            batch = batches[bi]
            with session(lm, backend=backend, remote=remote, on_log=on_log,
                         progress=False, threads=threads) as s:
                vals = {k: s._new(None, PRE, k) for k in ("loss", "dw", "db")}
                s.add_step({"kind": "probe_grad", **common, "batch": batch,
                            "w": w.detach().clone(), "b": b.detach().clone(),
                            "out": {k: v._id for k, v in vals.items()}})
                for k, v in vals.items():
                    s.save(v, k)
            n_sessions += 1
            r = s.results
            opt.zero_grad()
            w.grad, b.grad = r["dw"].to(w.dtype), r["db"].to(b.dtype)
            opt.step()
            total = total + r["loss"] * len(batch["y"])
            count += len(batch["y"])
            bar.update(1)
        losses.append(total / count)
        msg = f"epoch {epoch + 1}/{epochs}: loss {float(total / count):.6f}"
        logger.info("%s", msg)
        if on_log is not None:
            on_log(msg)
    bar.close()
    return ProbeTraining(w.detach().clone(), b.detach().clone(), torch.stack(losses), classes,
                         s_.name, position, mode, backend, remote, n_sessions,
                         {"batches": len(batches)})


def fit_on_features(features: torch.Tensor, labels: Sequence[Any], epochs: int,
                    batch_size: int, lr: float, seed: int, optimizer: str = "adamw",
                    weight_decay: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference: the same probe trained on precomputed features [N, d] with the same
    batches and order. Returns (weight, bias, per-epoch losses)."""
    y, classes = _labels(labels)
    n_out = 1 if len(classes) == 2 else len(classes)
    batches, orders = batch_plan(len(y), batch_size, epochs, seed)
    w, b = rt.probe_params(features.shape[1], n_out, seed)
    opt = rt.make_optimizer(optimizer, [w, b], lr, weight_decay)
    losses = []
    for order in orders:
        total, count = torch.zeros(()), 0
        for bi in order:
            idx = batches[bi]
            loss = rt.probe_step(features[idx], y[idx], w, b, opt)
            total, count = total + loss * len(idx), count + len(idx)
        losses.append(total / count)
    return w.detach(), b.detach(), torch.stack(losses)
