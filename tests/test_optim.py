import math

import pytest
import torch

from models.yolo import DetectionModel
from utils.train.optim import (
    accumulate_steps,
    build_optimizer,
    lr_lambda,
    parameter_groups,
    scaled_weight_decay,
    warmup,
    warmup_iterations,
)

HYP = {"lr0": 0.01, "momentum": 0.937, "warmup_momentum": 0.8, "warmup_bias_lr": 0.1}


@pytest.fixture(scope="module")
def yolov5n():
    return DetectionModel("yolov5n.yaml")


def test_parameter_groups_split_yolov5n_like_yolov5(yolov5n, capsys):
    biases, decayed, no_decay = parameter_groups(yolov5n)
    # 57 Conv+BN blocks and 3 Detect convs: 60 conv weights, 57 BN weights, 57 BN biases + 3 Detect biases
    assert (len(biases), len(decayed), len(no_decay)) == (60, 60, 57)
    assert all(p.dim() == 1 for p in biases + no_decay) and all(p.dim() == 4 for p in decayed)
    opt = build_optimizer(yolov5n, "SGD", 0.01, 0.937, 5e-4)
    assert "with parameter groups 57 weight(decay=0.0), 60 weight(decay=0.0005), 60 bias" in capsys.readouterr().out
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 5e-4, 0.0]
    assert opt.param_groups[0]["nesterov"] and opt.param_groups[0]["momentum"] == 0.937


def test_adam_uses_momentum_as_beta1_and_unknown_name_fails(yolov5n):
    opt = build_optimizer(yolov5n, "AdamW", 0.001, 0.9, 5e-4)
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[1]["betas"] == (0.9, 0.999)
    with pytest.raises(ValueError, match="--optimizer RMSprop"):
        build_optimizer(yolov5n, "RMSprop")


def test_lr_schedules_known_values():
    lin, cos = lr_lambda(10, 0.01), lr_lambda(10, 0.01, cosine=True)
    assert lin(0) == cos(0) == 1.0
    assert lin(10) == pytest.approx(0.01) and cos(10) == pytest.approx(0.01)
    assert lin(5) == pytest.approx(0.505) and cos(5) == pytest.approx(0.505)
    assert lin(2.5) == pytest.approx(0.7525)
    assert cos(2.5) == pytest.approx((1 - math.cos(math.pi / 4)) / 2 * -0.99 + 1)  # 0.85502


def test_accumulation_and_weight_decay_scaling():
    assert [accumulate_steps(b) for b in (1, 16, 24, 64, 128)] == [64, 4, 3, 1, 1]
    assert scaled_weight_decay(5e-4, 16, 4) == pytest.approx(5e-4)
    assert scaled_weight_decay(5e-4, 24, 3) == pytest.approx(5.625e-4)
    # --nbs 16 (the shapes job): a step per batch of 16, with the full weight decay per step
    assert [accumulate_steps(b, 16) for b in (4, 16, 32)] == [4, 1, 1]
    assert scaled_weight_decay(5e-4, 16, 1, 16) == pytest.approx(5e-4)
    assert warmup_iterations(3.0, 50) == 150 and warmup_iterations(3.0, 8) == 100 and warmup_iterations(0, 8) == 0


def test_warmup_ramps_lr_momentum_and_accumulation():
    p = [torch.nn.Parameter(torch.zeros(1)) for _ in range(3)]
    opt = torch.optim.SGD([p[0]], lr=0.01, momentum=0.937)
    opt.add_param_group({"params": [p[1]]})
    opt.add_param_group({"params": [p[2]]})
    for g in opt.param_groups:
        g["initial_lr"] = 0.01
    assert warmup(opt, 0, 100, 1.0, HYP, 16) == 1
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.0, 0.0]
    assert opt.param_groups[0]["momentum"] == pytest.approx(0.8)
    assert warmup(opt, 50, 100, 0.5, HYP, 16) == 2  # interp 2.5 rounds half to even, as numpy does
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.0525, 0.0025, 0.0025])
    assert warmup(opt, 100, 100, 0.5, HYP, 16) == 4
    assert warmup(opt, 100, 100, 0.5, HYP, 16, nominal=16) == 1 and warmup(opt, 100, 100, 0.5, HYP, 8, 32) == 4
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.005] * 3)
    assert opt.param_groups[2]["momentum"] == pytest.approx(0.937)


def test_fused_kernels_on_cpu_and_cuda_parameters_only():
    """CPU (and CUDA) parameters get the fused optimizer step; parameters elsewhere keep the per-tensor loop."""
    from utils.train.optim import build_optimizer

    cpu = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    meta = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).to("meta")
    for name in ("SGD", "Adam", "AdamW"):
        assert all(g["fused"] for g in build_optimizer(cpu, name).param_groups)
        assert not any(g.get("fused") for g in build_optimizer(meta, name).param_groups)
