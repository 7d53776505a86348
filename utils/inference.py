"""Build the model that ``val.py`` and ``detect.py`` run: weights -> (Ensemble) -> prune -> TTA -> precision."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from models.ensemble import Ensemble, members_summary
from models.yolo import model_summary
from utils.checkpoints import load_model


class InferenceModel(nn.Module):
    """A loaded detector ready for inference.

    Calling it on Tensor[B, 3, H, W] (0-1, the model's dtype) returns decoded Tensor[B, N, 5 + nc] candidates
    (xywh input pixels) or ``(decoded, raw)``; feed them to ``non_max_suppression``.

    Attributes:
        names: class names by index. max_stride: the largest stride (input sizes must be multiples).
        supports_rect: whether inputs may be non-square (rectangular batches).
        half_precision: fp16 inputs expected. member_times: per-member seconds for ensembles, else None.
    """

    def __init__(
        self,
        net: nn.Module,
        names: dict[int, str],
        max_stride: int,
        weight_paths: list[str],
        half: bool,
        member_times_of: Ensemble | None = None,
    ):
        super().__init__()
        self.net = net
        self.names = names
        self.max_stride = max_stride
        self.weight_paths = weight_paths
        self.half_precision = half
        self.supports_rect = True
        self._ensemble = member_times_of

    @property
    def member_times(self) -> list[float] | None:
        return None if self._ensemble is None else self._ensemble.member_times

    def print_member_times(self, seen: int) -> None:
        times = [t / max(seen, 1) * 1e3 for t in self.member_times]
        parts = ", ".join(f"{Path(p).name} {t:.1f}ms" for p, t in zip(self.weight_paths, times))
        print(f"Ensemble inference per image: {parts}; total {sum(times):.1f}ms")

    def forward(self, x: torch.Tensor):
        return self.net(x)


def _warn_half_on_cpu(device: torch.device) -> None:
    print(f"WARNING ⚠️ --half: fp16 inference is CUDA-only; running fp32 on {device.type.upper()}")


def load_inference_model(
    weights: list[str] | str,
    device: torch.device,
    half: bool = False,
    augment: bool = False,
    tta_scales: list[float] | None = None,
    tta_flips: list[str] | None = None,
    ensemble_mode: str = "nms",
    prune: float = 0.0,
    prune_exclude: list[str] | None = None,
    verbose: bool = False,
    imgsz: int = 640,
    fuse: bool = True,
) -> InferenceModel:
    """Load one or several weights into an ``InferenceModel``; prints the summary line(s) users expect."""
    paths = [weights] if isinstance(weights, (str, Path)) else list(weights)
    if not paths:
        raise FileNotFoundError("--weights: no weights given")
    if half and device.type != "cuda":
        _warn_half_on_cpu(device)
        half = False
    print("Fusing layers... ") if fuse else None
    members = []
    for p in paths:
        m = load_model(p, device, fuse=fuse)
        print(model_summary(m, imgsz))
        members.append(m)
    if prune:
        from utils.prune import global_l1_prune

        for m in members:
            global_l1_prune(m, prune, prune_exclude, verbose=verbose)
    ensemble = None
    if len(members) > 1:
        ensemble = Ensemble(members, ensemble_mode, [str(p) for p in paths])
        print(members_summary(members, paths, imgsz))
        net: nn.Module = ensemble
        stride = int(ensemble.stride.max())
    else:
        net = members[0]
        stride = int(max(members[0].stride))
    if half:
        net.half()
    if augment:
        from utils.tta import TTA

        levels = {m.detect.nl for m in members}
        net = TTA(net, tta_scales, tta_flips, stride, nl=levels.pop() if len(levels) == 1 else None)
    names = members[0].names
    return InferenceModel(net, names, max(stride, 32), [str(p) for p in paths], half, ensemble)
