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

METHODS = ("l1", "l2", "bn-scale", "activation")
DEFAULT_METHOD = "activation"  # every --prune-method and method= default
WIDTHS_KEY = "channel_widths"


def _importance(method: str, stats: dict | None = None):
    import torch_pruning as tp

    if method == "activation":
        return _ReconstructionImportance(stats or {})
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
    the width (at least ``round_to``, so a layer that narrow is kept whole); torch-pruning's own ``round_to``
    rounds down, so 5% of 16 would go to 8."""
    out = {}
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and id(m) not in ignored and m.groups == 1:
            keep = max(round_to, round(m.out_channels * (1 - ratio) / round_to) * round_to)
            out[m] = max(m.out_channels - keep - 0.25, 0) / m.out_channels  # it keeps int(width * (1 - ratio))
    return out


def calibration_batch(source, imgsz: int = 320, n: int = 16) -> torch.Tensor | None:
    """Up to ``n`` images of ``source`` (a folder, glob, ``.txt`` list, image file or a list of those: a dataset
    split or detect.py's ``--source``) letterboxed to ``imgsz`` square, as Tensor[n, 3, imgsz, imgsz] in 0-1 for
    ``channel_prune(calibration=...)``; spread evenly over the files. ``None`` when it names no image."""
    import numpy as np

    from utils.data.sources import LoadImages, SourceError

    try:
        found = LoadImages(source, img_size=imgsz, auto=False)
    except SourceError:
        return None
    files = found.files[: found.ni]  # images first, then videos
    if not files:
        return None
    step = max(len(files) // n, 1)
    ims = [im for _, im, *_ in LoadImages(files[::step][:n], img_size=imgsz, auto=False, skip_corrupt=True)]
    return torch.from_numpy(np.stack(ims)).float() / 255 if ims else None


@torch.no_grad()
def _input_stats(model: nn.Module, images: torch.Tensor) -> dict[nn.Conv2d, list[torch.Tensor]]:
    """``[mean, variance]`` per input channel of every Conv2d's input over ``images`` (a forward pass with hooks)."""
    sums: dict[nn.Conv2d, list[torch.Tensor]] = {}

    def hook(module, args):
        x = args[0].float()
        hw = x.shape[2] * x.shape[3]
        s1, s2 = x.sum((0, 2, 3)) / hw, x.square().sum((0, 2, 3)) / hw
        prev = sums.get(module)
        sums[module] = [s1, s2] if prev is None else [prev[0] + s1, prev[1] + s2]

    p0 = next(model.parameters())
    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        for chunk in images.split(8):
            model(chunk.to(p0.device, p0.dtype))
    finally:
        for h in handles:
            h.remove()
    n = len(images)
    return {m: [s1 / n, (s2 / n - (s1 / n).square()).clamp(min=0)] for m, (s1, s2) in sums.items()}


class _ReconstructionImportance:
    """``--prune-method activation``: a channel's importance is the error its removal leaves once its mean is
    compensated (``_compensate``): its activation variance on the calibration images times the squared weights of
    every convolution that reads it (BatchNorm-scaled, as the channels act). A channel that hardly varies is
    replaced by a constant almost exactly, whatever its weight norms."""

    def __init__(self, stats: dict):
        self.stats = stats

    @torch.no_grad()
    def __call__(self, group):
        score = torch.zeros(len(group[0].idxs))
        found = False
        for conv, idx, root, (_, var) in _readers(group, group._DG, self.stats):
            if any(r is None for r in root):
                continue
            w2 = conv.weight.detach()[:, idx].float().square().sum((0, 2, 3)).cpu()
            score.scatter_add_(0, torch.tensor([int(r) for r in root], dtype=torch.long), var[idx].cpu() * w2)
            found = True
        return score if found else None


def _readers(group, graph, stats: dict):
    """``(conv, removed input indices, their root indices, [mean, var] of its inputs)`` for every plain convolution
    that ``group`` takes input channels from and that the calibration pass saw (``_input_stats``)."""
    for item in group:
        conv = item.dep.target.module
        if not (isinstance(conv, nn.Conv2d) and graph.is_in_channel_pruning_fn(item.dep.handler)) or conv.groups != 1:
            continue
        stat = stats.get(conv)
        if stat is not None and stat[0].numel() == conv.in_channels:
            yield conv, torch.tensor([int(i) for i in item.idxs], dtype=torch.long), item.root_idxs, stat


@torch.no_grad()
def _compensate(group, graph, stats: dict, bn_of: dict[nn.Conv2d, nn.BatchNorm2d], scaled: bool) -> None:
    """Before ``group`` is pruned: for every convolution that loses input channels, add what those channels
    contributed on average (their mean activation times the filter taps that read them) to its output, through its
    bias or, with a BatchNorm after it (``bn_of``), by lowering the BatchNorm's running mean by the same amount. The
    calibration statistics are kept per conv and shrunk with its inputs, as groups are pruned one after another.
    ``scaled``: the weights carry their BatchNorm's scale while l1/l2 rank them (``_fold_bn_scale``)."""
    for conv, idx, _, stat in list(_readers(group, graph, stats)):
        delta = (conv.weight[:, idx].float().sum((2, 3)) * stat[0][idx].to(conv.weight.device)).sum(1)
        keep = torch.ones(stat[0].numel(), dtype=torch.bool)
        keep[idx] = False
        stats[conv] = [t[keep] for t in stat]
        bn = bn_of.get(conv)
        if bn is not None:  # conv -> BN: y + delta through BN == running_mean - delta (unscaled units)
            bn.running_mean -= delta / (_bn_factor(bn).view(-1) if scaled else 1.0)
        elif conv.bias is not None:
            conv.bias += delta.to(conv.bias.dtype)
        # a convolution with neither (none in YOLOv5's layers) keeps its shape: a new bias would not rebuild


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
    method: str = DEFAULT_METHOD,
    global_pruning: bool = False,
    round_to: int = 16,
    imgsz: int = 256,
    verbose: bool = False,
    calibration: torch.Tensor | None = None,
) -> dict[str, list[int]]:
    """Remove ``ratio`` of the output channels of every prunable convolution of ``model``, in place.

    Args:
        model: a ``DetectionModel``, fused or not (``bn-scale`` ranks channels by BatchNorm weights, so it needs an
            unfused model). Train/eval mode and ``requires_grad`` are restored afterwards.
        ratio: fraction of channels removed; per layer, or on average over the network with ``global_pruning``
            (one ranking for all layers, each layer keeping at least 10% of its channels).
        method: channel importance: ``activation`` (needs ``calibration``; ``l1`` without it: see
            ``_ReconstructionImportance``), ``l1``/``l2`` norm of the group's weights, or ``bn-scale`` (|BN gamma|).
        round_to: kept widths are multiples of this. 16: ONNX Runtime's CPU kernels work in blocks of 16 channels
            (a width of 24 costs 32); at 30% of yolov5n, 640 px, its batch-1 speed-up over dense was 1.18x (min)
            with multiples of 8 and 1.32x with 16; also a multiple of the CPU's SIMD width and of tensor cores'.
        imgsz: size of the square dummy image the dependency graph is traced with.
        calibration: Tensor[B, 3, H, W] (0-1) of images like the ones the model will see. A removed channel's
            mean activation on them is folded into every layer that read it (the next convolution's bias, or its
            BatchNorm's running mean), so what the channel added on average is kept; without it, removing
            channels of small weights but large BatchNorm bias shifted every later layer (10% of yolov5n's
            channels took coco128 mAP50-95 from 0.29 to 0.00).

    Returns the new ``conv_widths``, also recorded as ``model.yaml["channel_widths"]``. Prints
    ``Channel pruning (activation, per layer 0.3): 1872157 -> 1024573 parameters, 4.6 -> 2.6 GFLOPs``.
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
    if method == "activation" and calibration is None:
        LOGGER.warning("WARNING ⚠️ --prune-method activation needs calibration images (none here): ranking by l1")
        method = "l1"
    stats = _input_stats(model, calibration) if calibration is not None else None
    detect._grid_cache = {}  # inference-mode grids cannot join an autograd trace
    p0 = next(model.parameters())
    example = torch.zeros(1, 3, imgsz, imgsz, device=p0.device, dtype=p0.dtype)
    per_layer = None if global_pruning else _nearest_multiple_ratios(model, ratio, round_to, set(map(id, detect.m)))
    pruner = tp.pruner.MetaPruner(
        model,
        example,
        importance=_importance(method, stats),
        global_pruning=global_pruning,
        pruning_ratio=ratio,
        pruning_ratio_dict=per_layer,
        max_pruning_ratio=0.9,
        ignored_layers=list(detect.m),
        round_to=round_to if global_pruning else None,
        output_transform=lambda out: out[0] if isinstance(out, tuple) else out,
    )
    bn_pairs = _bn_scaled_convs(model)  # torch-pruning shrinks these modules in place: the pairs stay valid
    pairs = bn_pairs if method != "bn-scale" else []
    _fold_bn_scale(pairs)
    bn_of = dict(bn_pairs)
    try:
        for group in pruner.step(interactive=True):
            if stats is not None:
                _compensate(group, pruner.DG, stats, bn_of, scaled=bool(pairs))
            group.prune()
    finally:
        _fold_bn_scale(pairs, undo=True)
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
