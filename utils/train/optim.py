"""Optimizer parameter groups, learning-rate schedules, warmup and gradient accumulation for training."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from utils.log import LOGGER
from utils.options import OPTIMIZERS

NOMINAL_BATCH = 64  # the batch size the hyperparameters were tuned for: gradients are accumulated up to it


def parameter_groups(model: nn.Module) -> tuple[list, list, list]:
    """``(biases, weights with decay, normalisation weights without decay)``, each a list of parameters.

    Weight decay only applies to conv/linear weights: decaying biases or BatchNorm scales towards zero fights the
    normalisation instead of regularising.
    """
    biases, decayed, no_decay = [], [], []
    norm_types = tuple(v for k, v in vars(nn).items() if "Norm" in k and isinstance(v, type))
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if name == "bias":
                biases.append(p)
            elif isinstance(module, norm_types):
                no_decay.append(p)
            else:
                decayed.append(p)
    return biases, decayed, no_decay


def build_optimizer(
    model: nn.Module, name: str = "SGD", lr: float = 0.01, momentum: float = 0.937, decay: float = 5e-4
) -> torch.optim.Optimizer:
    """SGD (Nesterov), Adam or AdamW over ``parameter_groups(model)``; ``momentum`` is Adam's beta1.

    Prints ``optimizer: SGD(lr=0.01) with parameter groups 57 weight(decay=0.0), 60 weight(decay=0.0005), 60 bias``.
    """
    biases, decayed, no_decay = parameter_groups(model)
    # one fused kernel over all tensors instead of a loop of small ops per tensor: yolov5n's AdamW step 15 -> 3 ms on
    # the CPU (about 4% of a training step); same update, fp32 state
    fused = {"fused": True} if _fusable(biases + decayed + no_decay) else {}
    if name == "SGD":
        opt = torch.optim.SGD(biases, lr=lr, momentum=momentum, nesterov=True, **fused)
    elif name == "Adam":
        opt = torch.optim.Adam(biases, lr=lr, betas=(momentum, 0.999), **fused)
    elif name == "AdamW":
        opt = torch.optim.AdamW(biases, lr=lr, betas=(momentum, 0.999), weight_decay=0.0, **fused)
    else:
        raise ValueError(f"--optimizer {name}: expected one of {', '.join(OPTIMIZERS)}")
    opt.add_param_group({"params": decayed, "weight_decay": decay})
    opt.add_param_group({"params": no_decay, "weight_decay": 0.0})
    LOGGER.info(
        f"optimizer: {type(opt).__name__}(lr={lr}) with parameter groups {len(no_decay)} weight(decay=0.0), "
        f"{len(decayed)} weight(decay={decay}), {len(biases)} bias"
    )
    return opt


def _fusable(params: list[nn.Parameter]) -> bool:
    """The fused optimizer kernels exist for floating-point parameters on the CPU and CUDA, all on one device."""
    devices = {p.device for p in params}
    return (
        len(devices) == 1 and next(iter(devices)).type in ("cpu", "cuda") and all(p.is_floating_point() for p in params)
    )


def lr_lambda(epochs: int, lrf: float, cosine: bool = False) -> Callable[[float], float]:
    """LR multiplier per epoch: 1 at epoch 0 falling to ``lrf`` at epoch ``epochs``, linearly or as a half cosine."""
    if cosine:
        return lambda x: ((1 - math.cos(x * math.pi / epochs)) / 2) * (lrf - 1) + 1
    return lambda x: (1 - x / epochs) * (1.0 - lrf) + lrf


def accumulate_steps(batch_size: int, nominal: int = NOMINAL_BATCH) -> int:
    """Batches whose gradients are summed before one optimizer step, so each step sees about ``nominal`` images."""
    return max(round(nominal / batch_size), 1)


def scaled_weight_decay(weight_decay: float, batch_size: int, accumulate: int, nominal: int = NOMINAL_BATCH) -> float:
    """Weight decay per optimizer step, proportional to the images each step really sees."""
    return weight_decay * batch_size * accumulate / nominal


def warmup_iterations(warmup_epochs: float, nb: int) -> int:
    """Warmup length in iterations: ``warmup_epochs`` epochs of ``nb`` batches, at least 100 (0 epochs: none)."""
    return max(round(warmup_epochs * nb), 100) if warmup_epochs > 0 else 0


def warmup(
    optimizer: torch.optim.Optimizer,
    ni: int,
    nw: int,
    epoch_factor: float,
    hyp: dict,
    batch_size: int,
    nominal: int = NOMINAL_BATCH,
) -> int:
    """Set the warmup learning rates and momentum for iteration ``ni`` of ``nw``; returns the accumulation steps.

    Bias LR falls from ``warmup_bias_lr`` and the other groups' LR rises from 0, all towards ``initial_lr *
    epoch_factor`` (the scheduled value for this epoch); SGD momentum rises from ``warmup_momentum`` to
    ``momentum``; accumulation grows from 1 to ``nominal / batch_size``.
    """
    xi = [0, nw]
    accumulate = max(1, int(np.interp(ni, xi, [1, nominal / batch_size]).round()))
    for j, group in enumerate(optimizer.param_groups):
        start = hyp["warmup_bias_lr"] if j == 0 else 0.0
        group["lr"] = float(np.interp(ni, xi, [start, group["initial_lr"] * epoch_factor]))
        if "momentum" in group:
            group["momentum"] = float(np.interp(ni, xi, [hyp["warmup_momentum"], hyp["momentum"]]))
    return accumulate
