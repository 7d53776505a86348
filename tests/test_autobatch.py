"""utils/train/autobatch.py: the batch-size probe (on the CPU here) and the fit."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models.yolo import DetectionModel
from utils.inference.prune import conv_sparsity, global_l1_prune
from utils.train.autobatch import fit_batch_size, profile_batches


def test_probe_runs_on_a_pruned_model_and_leaves_it_untouched(capsys):
    """--prune with --batch-size -1: copy.deepcopy refused the pruned model's non-leaf ``weight``."""
    torch.manual_seed(0)
    model = DetectionModel("yolov5n.yaml").eval()
    global_l1_prune(model, 0.3)
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    before = bn.running_mean.clone()
    peaks = iter([0.5, 0.7])
    sizes, used = profile_batches(model, 64, torch.device("cpu"), amp=True, peak_gb=lambda: next(peaks), sizes=(1, 2))
    assert (sizes, used) == ([1, 2], [0.5, 0.7])
    assert torch.equal(bn.running_mean, before) and not model.training  # the probe trained a copy
    assert all(p.grad is None for p in model.parameters())
    assert conv_sparsity(model) == pytest.approx(0.3, abs=0.002)
    assert "failed" not in capsys.readouterr().out


class FailsFrom(nn.Module):
    """A model whose training step fails from ``n`` images on, as cuDNN does when it cannot get its workspace."""

    def __init__(self, n: int):
        super().__init__()
        self.n, self.conv = n, nn.Conv2d(3, 4, 3)

    def forward(self, x):
        if x.shape[0] >= self.n:
            raise RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR\nmore lines")
        return [self.conv(x)]


def test_a_cudnn_runtime_error_ends_the_probe_like_an_out_of_memory(capsys):
    sizes, used = profile_batches(FailsFrom(4), 32, torch.device("cpu"), amp=False, peak_gb=lambda: 1.0)
    assert sizes == [1, 2] and used == [1.0, 1.0]
    assert "AutoBatch: batch 4 failed (cuDNN error: CUDNN_STATUS_INTERNAL_ERROR)" in capsys.readouterr().out


def test_fit_reads_the_batch_off_the_line():
    # 1 GB fixed + 0.25 GB per image: a 5.1 GB budget fits 16 images
    assert fit_batch_size([1, 2, 4, 8], [1.25, 1.5, 2.0, 3.0], 5.1) == 16
    # the EMA and optimizer state come off the budget first (autobatch passes the budget net of them)
    assert fit_batch_size([1, 2, 4, 8], [1.25, 1.5, 2.0, 3.0], 5.1 - 1.0) == 12
    assert fit_batch_size([1], [1.0], 5.0) is None and fit_batch_size([1, 2], [1.0, 1.0], 5.0) is None
    assert fit_batch_size([1, 2], [1.0, 2.0], 1e6) == 1024 and fit_batch_size([1, 2], [1.0, 2.0], 0.1) == 1
