"""Multi-process runs on PyTorch's own engine: process groups from torchrun's environment, shards, gathering.

Under ``torchrun --nproc_per_node N -m advrobust ...`` every process reads RANK / WORLD_SIZE / LOCAL_RANK /
MASTER_ADDR / MASTER_PORT from the environment; ``init_from_env`` joins the group (nccl on GPU, gloo on CPU).
Without torchrun nothing changes: one process, world size 1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def info() -> DistInfo:
    """The current process group (world size 1 when none is initialised)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    return DistInfo(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        backend=str(dist.get_backend()),
    )


def init_from_env(device: torch.device | None = None) -> DistInfo:
    """Join the process group torchrun describes in the environment (no-op when not under torchrun).

    The backend is nccl when ``device`` is CUDA, gloo otherwise; on CUDA the process uses GPU LOCAL_RANK.
    """
    if dist.is_available() and dist.is_initialized():
        return info()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return DistInfo()
    cuda = device is not None and device.type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return info()


def local_device(device: torch.device) -> torch.device:
    """On CUDA under torchrun, this process's own GPU; otherwise ``device`` unchanged."""
    if device.type == "cuda" and info().enabled:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (a list of one object without a group)."""
    group = info()
    if not group.enabled:
        return [obj]
    gathered: list[Any] = [None] * group.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier() -> None:
    """Wait for every rank (no-op without a group)."""
    if info().enabled:
        dist.barrier()


def shutdown(*, wait: bool = True) -> None:
    """Leave the process group cleanly; no-op without one. With ``wait`` every rank first waits for the
    others (pass False after an error, when the others may never arrive).

    Exiting with a live gloo group can abort the process ("terminate called without an active exception").
    """
    if dist.is_available() and dist.is_initialized():
        if wait and info().enabled:
            dist.barrier()
        dist.destroy_process_group()
