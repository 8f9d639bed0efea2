"""Data parallelism with PyTorch's own engine: ``torchrun`` sets RANK / WORLD_SIZE / LOCAL_RANK.

``torchrun --nproc_per_node=4 -m part_point_ros.cli.main train --config ...`` runs one process per
GPU (NCCL); on CPU the same code runs with gloo (this is how it is tested).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> tuple[DistInfo, str]:
    """Join the process group torchrun describes (if any); return it and this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank), device


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a small CPU float64 tensor over ranks (identity in a single process)."""
    if not info.enabled:
        return values
    backend = dist.get_backend()
    moved = values.cuda() if backend == "nccl" else values
    dist.all_reduce(moved, op=dist.ReduceOp.SUM)
    return moved.cpu()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
