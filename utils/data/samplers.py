"""Samplers for multi-process (DDP) training."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler


class DistributedRectSampler(Sampler[int]):
    """``--rect`` under DDP: each rank gets whole rectangular batches of the aspect-ratio-sorted dataset.

    A plain ``DistributedSampler`` gives rank r every W-th image, so one per-rank batch mixes several padded shapes
    and cannot be stacked. Here the dataset's batches (``batch_index``, consecutive runs of equal values, each at
    most ``batch_size`` images) are dealt round-robin: rank r gets batches r, r + W, r + 2W, ... so at every step
    the ranks work on neighbouring aspect ratios. A short last batch is filled with its own images and the first
    batches are repeated until every rank has the same number of full batches (DDP needs equal step counts).
    The order is the same every epoch, as in single-process rectangular training.
    """

    def __init__(
        self, batch_index: np.ndarray, batch_size: int, num_replicas: int | None = None, rank: int | None = None
    ):
        num_replicas = dist.get_world_size() if num_replicas is None else num_replicas
        rank = dist.get_rank() if rank is None else rank
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside 0..{num_replicas - 1}")
        batch_index = np.asarray(batch_index)
        starts = np.flatnonzero(np.diff(batch_index)) + 1
        blocks = [b.tolist() for b in np.split(np.arange(len(batch_index)), starts)] if len(batch_index) else []
        if any(len(b) > batch_size for b in blocks):
            raise ValueError(f"dataset batches of up to {max(map(len, blocks))} images for a batch size {batch_size}")
        blocks = [(b * batch_size)[:batch_size] for b in blocks]  # repeat a short batch's own images
        total = -(-len(blocks) // num_replicas) * num_replicas
        blocks = [blocks[i % len(blocks)] for i in range(total)] if blocks else []
        self.indices = [i for b in blocks[rank::num_replicas] for i in b]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)

    def set_epoch(self, epoch: int) -> None:
        """Same interface as ``DistributedSampler``; rectangular batches keep their order."""
