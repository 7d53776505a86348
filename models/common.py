"""Building blocks of the YOLOv5 architectures (every layer type upstream's model YAMLs and checkpoints use).

Attribute names (``conv``, ``bn``, ``cv1``, ``m``...) are part of the checkpoint format: they must match the
official state dicts so that official weights load by name.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn

_default_act: Callable[[], nn.Module] = nn.SiLU


@contextlib.contextmanager
def default_activation(factory: Callable[[], nn.Module] | None) -> Iterator[None]:
    """Within this block ``Conv(..., act=True)`` uses ``factory()`` instead of SiLU (a model YAML's
    ``activation:`` key). Scoped, so one model's activation never leaks into the next model built."""
    global _default_act
    before = _default_act
    _default_act = factory or nn.SiLU
    try:
        yield
    finally:
        _default_act = before


def autopad(k: int | list[int], p: int | None = None, d: int = 1) -> int | list[int]:
    """Padding that keeps the spatial size for stride 1 ('same' padding)."""
    if d > 1:
        k = d * (k - 1) + 1 if isinstance(k, int) else [d * (x - 1) + 1 for x in k]
    if p is None:
        p = k // 2 if isinstance(k, int) else [x // 2 for x in k]
    return p


class _DenseGradient(torch.autograd.Function):
    """Identity whose backward hands its gradient on dense, in the memory format of the forward's output.

    The backward of ``torch.cat`` gives each input a channel slice of the output's gradient, which is strided for
    channels_last tensors, and the CPU kernels of the activations' backward are several times slower on strided
    input than the copy that makes it dense (bf16 ``silu_backward``, 16x32x96x96: 26 vs 3 ms, the copy 1.2 ms).
    ``Conv`` inserts it after its activation when it trains on the CPU, where channels_last is the training layout
    (train mode with autograd on: eval-mode graphs such as channel pruning's trace never see it). The yolov5n
    training step at 192 px, batch 16, spent 24 ms of ~180 in ``silu_backward``; 13 ms with it, plus 3 ms of copies.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
        ctx.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous(memory_format=ctx.memory_format)


class Conv(nn.Module):
    """Conv2d (no bias) + BatchNorm2d + SiLU. After ``fuse()`` the BN is folded into the conv."""

    def __init__(
        self,
        c1: int,
        c2: int,
        k: int = 1,
        s: int = 1,
        p: int | None = None,
        g: int = 1,
        d: int = 1,
        act: bool | nn.Module = True,
    ):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p, d), groups=g, dilation=d, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = _default_act() if act is True else act if isinstance(act, nn.Module) else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bn is None:  # fused
            return self.act(self.conv(x))
        y = self.act(self.bn(self.conv(x)))
        if self.training and y.requires_grad and y.device.type == "cpu":
            y = _DenseGradient.apply(y)
        return y

    def fuse(self) -> None:
        """Fold the BatchNorm into the convolution (inference only)."""
        if self.bn is not None:
            self.conv = torch.nn.utils.fusion.fuse_conv_bn_eval(self.conv.eval(), self.bn.eval())
            self.bn = None


class Bottleneck(nn.Module):
    """1x1 then 3x3 conv with an optional residual connection."""

    def __init__(self, c1: int, c2: int, shortcut: bool = True, g: int = 1, e: float = 0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_, c2, 3, 1, g=g)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(nn.Module):
    """CSP bottleneck with three convolutions: two 1x1 branches, ``n`` bottlenecks on one, concat, 1x1."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1, e: float = 0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c1, c_, 1, 1)
        self.cv3 = Conv(2 * c_, c2, 1)
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, g, e=1.0) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: three chained max-pools of size ``k`` (equivalent to SPP k=5,9,13)."""

    def __init__(self, c1: int, c2: int, k: int = 5):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * 4, c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class SPP(nn.Module):
    """Spatial pyramid pooling with parallel max-pools (YOLOv5 <= v5 configs)."""

    def __init__(self, c1: int, c2: int, k: tuple[int, ...] = (5, 9, 13)):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * (len(k) + 1), c2, 1, 1)
        self.m = nn.ModuleList(nn.MaxPool2d(kernel_size=x, stride=1, padding=x // 2) for x in k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        return self.cv2(torch.cat([x] + [m(x) for m in self.m], 1))


class Focus(nn.Module):
    """Space-to-depth (every second pixel into channels) then Conv (YOLOv5 <= v5 configs)."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: int | None = None, g: int = 1, act: bool = True):
        super().__init__()
        self.conv = Conv(c1 * 4, c2, k, s, p, g, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat((x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]), 1))


class Concat(nn.Module):
    """Concatenate a list of tensors along ``dimension``."""

    def __init__(self, dimension: int = 1):
        super().__init__()
        self.d = dimension

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(x, self.d)


class DWConv(Conv):
    """Depth-wise Conv: groups = gcd(c1, c2)."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, d: int = 1, act: bool | nn.Module = True):
        super().__init__(c1, c2, k, s, g=math.gcd(c1, c2), d=d, act=act)


class DWConvTranspose2d(nn.ConvTranspose2d):
    """Depth-wise transposed convolution (groups = gcd(c1, c2)), with bias."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p1: int = 0, p2: int = 0):
        super().__init__(c1, c2, k, s, p1, p2, groups=math.gcd(c1, c2))


class GhostConv(nn.Module):
    """Half the outputs from a Conv, the other half from a cheap 5x5 depth-wise Conv of those (GhostNet)."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, g: int = 1, act: bool | nn.Module = True):
        super().__init__()
        c_ = c2 // 2
        self.cv1 = Conv(c1, c_, k, s, None, g, act=act)
        self.cv2 = Conv(c_, c_, 5, 1, None, c_, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv1(x)
        return torch.cat((y, self.cv2(y)), 1)


class GhostBottleneck(nn.Module):
    """Two GhostConvs (a depth-wise conv between them when strided) plus a shortcut."""

    def __init__(self, c1: int, c2: int, k: int = 3, s: int = 1):
        super().__init__()
        c_ = c2 // 2
        self.conv = nn.Sequential(
            GhostConv(c1, c_, 1, 1),
            DWConv(c_, c_, k, s, act=False) if s == 2 else nn.Identity(),
            GhostConv(c_, c2, 1, 1, act=False),
        )
        self.shortcut = (
            nn.Sequential(DWConv(c1, c1, k, s, act=False), Conv(c1, c2, 1, 1, act=False)) if s == 2 else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.shortcut(x)


class CrossConv(nn.Module):
    """A k x k convolution factored into 1 x k then k x 1, with an optional residual connection."""

    def __init__(self, c1: int, c2: int, k: int = 3, s: int = 1, g: int = 1, e: float = 1.0, shortcut: bool = False):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, (1, k), (1, s))
        self.cv2 = Conv(c_, c2, (k, 1), (s, 1), g=g)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


def _mixconv_split(c2: int, k: tuple[int, ...], equal_ch: bool) -> list[int]:
    """Output channels per kernel size: equal counts, or counts giving each kernel size equal parameters."""
    n = len(k)
    if equal_ch:  # channel j goes to group floor(j * n / c2)
        groups = np.floor(np.linspace(0, n - 1e-6, c2))
        return [int((groups == g).sum()) for g in range(n)]
    # least squares: sum(c) = c2 and c_i * k_i^2 equal for neighbouring kernels
    a = np.zeros((n + 1, n))
    a[0] = 1
    for i in range(n - 1):
        a[i + 1, i], a[i + 1, i + 1] = k[i] ** 2, -(k[i + 1] ** 2)
    b = np.zeros(n + 1)
    b[0] = c2
    return [int(c) for c in np.linalg.lstsq(a, b, rcond=None)[0].round()]


class MixConv2d(nn.Module):
    """Mixed depth-wise convolution (MixNet): output channels split over several kernel sizes, then BN + SiLU."""

    def __init__(self, c1: int, c2: int, k: tuple[int, ...] = (1, 3), s: int = 1, equal_ch: bool = True):
        super().__init__()
        k = tuple(k)
        split = _mixconv_split(c2, k, equal_ch)
        self.m = nn.ModuleList(
            nn.Conv2d(c1, c, kk, s, kk // 2, groups=math.gcd(c1, c), bias=False) for kk, c in zip(k, split)
        )
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(torch.cat([m(x) for m in self.m], 1)))


class BottleneckCSP(nn.Module):
    """Cross-stage-partial bottleneck (CSPNet), the C3 of YOLOv5 <= v3: BN + SiLU over both branches."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1, e: float = 0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = nn.Conv2d(c1, c_, 1, 1, bias=False)
        self.cv3 = nn.Conv2d(c_, c_, 1, 1, bias=False)
        self.cv4 = Conv(2 * c_, c2, 1, 1)
        self.bn = nn.BatchNorm2d(2 * c_)
        self.act = nn.SiLU()
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, g, e=1.0) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y1 = self.cv3(self.m(self.cv1(x)))
        return self.cv4(self.act(self.bn(torch.cat((y1, self.cv2(x)), 1))))


class C3x(C3):
    """C3 whose bottlenecks are CrossConvs."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1, e: float = 0.5):
        super().__init__(c1, c2, n, shortcut, g, e)
        c_ = int(c2 * e)
        self.m = nn.Sequential(*(CrossConv(c_, c_, 3, 1, g, 1.0, shortcut) for _ in range(n)))


class C3SPP(C3):
    """C3 with an SPP block in place of the bottlenecks."""

    def __init__(
        self, c1: int, c2: int, k: tuple[int, ...] = (5, 9, 13), n: int = 1, shortcut: bool = True, g: int = 1, e=0.5
    ):
        super().__init__(c1, c2, n, shortcut, g, e)
        self.m = SPP(int(c2 * e), int(c2 * e), k)


class C3Ghost(C3):
    """C3 whose bottlenecks are GhostBottlenecks."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1, e: float = 0.5):
        super().__init__(c1, c2, n, shortcut, g, e)
        c_ = int(c2 * e)
        self.m = nn.Sequential(*(GhostBottleneck(c_, c_) for _ in range(n)))


class TransformerLayer(nn.Module):
    """Multi-head self-attention and a two-layer MLP, each residual; LayerNorm is left out (as upstream)."""

    def __init__(self, c: int, num_heads: int):
        super().__init__()
        self.q = nn.Linear(c, c, bias=False)
        self.k = nn.Linear(c, c, bias=False)
        self.v = nn.Linear(c, c, bias=False)
        self.ma = nn.MultiheadAttention(embed_dim=c, num_heads=num_heads)
        self.fc1 = nn.Linear(c, c, bias=False)
        self.fc2 = nn.Linear(c, c, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: Tensor[L, B, C] (sequence first)."""
        x = self.ma(self.q(x), self.k(x), self.v(x))[0] + x
        return self.fc2(self.fc1(x)) + x


class TransformerBlock(nn.Module):
    """Feature map -> sequence of pixels + learned linear position term -> ``num_layers`` TransformerLayers -> map."""

    def __init__(self, c1: int, c2: int, num_heads: int, num_layers: int):
        super().__init__()
        self.conv = Conv(c1, c2) if c1 != c2 else None
        self.linear = nn.Linear(c2, c2)
        self.tr = nn.Sequential(*(TransformerLayer(c2, num_heads) for _ in range(num_layers)))
        self.c2 = c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv is not None:
            x = self.conv(x)
        b, _, h, w = x.shape
        p = x.flatten(2).permute(2, 0, 1)  # Tensor[h*w, b, c]
        return self.tr(p + self.linear(p)).permute(1, 2, 0).reshape(b, self.c2, h, w)


class C3TR(C3):
    """C3 with a TransformerBlock (4 heads) in place of the bottlenecks."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1, e: float = 0.5):
        super().__init__(c1, c2, n, shortcut, g, e)
        c_ = int(c2 * e)
        self.m = TransformerBlock(c_, c_, 4, n)


class _Regroup(nn.Module):
    """Moves pixels between space and channels by a factor ``gain`` per side (no parameters)."""

    def __init__(self, gain: int = 2):
        super().__init__()
        self.gain = gain


class Contract(_Regroup):
    """Space-to-depth: Tensor[b, c, h, w] -> Tensor[b, c * g^2, h / g, w / g]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        s = self.gain
        x = x.view(b, c, h // s, s, w // s, s).permute(0, 3, 5, 1, 2, 4)  # channel order (dy, dx, c)
        return x.reshape(b, c * s * s, h // s, w // s)


class Expand(_Regroup):
    """Depth-to-space, the inverse of Contract: Tensor[b, c, h, w] -> Tensor[b, c / g^2, h * g, w * g]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        s = self.gain
        x = x.view(b, s, s, c // s**2, h, w).permute(0, 3, 4, 1, 5, 2)
        return x.reshape(b, c // s**2, h * s, w * s)
