"""Structured (channel) pruning through ``torch-pruning``: whole filters are removed, so the model gets faster.

``--prune`` (``utils.inference.prune``) zeros single weights and only shrinks the stored file; here the
dependency graph of ``torch_pruning`` removes output channels of convolutions together with everything coupled
to them (the BatchNorm, the next layers' input channels, both sides of a residual add, the slices of a Concat),
so every tensor really gets smaller. The Detect output convolutions keep their ``na * (5 + nc)`` outputs.

A pruned model describes itself: ``model.yaml["channel_widths"]`` maps every Conv2d name to
``[out_channels, in_channels, groups]``. ``DetectionModel`` applies it right after building the layers from the
YAML, so checkpoints of a pruned model rebuild at their pruned widths everywhere a model is built from a
checkpoint (val, detect, export, benchmarks, train's ``--weights``/``--resume``/EMA), and still load with
``torch.load(weights_only=True)`` and the strict, shape-checked loader.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from utils.errors import UsageError
from utils.log import LOGGER

METHODS = ("l1", "l2", "bn-scale")
WIDTHS_KEY = "channel_widths"


def _importance(method: str):
    import torch_pruning as tp

    if method == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if method == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if method == "bn-scale":
        return tp.importance.BNScaleImportance()
    raise UsageError(f"--prune-method {method}: expected one of {', '.join(METHODS)}")


def conv_widths(model: nn.Module) -> dict[str, list[int]]:
    """``{name: [out_channels, in_channels, groups]}`` of every Conv2d of ``model`` (names relative to it)."""
    return {n: [m.out_channels, m.in_channels, m.groups] for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def _resized_conv(conv: nn.Conv2d, out_ch: int, in_ch: int, groups: int) -> nn.Conv2d:
    return nn.Conv2d(
        in_ch,
        out_ch,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )


def apply_conv_widths(model: nn.Module, widths: dict[str, list[int]]) -> None:
    """Resize the freshly built ``model`` in place to the recorded ``widths`` (see ``conv_widths``).

    Each listed Conv2d is replaced by a new one of the recorded shape, and the BatchNorm beside it (our ``Conv``
    block's ``bn``) by one of the new width. The Detect head's output convolutions keep the outputs they were
    built with, so a pruned checkpoint can be fine-tuned for another number of classes. Weights are not kept:
    the caller loads them (strictly) afterwards. Raises ``ValueError`` for a name the model does not have.
    """
    detect = getattr(model, "model", [None])[-1]
    head = {id(c) for c in getattr(detect, "m", [])} if hasattr(detect, "na") else set()
    modules = dict(model.named_modules())
    for name, (out_ch, in_ch, groups) in widths.items():
        conv = modules.get(name)
        if not isinstance(conv, nn.Conv2d):
            raise ValueError(f"channel_widths: the model has no Conv2d named {name!r}")
        if id(conv) in head:
            out_ch = conv.out_channels
        if (out_ch, in_ch, groups) == (conv.out_channels, conv.in_channels, conv.groups):
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = modules[parent_name] if parent_name else model
        setattr(parent, attr, _resized_conv(conv, out_ch, in_ch, groups))
        bn = getattr(parent, "bn", None)
        if attr == "conv" and isinstance(bn, nn.BatchNorm2d) and bn.num_features != out_ch:
            new_bn = nn.BatchNorm2d(out_ch, eps=bn.eps, momentum=bn.momentum)
            parent.bn = new_bn


def _bn_scaled_convs(model: nn.Module) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """(conv, bn) pairs of our ``Conv`` blocks that still have their BatchNorm (an unfused model)."""
    return [
        (m.conv, m.bn)
        for m in model.modules()
        if isinstance(getattr(m, "conv", None), nn.Conv2d) and isinstance(getattr(m, "bn", None), nn.BatchNorm2d)
    ]


def _bn_factor(bn: nn.BatchNorm2d) -> torch.Tensor:
    s = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    return torch.where(s.abs() < 1e-12, torch.ones_like(s), s).view(-1, 1, 1, 1)  # a dead channel: no rescale


@torch.no_grad()
def _fold_bn_scale(pairs: list[tuple[nn.Conv2d, nn.BatchNorm2d]], undo: bool = False) -> None:
    """Multiply each conv's filters by its BatchNorm's ``gamma / sqrt(var + eps)`` (``undo``: divide them).

    Weight magnitudes are then compared at the scale the channels act at, as in the fused model. Done around the
    pruning step only: the kept channels keep their BatchNorm values, so dividing afterwards restores them exactly
    up to float rounding.
    """
    for conv, bn in pairs:
        f = _bn_factor(bn)
        conv.weight.data = conv.weight.data / f if undo else conv.weight.data * f


def _nearest_multiple_ratios(model: nn.Module, ratio: float, round_to: int, ignored: set[int]) -> dict:
    """Per-conv pruning ratios whose kept widths are the nearest multiple of ``round_to`` to ``(1 - ratio)`` of
    the width (at least ``round_to``); torch-pruning's own ``round_to`` rounds down, so 5% of 16 would go to 8."""
    out = {}
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and id(m) not in ignored and m.groups == 1 and m.out_channels > round_to:
            keep = max(round_to, round(m.out_channels * (1 - ratio) / round_to) * round_to)
            out[m] = max(m.out_channels - keep - 0.25, 0) / m.out_channels  # it keeps int(width * (1 - ratio))
    return out


def _check_prunable(model: nn.Module, ratio: float, method: str) -> None:
    if not 0 < ratio < 1:
        raise UsageError(f"--prune-channels {ratio}: expected a fraction of channels between 0 and 1")
    _importance(method)  # unknown method: one line before any work
    if not hasattr(model, "yaml") or not hasattr(model, "detect"):
        raise UsageError("--prune-channels: only a single YOLOv5 DetectionModel can be channel-pruned")
    if any(type(m).__name__ == "TorchvisionBackbone" for m in model.modules()):
        raise UsageError("--prune-channels: models with a torchvision backbone are not supported (YOLOv5 YAMLs are)")


def channel_prune(
    model: nn.Module,
    ratio: float,
    method: str = "l1",
    global_pruning: bool = False,
    round_to: int = 8,
    imgsz: int = 256,
    verbose: bool = False,
) -> dict[str, list[int]]:
    """Remove ``ratio`` of the output channels of every prunable convolution of ``model``, in place.

    Args:
        model: a ``DetectionModel``, fused or not (``bn-scale`` ranks channels by BatchNorm weights, so it needs an
            unfused model). Train/eval mode and ``requires_grad`` are restored afterwards.
        ratio: fraction of channels removed; per layer, or on average over the network with ``global_pruning``
            (one ranking for all layers, each layer keeping at least 10% of its channels).
        method: channel importance: ``l1``/``l2`` norm of the group's weights, or ``bn-scale`` (|BN gamma|).
        round_to: kept widths are multiples of this (8 suits the CPU's SIMD width and GPU tensor cores).
        imgsz: size of the square dummy image the dependency graph is traced with.

    Returns the new ``conv_widths``, also recorded as ``model.yaml["channel_widths"]``. Prints
    ``Channel pruning (l1, per layer 0.3): 1872157 -> 866525 parameters, 4.5 -> 2.2 GFLOPs``.
    """
    import torch_pruning as tp

    from models.yolo import model_flops

    _check_prunable(model, ratio, method)
    n0, f0 = sum(p.numel() for p in model.parameters()), model_flops(model, 640)
    was_training = model.training
    trainable = any(p.requires_grad for p in model.parameters())
    model.eval()  # BatchNorm statistics must not move while the graph is traced
    for p in model.parameters():
        p.requires_grad_(True)  # torch-pruning traces the graph through autograd
    detect = model.detect
    detect._grid_cache = {}  # inference-mode grids cannot join an autograd trace
    p0 = next(model.parameters())
    example = torch.zeros(1, 3, imgsz, imgsz, device=p0.device, dtype=p0.dtype)
    per_layer = None if global_pruning else _nearest_multiple_ratios(model, ratio, round_to, set(map(id, detect.m)))
    pruner = tp.pruner.MetaPruner(
        model,
        example,
        importance=_importance(method),
        global_pruning=global_pruning,
        pruning_ratio=ratio,
        pruning_ratio_dict=per_layer,
        max_pruning_ratio=0.9,
        ignored_layers=list(detect.m),
        round_to=round_to if global_pruning else None,
        output_transform=lambda out: out[0] if isinstance(out, tuple) else out,
    )
    pairs = _bn_scaled_convs(model) if method != "bn-scale" else []
    _fold_bn_scale(pairs)
    try:
        pruner.step()
    finally:
        _fold_bn_scale(_bn_scaled_convs(model) if pairs else [], undo=True)
    detect._grid_cache = {}
    model.train(was_training)
    for p in model.parameters():  # torch-pruning replaced the pruned parameters by new ones
        p.requires_grad_(trainable)
    widths = conv_widths(model)
    model.yaml = {**copy.deepcopy(model.yaml), WIDTHS_KEY: widths}
    n1, f1 = sum(p.numel() for p in model.parameters()), model_flops(model, 640)
    scope = "global" if global_pruning else "per layer"
    LOGGER.info(f"Channel pruning ({method}, {scope} {ratio:g}): {n0} -> {n1} parameters, {f0:.1f} -> {f1:.1f} GFLOPs")
    if verbose:
        LOGGER.info(f"{'layer':>28s} {'out':>5s} {'in':>5s}")
        for name, (out_ch, in_ch, _) in widths.items():
            LOGGER.info(f"{name:>28s} {out_ch:>5d} {in_ch:>5d}")
    return widths
