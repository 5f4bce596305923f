"""The local session backend: a compiled plan executed with reprlab's own forward hooks."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from reprlab import _threads
from reprlab.hooks import StopForward, hooked
from reprlab.sessions import runtime as rt
from reprlab.sites import Site

logger = logging.getLogger(__name__)


def _site(stage: dict) -> Site:
    return Site(stage["site"], "module", stage["path"], None, hook=stage["hook"])


def _tokens(inputs: dict) -> int:
    """Tokens in one forward's batch (rows x padded length)."""
    x = inputs.get("attention_mask", inputs.get("input_ids"))
    return int(x.numel()) if isinstance(x, torch.Tensor) else 0


def _forward(lm: Any, inputs: dict, stages: list[dict], env: dict, mask: torch.Tensor,
             stop: bool, threads: int | None = None) -> Any:
    last = len(stages) - 1

    def make(i: int, stage: dict) -> Callable[[torch.Tensor], Any]:
        def fn(h: torch.Tensor) -> Any:
            new = rt.run_ops(stage["ops"], env, h, mask, stage["site"])
            if stop and i == last:
                raise StopForward
            return None if new is h else new
        return fn

    with _threads.for_forward(lm, _tokens(inputs), threads), torch.no_grad(), \
            hooked(lm, {_site(s): make(i, s) for i, s in enumerate(stages)}):
        try:
            return lm.model(**inputs)
        except StopForward:
            return None


def run_trace(lm: Any, step: dict, env: dict, threads: int | None = None) -> None:
    rt.run_ops(step["pre"], env)
    out = _forward(lm, step["inputs"], step["stages"], env, step["mask"], step["stop"],
                   threads)
    if step["post"]:
        rt.run_ops(step["post"], env, logits=out.logits)


def probe_features(lm: Any, step: dict, batch: dict, threads: int | None = None
                   ) -> torch.Tensor:
    """Pooled, detached features of one batch at the probe's site (forward stops there)."""
    box: dict = {}
    stage = {"site": step["site"], "path": step["path"], "hook": step["hook"], "ops": []}

    def fn(h: torch.Tensor) -> None:
        box["h"] = rt.pooled(h, batch["mask"], step["pos"])
        raise StopForward

    with _threads.for_forward(lm, _tokens(batch["inputs"]), threads), torch.no_grad(), \
            hooked(lm, {_site(stage): fn}):
        try:
            lm.model(**batch["inputs"])
        except StopForward:
            pass
    return box["h"]


def run_probe_fit(lm: Any, step: dict, env: dict, emit: Callable[[str], Any],
                  threads: int | None = None) -> None:
    w, b = rt.probe_params(step["dim"], step["n_out"], step["seed"])
    opt = rt.make_optimizer(step["optimizer"], [w, b], step["lr"], step["weight_decay"])
    losses = []
    for epoch, order in enumerate(step["orders"]):
        total, count = torch.zeros(()), 0
        for bi in order:
            batch = step["batches"][bi]
            h = probe_features(lm, step, batch, threads)
            loss = rt.probe_step(h, batch["y"], w, b, opt)
            total = total + loss * len(batch["y"])
            count += len(batch["y"])
        losses.append(total / count)
        emit(f"epoch {epoch + 1}/{len(step['orders'])}: loss {float(total / count):.6f}")
    out = step["out"]
    env[out["w"]], env[out["b"]] = w.detach().clone(), b.detach().clone()
    env[out["losses"]] = torch.stack(losses)


def run_probe_grad(lm: Any, step: dict, env: dict, threads: int | None = None) -> None:
    h = probe_features(lm, step, step["batch"], threads)
    loss, dw, db = rt.probe_grad(h, step["batch"]["y"], step["w"], step["b"])
    out = step["out"]
    env[out["loss"]], env[out["dw"]], env[out["db"]] = loss, dw, db


def run_plan(models: list, plan: dict, *, remote: bool = False,
             emit: Callable[[str], Any] = logger.info, progress: bool = True,
             threads: int | None = None, **options: Any) -> dict:
    """Execute ``plan`` on ``models``; returns saved values (+ ``__ran__``: traces that ran).

    Each forward runs at :func:`reprlab._threads.for_forward`'s count for its batch (or
    ``threads``), the operations between them at the policy's count for small work; the
    caller's torch thread count is restored afterwards.
    """
    if options:
        logger.debug("local backend ignores options %s", sorted(options))
    with _threads.num_threads(threads):
        return _run_plan(models, plan, emit, threads)


def _run_plan(models: list, plan: dict, emit: Callable[[str], Any],
              threads: int | None) -> dict:
    env: dict = {}
    ran: list[int] = []
    for step in plan["steps"]:
        kind = step["kind"]
        if kind == "trace":
            run_trace(models[step["model"]], step, env, threads)
            ran.append(step["index"])
        elif kind == "ops":
            rt.run_ops(step["ops"], env)
        elif kind == "log":
            emit(rt.format_log(step["parts"], env))
        elif kind == "exit":
            if rt.should_exit(step["cond"], env):
                break
        elif kind == "probe_fit":
            run_probe_fit(models[step["model"]], step, env, emit, threads)
        elif kind == "probe_grad":
            run_probe_grad(models[step["model"]], step, env, threads)
        else:
            raise ValueError(f"unknown session step {kind!r}")
    return rt.collect({}, env, plan["saves"], ran)
