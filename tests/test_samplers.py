"""utils/data/samplers.py: DDP sampling of rectangular batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import distributed

from tests.conftest import copy_coco_subset
from utils.data.datasets import YoloDataset, make_loader
from utils.data.samplers import DistributedRectSampler


def ranks(batch_index, batch_size, world):
    return [list(DistributedRectSampler(np.array(batch_index), batch_size, world, r)) for r in range(world)]


def test_whole_batches_round_robin_with_the_short_one_filled_and_equal_counts():
    # 4 dataset batches of 3 (the last holds 1 image) over 2 ranks
    assert ranks([0, 0, 0, 1, 1, 1, 2, 2, 2, 3], 3, 2) == [[0, 1, 2, 6, 7, 8], [3, 4, 5, 9, 9, 9]]
    # 3 batches over 2 ranks: rank 1 repeats the first batch so both take 2 steps
    assert ranks([0, 0, 1, 1, 2, 2], 2, 2) == [[0, 1, 4, 5], [2, 3, 0, 1]]
    # more ranks than batches
    assert ranks([0, 0], 2, 3) == [[0, 1], [0, 1], [0, 1]]
    with pytest.raises(ValueError, match="rank 2 outside 0..1"):
        DistributedRectSampler(np.zeros(4), 4, 2, 2)


@pytest.fixture(scope="module")
def rect32(coco128, tmp_path_factory) -> YoloDataset:
    """32 coco128 images of mixed aspect ratios (landscape, portrait, square) as rectangular batches of 4."""
    root = copy_coco_subset(coco128, tmp_path_factory.mktemp("rect32"), 32)
    return YoloDataset(str(root / "images" / "train"), 80, img_size=128, batch_size=4, rect=True, stride=32)


def test_each_rank_batches_one_rectangular_shape(rect32):
    """The bug: DistributedSampler hands rank 0 images 24, 26, 28, 30, which span two padded shapes."""
    assert len({tuple(s) for s in rect32.batch_shapes}) > 1  # the data really has several shapes
    shapes_seen = []
    for r in range(2):
        loader = make_loader(rect32, 4, workers=0, sampler=DistributedRectSampler(rect32.batch_index, 4, 2, r))
        batches = [(ims.shape, paths) for ims, _, paths, _ in loader]
        assert len(batches) == 4  # 8 dataset batches, 4 per rank
        shapes_seen += [tuple(shape[2:]) for shape, _ in batches]
    assert sorted(shapes_seen) == sorted(tuple(s) for s in rect32.batch_shapes)  # every batch seen exactly once
    plain = distributed.DistributedSampler(rect32, num_replicas=2, rank=0, shuffle=False)
    with pytest.raises(RuntimeError, match="stack expects each tensor to be equal size"):
        list(make_loader(rect32, 4, workers=0, sampler=plain))


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # the core count is faked
def test_make_loader_picks_the_rect_sampler_and_shares_cores(rect32, monkeypatch):
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)
    loader = make_loader(rect32, 4, rank=1, workers=8)
    assert isinstance(loader.sampler, DistributedRectSampler) and len(loader) == 4
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")  # 8 ranks on a 16-core machine: 2 workers each, not 8
    assert make_loader(rect32, 4, workers=8).num_workers == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert make_loader(rect32, 4, workers=8).num_workers == 4  # capped by the batch size
