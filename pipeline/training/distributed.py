"""One process or many: the same loop runs alone or under ``torchrun`` (DDP), on CUDA (NCCL) or CPU (gloo)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init(device: str) -> Dist:
    """Join the process group ``torchrun`` describes in the environment; a plain run is world size 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if device.startswith("cuda"):
            torch.cuda.set_device(local)
        dist.init_process_group(backend)
    return Dist(rank, world, local)


def device_for(d: Dist, device: str) -> str:
    """Each DDP process on CUDA owns the GPU of its local rank."""
    return f"cuda:{d.local_rank}" if device.startswith("cuda") and d.enabled else device


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def mean(d: Dist, value: float) -> float:
    """A metric averaged over processes (each saw a different shard)."""
    if not d.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / d.world


def shutdown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()
