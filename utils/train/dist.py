"""Distributed training helpers. Rank and world size are read from the environment on every call (torchrun sets
``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``), never at import time, so importing this module has no side effects.

A single-process run has ``rank() == -1`` and ``world_size() == 1``, YOLOv5's convention.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from utils.log import LOGGER


def rank() -> int:
    """Global rank of this process, -1 when not launched by torchrun."""
    return int(os.environ.get("RANK", -1))


def local_rank() -> int:
    """Rank of this process on its machine, -1 when not launched by torchrun."""
    return int(os.environ.get("LOCAL_RANK", -1))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", 1))


def local_world_size() -> int:
    """Processes of this run on this machine (torchrun's ``LOCAL_WORLD_SIZE``), 1 when not launched by torchrun."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))


def sampler_rank() -> int:
    """This process's rank for data sharding: -1 (no DistributedSampler) unless a process group is running.

    ``torchrun --nproc_per_node 1`` sets ``LOCAL_RANK`` but starts no group; a DistributedSampler would fail there.
    """
    return rank() if is_distributed() else -1


def is_main_process() -> bool:
    """True for the process that logs, plots and saves: rank 0, or the only process."""
    return rank() in (-1, 0)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def init_distributed(device: torch.device, timeout_s: int = 10800) -> torch.device:
    """Join the process group torchrun set up: NCCL on CUDA (one GPU per local rank), gloo on the CPU.

    Returns the device this rank trains on. A no-op returning ``device`` for single-process runs.
    """
    if world_size() <= 1 or local_rank() == -1:
        return device
    if device.type == "cuda":  # select_device already picked this rank's GPU from --device and LOCAL_RANK
        torch.cuda.set_device(device)
        backend = "nccl" if dist.is_nccl_available() else "gloo"
    else:
        backend = "gloo"
    if not is_distributed():
        # device_id binds NCCL to this rank's GPU; without it the first collective (a barrier) guesses GPU
        # ``rank % device_count``, which is wrong for --device 2,3
        bound = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s), **bound)
    return device


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Let rank 0 run the body first (dataset generation, label caches), the other ranks afterwards."""
    if is_distributed() and not is_main_process():
        dist.barrier()
    yield
    if is_distributed() and is_main_process():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank (unchanged for single-process runs)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_tensor_(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite ``t`` in place with rank ``src``'s values."""
    if is_distributed():
        dist.broadcast(t, src=src)
    return t


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel / DataParallel wrapper."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


def wrap_ddp(model: nn.Module, device: torch.device, sync_bn: bool = False) -> nn.Module:
    """SyncBatchNorm (CUDA only) and DistributedDataParallel for a multi-process run; ``model`` unchanged otherwise."""
    if not is_distributed():
        return model
    if sync_bn:
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model).to(device)
            if is_main_process():
                LOGGER.info("Using SyncBatchNorm()")
        elif is_main_process():
            LOGGER.warning(
                "WARNING ⚠️ --sync-bn needs CUDA (SyncBatchNorm has no CPU kernel), keeping per-process BatchNorm"
            )
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, output_device=ids[0] if ids else None)
