"""YAML-driven YOLOv5 detection model: layer registry, builder, anchor-based ``Detect`` head."""

from __future__ import annotations

import ast
import contextlib
import copy
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.nn.utils import prune

from models.backbones import Take, TorchvisionBackbone
from models.common import (
    C3,
    C3SPP,
    C3TR,
    SPP,
    SPPF,
    Bottleneck,
    BottleneckCSP,
    C3Ghost,
    C3x,
    Concat,
    Contract,
    Conv,
    CrossConv,
    DWConv,
    DWConvTranspose2d,
    Expand,
    Focus,
    GhostBottleneck,
    GhostConv,
    MixConv2d,
    default_activation,
)
from utils.errors import UserError
from utils.log import LOGGER

CFG_DIR = Path(__file__).resolve().parent


class Detect(nn.Module):
    """Anchor-based detection head: one 1x1 conv per level predicting ``na * (5 + nc)`` channels.

    ``anchors`` is a buffer Tensor[nl, na, 2] in stride units (pixels / stride of its level), as in the official
    checkpoints. Training forward returns the raw logits, a list of Tensor[bs, na, ny, nx, 5 + nc]. Inference
    forward returns ``(decoded, raw)`` where ``decoded`` is Tensor[bs, N, 5 + nc] with xywh in input pixels and
    sigmoid objectness / class probabilities. With ``export = True`` only ``decoded`` is returned.
    """

    export = False

    def __init__(self, nc: int = 80, anchors: list | tuple = (), ch: list[int] | tuple[int, ...] = ()):
        super().__init__()
        self.nc = nc
        self.no = nc + 5
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        self.register_buffer("anchors", torch.tensor(anchors, dtype=torch.float32).view(self.nl, -1, 2))
        self.register_buffer("stride", torch.ones(self.nl), persistent=False)
        self.m = nn.ModuleList(nn.Conv2d(x, self.no * self.na, 1) for x in ch)
        self._grid_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def _grids(self, i: int, nx: int, ny: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cell offsets (minus 0.5) and anchor sizes in pixels, both broadcastable to Tensor[1, na, ny, nx, 2]."""
        key = (i, nx, ny, like.device, like.dtype)
        cached = self._grid_cache.get(key)
        if cached is None:
            # Cell indices from ones_like(...).cumsum rather than torch.arange: a traced arange records the trace's
            # device as a constant (a TorchScript file would stay pinned to it), and ONNX Range has no float16.
            # Counting in fp32 is exact to 2**24 cells; the result is cast to the input's dtype.
            yv, xv = torch.meshgrid(_cell_index(like[0, 0, :, 0, 0]), _cell_index(like[0, 0, 0, :, 0]), indexing="ij")
            grid = torch.stack((xv, yv), 2).view(1, 1, ny, nx, 2) - 0.5
            anchor_grid = (self.anchors[i] * self.stride[i]).to(like.dtype).view(1, self.na, 1, 1, 2)
            cached = grid, anchor_grid
            if not torch.jit.is_tracing():
                self._grid_cache[key] = cached
        return cached

    def forward(self, x: list[torch.Tensor]):
        z = []
        for i in range(self.nl):
            x[i] = self.m[i](x[i])
            bs, _, ny, nx = x[i].shape
            x[i] = x[i].view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            if not self.training:
                # bf16 (CPU autocast) keeps 8 mantissa bits: decoded 640-px boxes would move by up to 4 px
                p = x[i].float() if x[i].dtype == torch.bfloat16 else x[i]
                grid, anchor_grid = self._grids(i, nx, ny, p)
                xy, wh, conf = p.sigmoid().split((2, 2, self.nc + 1), 4)
                xy = (xy * 2 + grid) * self.stride[i]
                wh = (wh * 2) ** 2 * anchor_grid
                z.append(torch.cat((xy, wh, conf), 4).view(bs, -1, self.no))
        if self.training:
            return x
        return torch.cat(z, 1) if self.export else (torch.cat(z, 1), x)

    def _apply(self, fn, *args, **kwargs):
        self._grid_cache = {}  # device/dtype moves invalidate cached grids
        return super()._apply(fn, *args, **kwargs)


def _cell_index(v: torch.Tensor) -> torch.Tensor:
    """0, 1, ..., len(v) - 1 with ``v``'s device and dtype, traced without device or size constants."""
    return (torch.ones_like(v, dtype=torch.float32).cumsum(0) - 1).to(v.dtype)


class ModelConfigError(UserError):
    """A model YAML (or the YAML inside a checkpoint) that cannot be built; the message is one line."""


# The registry of layer types a model YAML may name: every type upstream's parser accepts, by the same names.
# Anything else is an error that lists these. Never ``eval``: names are looked up, torch.nn layers included.
LAYERS: dict[str, type[nn.Module]] = {
    "Conv": Conv,
    "Bottleneck": Bottleneck,
    "C3": C3,
    "SPPF": SPPF,
    "SPP": SPP,
    "Focus": Focus,
    "Concat": Concat,
    "GhostConv": GhostConv,
    "DWConv": DWConv,
    "CrossConv": CrossConv,
    "MixConv2d": MixConv2d,
    "BottleneckCSP": BottleneckCSP,
    "GhostBottleneck": GhostBottleneck,
    "C3x": C3x,
    "C3TR": C3TR,
    "C3SPP": C3SPP,
    "C3Ghost": C3Ghost,
    "Contract": Contract,
    "Expand": Expand,
    "DWConvTranspose2d": DWConvTranspose2d,
    "Detect": Detect,
    "TorchvisionBackbone": TorchvisionBackbone,  # multi-output: [P3, P4, P5]; ``Take`` layers pick from it
    "Take": Take,
}
# torch.nn layers a YAML may name as ``nn.X`` (bare ``X`` too): an explicit allow-list, channel-preserving except
# ConvTranspose2d, which is sized like our conv layers.
TORCH_LAYERS = (
    "Upsample",
    "MaxPool2d",
    "AvgPool2d",
    "AdaptiveAvgPool2d",
    "ZeroPad2d",
    "ConstantPad2d",
    "ConvTranspose2d",
    "BatchNorm2d",
    "Identity",
    "Dropout",
    "Dropout2d",
    "ReLU",
    "ReLU6",
    "SiLU",
    "LeakyReLU",
    "Hardswish",
    "Mish",
    "Sigmoid",
)
for _name in TORCH_LAYERS:
    LAYERS[f"nn.{_name}"] = getattr(nn, _name)
LAYERS["Upsample"] = nn.Upsample
ACTIVATIONS = ("SiLU", "ReLU", "ReLU6", "LeakyReLU", "Hardswish", "Mish", "Sigmoid", "Tanh", "GELU", "ELU", "Identity")

# Layers whose first argument is an output width (scaled by width_multiple) and whose input width is prepended.
_CONV_LIKE = (
    Conv,
    GhostConv,
    Bottleneck,
    GhostBottleneck,
    SPP,
    SPPF,
    DWConv,
    MixConv2d,
    Focus,
    CrossConv,
    BottleneckCSP,
    C3,
    C3TR,
    C3SPP,
    C3Ghost,
    C3x,
    nn.ConvTranspose2d,
    DWConvTranspose2d,
)
_REPEAT_INSIDE = (BottleneckCSP, C3, C3TR, C3Ghost, C3x)  # take the repeat count as an argument (C3SPP does not)


def register_layer(name: str, cls: type[nn.Module]) -> None:
    """Make ``cls`` available to model YAMLs under ``name``."""
    LAYERS[name] = cls


def make_divisible(x: float, divisor: int = 8) -> int:
    return int(math.ceil(x / divisor) * divisor)


def _resolve_arg(a: Any, symbols: dict[str, Any], where: str, strict: bool = True) -> Any:
    if isinstance(a, str):
        if a in symbols:
            return symbols[a]
        if not strict:
            return a
        raise ModelConfigError(f"{where}: unknown argument {a!r} (known symbols: {', '.join(symbols)})")
    return a


def parse_activation(spec: str | None) -> Callable[[], nn.Module] | None:
    """``activation: nn.LeakyReLU(0.1)`` -> a factory of that module. Literal arguments only, never ``eval``."""
    if spec is None:
        return None
    where = f"model YAML activation: {spec!r}"
    try:
        call = ast.parse(str(spec).strip(), mode="eval").body
    except SyntaxError:
        raise ModelConfigError(f"{where} is not of the form nn.Name(arguments)") from None
    func = call.func if isinstance(call, ast.Call) else call
    name = ast.unparse(func).removeprefix("nn.").removeprefix("torch.nn.")
    if name not in ACTIVATIONS:
        raise ModelConfigError(f"{where}: unknown activation; known: {', '.join('nn.' + a for a in ACTIVATIONS)}")
    args, kwargs = [], {}
    if isinstance(call, ast.Call):
        try:
            args = [ast.literal_eval(a) for a in call.args]
            kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
        except ValueError:
            raise ModelConfigError(f"{where}: arguments must be literal numbers or booleans") from None
    cls = getattr(nn, name)
    try:
        cls(*args, **kwargs)
    except TypeError as e:
        raise ModelConfigError(f"{where}: {e}") from None
    return lambda: cls(*args, **kwargs)


def parse_model(d: dict, ch: list[int]) -> tuple[nn.Sequential, list[int]]:
    """Build the layer list of a model YAML dict; returns the Sequential and the indices whose outputs are kept."""
    with default_activation(parse_activation(d.get("activation"))):
        return _parse_layers(d, ch)


def _parse_layers(d: dict, ch: list[int]) -> tuple[nn.Sequential, list[int]]:
    anchors, nc = d["anchors"], d["nc"]
    gd, gw = d.get("depth_multiple", 1.0), d.get("width_multiple", 1.0)
    ch_mul = d.get("channel_multiple") or 8
    na = len(anchors[0]) // 2 if isinstance(anchors, list) else anchors
    no = na * (nc + 5)
    symbols = {"nc": nc, "anchors": anchors, "None": None, "nearest": "nearest"}
    source = f"{d['yaml_file']}: " if isinstance(d.get("yaml_file"), str) else ""  # errors name the YAML

    layers, save, c2 = [], [], ch[-1]
    for i, (f, n, name, args) in enumerate(d["backbone"] + d["head"]):
        if name not in LAYERS:
            raise ModelConfigError(
                f"{source}model layer {i}: unknown layer type {name!r}; known types: {', '.join(LAYERS)}"
            )
        m = LAYERS[name]
        # torch.nn layers and pluggable ones take plain strings (an interpolation mode, a torchvision model name)
        strict = not (name.startswith("nn.") or m is nn.Upsample or getattr(m, "yaml_string_args", False))
        args = [_resolve_arg(a, symbols, f"{source}model layer {i} ({name})", strict) for a in args]
        n = max(round(n * gd), 1) if n > 1 else n
        if m in _CONV_LIKE:
            c1, c2 = ch[f], args[0]
            if c2 != no:
                c2 = make_divisible(c2 * gw, ch_mul)
            args = [c1, c2, *args[1:]]
            if m in _REPEAT_INSIDE:
                args.insert(2, n)
                n = 1
        elif m is nn.BatchNorm2d:
            args, c2 = [ch[f]], ch[f]
        elif m is Concat:
            c2 = sum(ch[x] for x in f)
        elif m is Detect:
            args.append([ch[x] for x in f])
            if isinstance(args[1], int):  # a number of anchors per level: placeholder sizes
                args[1] = [list(range(args[1] * 2))] * len(f)
        elif m is Contract:
            c2 = ch[f] * args[0] ** 2
        elif m is Expand:
            c2 = ch[f] // args[0] ** 2
        elif hasattr(m, "yaml_out_channels"):  # pluggable layers declare how they change the channel count
            args, c2 = m.yaml_out_channels(ch, f, args, gw)
        else:
            c2 = ch[f]
        try:
            module = nn.Sequential(*(m(*args) for _ in range(n))) if n > 1 else m(*args)
        except (TypeError, ValueError) as e:
            if isinstance(e, UserError):
                raise
            raise ModelConfigError(f"{source}model layer {i} ({name} {args}): {str(e).splitlines()[0]}") from None
        module.i, module.f, module.type = i, f, name
        module.np = sum(p.numel() for p in module.parameters())
        save.extend(x % i for x in ([f] if isinstance(f, int) else f) if x != -1)
        layers.append(module)
        if i == 0:
            ch = []
        ch.append(c2)
    return nn.Sequential(*layers), sorted(save)


def load_model_yaml(cfg: str | Path | dict) -> dict:
    """Read a model YAML: a dict, a path, or a bare name such as ``yolov5n.yaml`` looked up in ``models/``."""
    if isinstance(cfg, dict):
        return copy.deepcopy(cfg)
    path = Path(cfg)
    if not path.suffix:
        path = path.with_suffix(".yaml")
    if not path.exists():
        matches = sorted(CFG_DIR.rglob(path.name))
        if not matches:
            known = sorted(p.name for p in CFG_DIR.rglob("*.yaml"))
            raise FileNotFoundError(f"--cfg {cfg}: model YAML not found; shipped configs: {', '.join(known)}")
        path = matches[0]
    with open(path, encoding="utf-8") as fh:
        d = yaml.safe_load(fh)
    d.setdefault("yaml_file", path.name)
    return d


def model_display_name(d: dict) -> str:
    """``yolov5n.yaml`` -> ``YOLOv5n`` for the summary line."""
    stem = Path(d.get("yaml_file", "model")).stem
    return stem.replace("yolo", "YOLO", 1) if stem.startswith("yolo") else stem


class DetectionModel(nn.Module):
    """A YOLOv5 detector built from a model YAML dict (``backbone``, ``head``, ``anchors``, multiples)."""

    def __init__(
        self, cfg: str | Path | dict = "yolov5s.yaml", ch: int = 3, nc: int | None = None, anchors: list | None = None
    ):
        super().__init__()
        self.yaml = load_model_yaml(cfg)
        ch = self.yaml["ch"] = self.yaml.get("ch", ch)
        if nc is not None and nc != self.yaml["nc"]:
            self.yaml["nc"] = nc
        if anchors is not None:
            self.yaml["anchors"] = anchors
        self.model, self.save = parse_model(self.yaml, ch=[ch])
        if self.yaml.get("channel_widths"):  # a channel-pruned model: its recorded per-conv widths
            from utils.inference.channel_prune import apply_conv_widths

            apply_conv_widths(self, self.yaml["channel_widths"])
        for layer in self.model:  # YOLOv5's BN settings (eps is not part of the state dict)
            if isinstance(layer, TorchvisionBackbone):
                continue  # torchvision's own eps/momentum, which its ImageNet statistics were computed with
            for m in layer.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eps, m.momentum = 1e-3, 0.03
        self.names = {i: str(i) for i in range(self.yaml["nc"])}
        detect = self.model[-1]
        if isinstance(detect, Detect):
            s = 256
            was_training = self.training
            self.train()
            with torch.no_grad():
                out = self.forward(torch.zeros(1, ch, s, s))
            self.train(was_training)
            detect.stride = torch.tensor([s / x.shape[-2] for x in out])
            detect.anchors /= detect.stride.view(-1, 1, 1)
            self.stride = detect.stride
            self._initialize_biases()
        else:
            self.stride = torch.tensor([32.0])

    @property
    def detect(self) -> Detect:
        return self.model[-1]

    def forward(self, x: torch.Tensor):
        y: list[torch.Tensor | None] = []
        for m in self.model:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            x = m(x)
            y.append(x if m.i in self.save else None)
        return x

    def _initialize_biases(self) -> None:
        """Objectness and class priors so training starts from sensible confidences."""
        det = self.detect
        for conv, s in zip(det.m, det.stride):
            b = conv.bias.view(det.na, -1)
            with torch.no_grad():
                b[:, 4] += math.log(8 / (640 / s) ** 2)  # about 8 objects per 640x640 image
                b[:, 5 : 5 + det.nc] += math.log(0.6 / (det.nc - 0.99999))

    def fuse(self, verbose: bool = True) -> DetectionModel:
        """Fold every BatchNorm into its conv for faster inference."""
        if verbose:
            LOGGER.info("Fusing layers... ")
        for m in self.model.modules():
            if isinstance(m, (Conv, TorchvisionBackbone)):
                m.fuse()
        return self

    def info(self, imgsz: int = 640) -> str:
        line = model_summary(self, imgsz)
        LOGGER.info(line)
        return line


def fused_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with each BatchNorm folded into its conv (``fuse``), the original left as it is.

    What inference runs: training validates each epoch on it (the arithmetic of best.pt as ``val.py`` and the final
    validation load it, and a faster pass: the default CPU job 1.1-1.2 -> 0.9-1.0 s an epoch), the efficiency study
    counts its parameters and FLOPs. A model without ``fuse`` is copied as it is; a pruned one (masks applied by
    ``torch.nn.utils.prune`` forward hooks on the unfused convs) is returned itself, unfused.
    """
    if prune.is_pruned(model):
        return model
    fused = copy.deepcopy(model)
    return fused.fuse(verbose=False) if hasattr(fused, "fuse") else fused


def model_flops(model: nn.Module, imgsz: int | tuple[int, int] = 640) -> float:
    """GFLOPs (2 x multiply-adds counted by ``thop``) of one image at ``imgsz``; 0.0 when thop cannot count."""
    try:
        import thop
    except ImportError:
        return 0.0
    p = next(model.parameters())
    stride = int(max(getattr(model, "stride", torch.tensor([32.0])).max().item(), 32))
    h, w = (imgsz, imgsz) if isinstance(imgsz, int) else imgsz
    ch = int(getattr(model, "yaml", {}).get("ch", 3))  # not the first conv's inputs: Focus takes 4x those
    im = torch.zeros((1, ch, stride, stride), device=p.device, dtype=p.dtype)
    counted = copy.deepcopy(model).eval()
    with contextlib.redirect_stdout(None), torch.no_grad():
        macs = thop.profile(counted, inputs=(im,), verbose=False, custom_ops={nn.MultiheadAttention: _count_mha})[0]
    return macs * 2 / 1e9 * (h / stride) * (w / stride)


def _count_mha(m: nn.MultiheadAttention, inputs: tuple, output: tuple) -> None:
    """thop has no rule for attention: count the q/k/v and output projections plus the two L x L products."""
    q = inputs[0]  # Tensor[L, B, E] (sequence first)
    length, batch, e = q.shape
    macs = batch * (4 * length * e * e + 2 * length * length * e)
    m.total_ops += torch.tensor([float(macs)], dtype=torch.float64)


def model_summary(model: nn.Module, imgsz: int = 640, name: str | None = None) -> str:
    """YOLOv5's summary line: ``YOLOv5n summary: N layers, P parameters, G gradients, F GFLOPs``."""
    n_p = sum(x.numel() for x in model.parameters())
    n_g = sum(x.numel() for x in model.parameters() if x.requires_grad)
    n_l = len(list(model.modules()))
    name = name or model_display_name(getattr(model, "yaml", {}))
    gflops = model_flops(model, imgsz)
    return f"{name} summary: {n_l} layers, {n_p} parameters, {n_g} gradients, {gflops:.1f} GFLOPs"
