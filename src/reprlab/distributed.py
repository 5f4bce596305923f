"""Data-parallel training under ``torchrun`` or ``accelerate launch``: process-group set-up,
row shards, gradient reduction, collectives on numbers and weight checksums.

Both launchers start one process per device and set ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_from_env` joins the group they describe (gloo
on CPU, NCCL on GPU) and is a no-op for a plain single process. Every rank holds the same
replica of the trainable weights (:func:`broadcast_parameters` at the start); after the
backward the gradients are combined with one all-reduce over a flat buffer (what DDP does, done
by hand because one training step may call the model several times before its backward).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class World:
    """This process's place in the job: ``rank`` of ``size``; ``owner`` when this library
    created the process group (and so destroys it in :func:`shutdown`)."""

    rank: int = 0
    size: int = 1
    owner: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def launched() -> bool:
    """True in a process started by ``torchrun``/``accelerate launch`` with several ranks."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: torch.device | str = "cpu") -> World:
    """Join the process group described by the launcher's environment (a single process:
    ``World()``). A group the caller already initialised is used as it is."""
    if not launched():
        return World()
    if dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    dist.init_process_group("nccl" if torch.device(device).type == "cuda" else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), owner=True)


def rank_device(device: str | None) -> str | None:
    """``cuda`` (or ``auto`` with a GPU) -> ``cuda:<LOCAL_RANK>`` under a launcher (one GPU
    per process); anything else unchanged."""
    if launched() and device in ("cuda", "auto") and torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            from reprlab.errors import ConfigError

            raise ConfigError(f"process LOCAL_RANK={local} has no GPU of its own (this node "
                              f"shows {torch.cuda.device_count()}); start at most that many "
                              "processes per node (--nproc_per_node)")
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return device


def shard_bounds(n: int, rank: int, size: int) -> tuple[int, int]:
    """``[start, stop)`` of rank ``rank``'s contiguous share of ``n`` rows: the first
    ``n % size`` ranks take one row more (``tensor_split``'s rule)."""
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def with_world(config: dict, world: World, device: object) -> dict:
    """A run's manifest config: ``config`` plus ``world_size`` when the run is spread over
    several processes (logged once, with the device)."""
    if world.size > 1:
        logger.info("data-parallel over %d processes (%s)", world.size, device)
        return {**config, "world_size": world.size}
    return config


def barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier()


def broadcast_parameters(params: list[torch.Tensor], world: World) -> None:
    """Copy rank 0's values of ``params`` to every rank."""
    if world.size > 1:
        with torch.no_grad():
            for p in params:
                dist.broadcast(p.data, 0)


def sum_gradients(params: list[torch.Tensor], world: World) -> None:
    """Replace each parameter's gradient by the sum over ranks (missing grads count as 0):
    for losses each rank already weighted by its share of the global batch."""
    if world.size <= 1 or not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    # summed in float32 at least (bf16 adapters lose nothing to the sum), cast back after; one
    # flag per parameter rides along, so a parameter no rank has a gradient for keeps None
    # (the optimiser then skips it, as it does in one process)
    dtype = torch.float32
    for g in grads:
        dtype = torch.promote_types(dtype, g.dtype)
    had = torch.tensor([float(p.grad is not None) for p in params], dtype=dtype,
                       device=grads[0].device)
    flat = torch.cat([g.reshape(-1).to(dtype) for g in grads] + [had])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    counts = flat[-len(params):].tolist()
    offset = 0
    for p, count in zip(params, counts, strict=True):
        n = p.numel()
        p.grad = (flat[offset:offset + n].view_as(p).to(p.dtype, copy=True) if count > 0
                  else None)
        offset += n


def all_sum(value: float, world: World, device: torch.device | str | None = None) -> float:
    """The sum of ``value`` over ranks."""
    if world.size <= 1:
        return value
    return all_sum_list([value], world, device)[0]


def all_sum_list(values: list[float], world: World,
                 device: torch.device | str | None = None) -> list[float]:
    """Element-wise sums over ranks of a list of numbers of the same length on every rank
    (one all-reduce, in float64)."""
    if world.size <= 1 or not values:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.cpu().tolist()


def checksum(params: list[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for p in params:
        h.update(p.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()[:16]


def gather_strings(value: str, world: World) -> list[str]:
    if world.size <= 1:
        return [value]
    out: list[str | None] = [None] * world.size
    dist.all_gather_object(out, value)
    return [str(v) for v in out]


def shutdown(world: World) -> None:
    """Leave the process group if :func:`init_from_env` created it."""
    if world.owner and dist.is_initialized():
        dist.destroy_process_group()


__all__ = ["World", "all_sum", "all_sum_list", "barrier",
           "broadcast_parameters", "checksum", "gather_strings", "init_from_env", "launched",
           "rank_device", "shard_bounds", "shutdown", "sum_gradients"]
