"""YAML-driven YOLOv5 detection model: layer registry, builder, anchor-based ``Detect`` head."""

from __future__ import annotations

import contextlib
import copy
import math
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from models.backbones import Take, TorchvisionBackbone
from models.common import C3, SPP, SPPF, Bottleneck, Concat, Conv, Focus
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


# The registry of layer types a model YAML may name. Anything else is an error that lists these.
LAYERS: dict[str, type[nn.Module]] = {
    "Conv": Conv,
    "Bottleneck": Bottleneck,
    "C3": C3,
    "SPPF": SPPF,
    "SPP": SPP,
    "Focus": Focus,
    "Concat": Concat,
    "nn.Upsample": nn.Upsample,
    "Upsample": nn.Upsample,
    "Detect": Detect,
    "TorchvisionBackbone": TorchvisionBackbone,  # multi-output: [P3, P4, P5]; ``Take`` layers pick from it
    "Take": Take,
}
_CONV_LIKE = (Conv, Bottleneck, C3, SPPF, SPP, Focus)
_REPEAT_INSIDE = (C3,)  # these take the repeat count as an argument instead of being stacked


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
        raise ValueError(f"{where}: unknown argument {a!r} (known symbols: {', '.join(symbols)})")
    return a


def parse_model(d: dict, ch: list[int]) -> tuple[nn.Sequential, list[int]]:
    """Build the layer list of a model YAML dict; returns the Sequential and the indices whose outputs are kept."""
    anchors, nc = d["anchors"], d["nc"]
    gd, gw = d.get("depth_multiple", 1.0), d.get("width_multiple", 1.0)
    na = len(anchors[0]) // 2 if isinstance(anchors, list) else anchors
    no = na * (nc + 5)
    symbols = {"nc": nc, "anchors": anchors, "None": None, "nearest": "nearest"}

    layers, save, c2 = [], [], ch[-1]
    for i, (f, n, name, args) in enumerate(d["backbone"] + d["head"]):
        if name not in LAYERS:
            raise ValueError(f"model layer {i}: unknown layer type {name!r}; known types: {', '.join(LAYERS)}")
        m = LAYERS[name]
        strict = not getattr(m, "yaml_string_args", False)  # such layers take plain names (a torchvision model)
        args = [_resolve_arg(a, symbols, f"model layer {i} ({name})", strict) for a in args]
        n = n_ = max(round(n * gd), 1) if n > 1 else n
        if m in _CONV_LIKE:
            c1, c2 = ch[f], args[0]
            if c2 != no:
                c2 = make_divisible(c2 * gw, 8)
            args = [c1, c2, *args[1:]]
            if m in _REPEAT_INSIDE:
                args.insert(2, n)
                n = 1
        elif m is Concat:
            c2 = sum(ch[x] for x in f)
        elif m is Detect:
            args.append([ch[x] for x in f])
            if isinstance(args[1], int):  # a number of anchors per level: placeholder sizes
                args[1] = [list(range(args[1] * 2))] * len(f)
        elif hasattr(m, "yaml_out_channels"):  # pluggable layers declare how they change the channel count
            args, c2 = m.yaml_out_channels(ch, f, args, gw)
        else:
            c2 = ch[f]
        module = nn.Sequential(*(m(*args) for _ in range(n))) if n > 1 else m(*args)
        module.i, module.f, module.type = i, f, name
        module.np = sum(p.numel() for p in module.parameters())
        save.extend(x % i for x in ([f] if isinstance(f, int) else f) if x != -1)
        layers.append(module)
        if i == 0:
            ch = []
        ch.append(c2)
        del n_
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


def model_flops(model: nn.Module, imgsz: int | tuple[int, int] = 640) -> float:
    """GFLOPs (2 x multiply-adds counted by ``thop``) of one image at ``imgsz``; 0.0 when thop cannot count."""
    try:
        import thop
    except ImportError:
        return 0.0
    p = next(model.parameters())
    stride = int(max(getattr(model, "stride", torch.tensor([32.0])).max().item(), 32))
    h, w = (imgsz, imgsz) if isinstance(imgsz, int) else imgsz
    im = torch.zeros((1, p.shape[1] if p.dim() == 4 else 3, stride, stride), device=p.device, dtype=p.dtype)
    counted = copy.deepcopy(model).eval()
    with contextlib.redirect_stdout(None), torch.no_grad():
        macs = thop.profile(counted, inputs=(im,), verbose=False)[0]
    return macs * 2 / 1e9 * (h / stride) * (w / stride)


def model_summary(model: nn.Module, imgsz: int = 640, name: str | None = None) -> str:
    """YOLOv5's summary line: ``YOLOv5n summary: N layers, P parameters, G gradients, F GFLOPs``."""
    n_p = sum(x.numel() for x in model.parameters())
    n_g = sum(x.numel() for x in model.parameters() if x.requires_grad)
    n_l = len(list(model.modules()))
    name = name or model_display_name(getattr(model, "yaml", {}))
    gflops = model_flops(model, imgsz)
    return f"{name} summary: {n_l} layers, {n_p} parameters, {n_g} gradients, {gflops:.1f} GFLOPs"
