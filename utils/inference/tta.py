"""Test-time augmentation as a wrapper around any model call (PyTorch module or exported backend)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from utils.errors import UsageError

DEFAULT_SCALES = (1.0, 0.83, 0.67)
DEFAULT_FLIPS = ("none", "lr", "none")
_FLIP_DIMS = {"none": None, "lr": 3, "ud": 2}


def scale_image(im: torch.Tensor, ratio: float, stride: int = 32) -> torch.Tensor:
    """Resize a Tensor[B, 3, H, W] batch by ``ratio`` (bilinear) and pad right/bottom to a stride multiple.

    Padding uses 0.447 (the ImageNet mean grey), as YOLOv5 does.
    """
    if ratio == 1.0:
        return im
    h, w = im.shape[2:]
    s = (int(h * ratio), int(w * ratio))
    im = F.interpolate(im, size=s, mode="bilinear", align_corners=False)
    ph, pw = (math.ceil(x * ratio / stride) * stride for x in (h, w))
    return F.pad(im, [0, pw - s[1], 0, ph - s[0]], value=0.447)


class TTA(torch.nn.Module):
    """Run ``model`` on scaled/flipped copies of the batch and return all candidates in original coordinates.

    Args:
        model: callable on Tensor[B, 3, H, W] returning decoded Tensor[B, N, 5 + nc] (or ``(decoded, raw)``).
        scales, flips: one flip (``none``, ``lr``, ``ud``) per scale; custom scales without flips get ``none``.
        nl: detection levels of the model; used to clip the large-object tail of the first pass and the
            small-object tail of the last pass (YOLOv5's behaviour). ``None`` disables clipping (ensembles of
            different level counts).
    """

    def __init__(
        self, model: Callable, scales=DEFAULT_SCALES, flips=DEFAULT_FLIPS, stride: int = 32, nl: int | None = 3
    ):
        super().__init__()
        if flips is None:  # YOLOv5's pattern (none, lr, none) for the defaults, no flips for custom scales
            flips = DEFAULT_FLIPS if scales is None else ("none",) * len(scales)
        scales, flips = tuple(scales or DEFAULT_SCALES), tuple(flips)
        if len(flips) != len(scales):
            raise UsageError(f"--tta-flips: {len(flips)} flips for {len(scales)} --tta-scales; give one per scale")
        bad = [f for f in flips if f not in _FLIP_DIMS]
        if bad:
            raise UsageError(f"--tta-flips {bad[0]}: expected none, lr or ud")
        if any(s <= 0 for s in scales):
            raise UsageError(f"--tta-scales {scales}: scales must be positive")
        self.model, self.scales, self.flips, self.stride, self.nl = model, scales, flips, stride, nl

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        h, w = x.shape[2:]
        outs = []
        for s, f in zip(self.scales, self.flips):
            dim = _FLIP_DIMS[f]
            xi = scale_image(x.flip(dim) if dim else x, s, self.stride)
            yi = self.model(xi)
            yi = (yi[0] if isinstance(yi, (tuple, list)) else yi).clone()
            yi[..., :4] /= s
            if f == "lr":
                yi[..., 0] = w - yi[..., 0]
            elif f == "ud":
                yi[..., 1] = h - yi[..., 1]
            outs.append(yi)
        if self.nl and len(outs) > 1:
            outs = self._clip_tails(outs)
        return torch.cat(outs, 1), None

    def _clip_tails(self, y: list[torch.Tensor]) -> list[torch.Tensor]:
        """Drop the coarsest-level share of the first pass and a finest-level share of the last pass."""
        g = sum(4**k for k in range(self.nl))  # candidates per level are proportional to 4**k, coarsest k=0
        y[0] = y[0][:, : -(y[0].shape[1] // g)]
        y[-1] = y[-1][:, y[-1].shape[1] // g :]
        return y
