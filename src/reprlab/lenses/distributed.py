"""Data-parallel training under ``torchrun``: process group set-up, gradient averaging and
weight checksums. Every rank holds the same replica; after each backward the gradients of the
trainable parameters are averaged with one all-reduce over a flat buffer (what DDP does, done
by hand because one training step calls the decoder several times before its backward)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_from_env(device: torch.device) -> World:
    """Join the process group when started by ``torchrun`` (gloo on CPU, NCCL on GPU)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return World(dist.get_rank(), dist.get_world_size())


def rank_device(device: str | None) -> str | None:
    """``cuda`` -> ``cuda:<LOCAL_RANK>`` under torchrun (one GPU per process)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and device in ("cuda", "auto") \
            and torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return device


def barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier()


def broadcast_parameters(params: list[torch.nn.Parameter], world: World) -> None:
    if world.size > 1:
        with torch.no_grad():
            for p in params:
                dist.broadcast(p.data, 0)


def average_gradients(params: list[torch.nn.Parameter], world: World) -> None:
    """Replace each parameter's gradient by the mean over ranks (missing grads count as 0)."""
    if world.size <= 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world.size
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def all_sum(value: float, world: World, device: torch.device | None = None) -> float:
    if world.size <= 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t)


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
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()
