"""Build the model that ``val.py`` and ``detect.py`` run: weights -> (Ensemble) -> prune -> TTA -> precision.

Weights may be any format of ``utils.inference.backends`` (``.pt``, ``.torchscript``, ``.onnx``, ``*_openvino_model/``),
mixed freely inside an ensemble. PyTorch members can be pruned and run in fp16; exported members run as exported.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.ensemble import Ensemble, members_summary
from models.yolo import model_summary
from utils.devices import cpu_has_native_bf16, image_input
from utils.errors import UsageError
from utils.inference.backends import Backend, PyTorchBackend, load_backend
from utils.inference.channel_prune import DEFAULT_METHOD
from utils.log import LOGGER


@dataclass
class InferenceOptions:
    """How ``load_inference_model`` builds the model: the inference flags of val.py, detect.py and benchmarks.py.

    ``imgsz`` is the square input size (pixels) used for the summary's GFLOPs and to check fixed-shape exports.
    """

    half: bool = False  # fp16 PyTorch members (CUDA only; a warning and fp32 elsewhere)
    augment: bool = False  # test-time augmentation (utils.inference.tta)
    tta_scales: list[float] | None = None
    tta_flips: list[str] | None = None
    ensemble_mode: str = "nms"  # one of models.ensemble.ENSEMBLE_MODES
    prune: float = 0.0  # global L1 unstructured sparsity of the fused conv weights
    prune_exclude: list[str] | None = None  # module name prefixes kept dense
    verbose: bool = False  # per-layer prune table, per-member ensemble timings
    imgsz: int = 640
    fuse: bool = True
    prune_channels: float = 0.0  # structured: fraction of conv output channels removed (utils.inference.channel_prune)
    prune_method: str = DEFAULT_METHOD  # channel importance: activation, l1, l2 or bn-scale
    prune_global: bool = False  # one channel ranking over the whole network instead of per layer
    prune_calibration: str | list[str] | None = None  # images whose mean activations compensate removed channels

    @classmethod
    def from_kwargs(cls, **kwargs) -> InferenceOptions:
        """The options from flat keywords (``run(**kwargs)``); an unknown keyword is a ``TypeError`` naming it."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f"unexpected keyword argument(s) {unknown}; inference options are {sorted(known)}")
        return cls(**kwargs)


class InferenceModel(nn.Module):
    """A loaded detector ready for inference.

    Calling it on Tensor[B, 3, H, W] (0-1, the model's dtype) returns decoded Tensor[B, N, 5 + nc] candidates
    (xywh input pixels) or ``(decoded, raw)``; feed them to ``non_max_suppression``.

    A large batch runs as several model calls of at most ``chunk_size(...)`` images: on the CPU as many as hold
    ``chunk_pixels`` (4 images at 640 px), elsewhere ``max_chunk``. A 32-image call at 640 holds about 1 GB of
    activations and is no faster per image; with 4-image calls ``val.py --batch-size 32`` at 640 peaks at 1.0-1.1 GB
    (8-image calls: 1.4 GB and up to 10% faster in bf16; one call: 2.8 GB).

    Attributes:
        names: class names by index. max_stride: the largest stride (input sizes must be multiples).
        supports_rect: whether inputs may be non-square (rectangular batches); False when a member has a fixed
            input shape, which then is ``fixed_imgsz`` (height, width), else None.
        half_precision: fp16 inputs expected (CUDA ``--half``; CPU bf16 autocast takes fp32 inputs).
        member_times: per-member seconds for ensembles, else None.
    """

    max_chunk = 8  # images per call off the CPU
    chunk_pixels = 4 * 640 * 640  # input pixels per call on the CPU
    exported_only = False  # no PyTorch member: see runtime_threads

    def __init__(
        self,
        net: nn.Module,
        names: dict[int, str],
        max_stride: int,
        weight_paths: list[str],
        half: bool,
        member_times_of: Ensemble | None = None,
        fixed_imgsz: tuple[int, int] | None = None,
    ):
        super().__init__()
        self.net = net
        self.names = names
        self.max_stride = max_stride
        self.weight_paths = weight_paths
        self.half_precision = half
        self.fixed_imgsz = fixed_imgsz
        self.supports_rect = fixed_imgsz is None
        self._ensemble = member_times_of

    def input_tensor(self, im: torch.Tensor | np.ndarray, device: torch.device) -> torch.Tensor:
        """uint8 image(s) ``[3, H, W]`` or ``[B, 3, H, W]`` (RGB, letterboxed) -> the model's input on ``device``:
        ``[B, 3, H, W]`` in 0-1, fp16 for CUDA ``--half`` else fp32 (CPU bf16 autocast casts at each convolution)."""
        return image_input(im, device, self.half_precision)

    @contextlib.contextmanager
    def runtime_threads(self) -> Iterator[None]:
        """Threads for the run: when every member is an exported CPU runtime (ONNX Runtime, OpenVINO), torch does
        only the pre- and post-processing and does it on one thread, so no OpenMP worker of torch spins on the
        cores the runtime's own pool needs (it did after every torch op: 28 -> 36 ms per ONNX image at 640).
        PyTorch members keep torch's threads and libgomp's default wait policy (spin briefly, then sleep): a
        process-wide ``OMP_WAIT_POLICY=PASSIVE`` made every op wake sleeping threads (detect.py 48 -> 104 ms per
        image at 640)."""
        if not self.exported_only:
            yield
            return
        n = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(n)

    @property
    def member_times(self) -> list[float] | None:
        return None if self._ensemble is None else self._ensemble.member_times

    def print_member_times(self, seen: int) -> None:
        times = [t / max(seen, 1) * 1e3 for t in self.member_times]
        parts = ", ".join(f"{Path(p).name} {t:.1f}ms" for p, t in zip(self.weight_paths, times))
        LOGGER.info(f"Ensemble inference per image: {parts}; total {sum(times):.1f}ms")

    def chunk_size(self, height: int, width: int, device: torch.device) -> int:
        """Images per model call for a batch of ``height`` x ``width`` inputs on ``device``."""
        if device.type != "cpu":
            return self.max_chunk
        return max(1, self.chunk_pixels // max(height * width, 1))

    def forward(self, x: torch.Tensor):
        step = self.chunk_size(x.shape[-2], x.shape[-1], x.device)
        if x.shape[0] <= step:
            return self.net(x)
        out, i = None, 0
        for chunk in x.split(step):
            y = self.net(chunk)
            y = y[0] if isinstance(y, (tuple, list)) else y
            if out is None:  # filled chunk by chunk: a list + torch.cat would hold the candidates twice
                out = y.new_zeros((x.shape[0], *y.shape[1:]))
            if y.shape[1] > out.shape[1]:  # 'wbf' ensembles return as many rows as their chunk needs
                out = torch.cat((out, out.new_zeros((out.shape[0], y.shape[1] - out.shape[1], out.shape[2]))), 1)
            out[i : i + len(y), : y.shape[1]] = y  # padding rows have objectness 0 and never pass NMS
            i += len(y)
        return out


def _cpu_half_dtype(device: torch.device) -> torch.dtype | None:
    """``--half`` off CUDA: bf16 autocast on a CPU with native bf16 (one line says so), else a warning and fp32."""
    if device.type == "cpu" and cpu_has_native_bf16():
        LOGGER.info("--half: this CPU has native bf16 (AMX/AVX512-BF16); PyTorch models run in bf16 autocast")
        return torch.bfloat16
    why = "this CPU has no native bf16 (AMX/AVX512-BF16)" if device.type == "cpu" else "fp16 inference is CUDA-only"
    LOGGER.warning(f"WARNING ⚠️ --half: {why}; running fp32 on {device.type.upper()}")
    return None


def _fixed_input(members: list[Backend], paths: list[str], imgsz: int) -> tuple[int, int] | None:
    """The one input size fixed-shape members accept; ``UsageError`` when it cannot be ``--imgsz`` square."""
    fixed = {(p, m.imgsz) for p, m in zip(paths, members) if not m.dynamic}
    if not fixed:
        return None
    sizes = {s for _, s in fixed}
    p, (h, w) = sorted(fixed)[0]
    if len(sizes) > 1:
        raise UsageError(f"--weights: fixed-shape exports disagree on the input size {sorted(sizes)}; re-export")
    if h != w:
        raise UsageError(
            f"--weights {p}: fixed {h}x{w} input, but images are letterboxed to a square --imgsz; "
            f"re-export with a square --imgsz or --dynamic"
        )
    if imgsz != h:
        raise UsageError(f"--imgsz {imgsz}: {p} was exported with a fixed {h}x{w} input; use --imgsz {h}")
    return h, w


def _channel_prune_member(model: nn.Module, opts: InferenceOptions, calib: torch.Tensor | None) -> None:
    """Channel-prune an unfused member (BatchNorm weights take part in the ranking), then fuse it."""
    from utils.inference.channel_prune import channel_prune

    channel_prune(
        model, opts.prune_channels, opts.prune_method, opts.prune_global, verbose=opts.verbose, calibration=calib
    )  # fmt: skip
    if opts.fuse:
        model.fuse(verbose=False)
    model.to(memory_format=torch.channels_last)


def load_inference_model(
    weights: list[str] | str, device: torch.device, opts: InferenceOptions | None = None, **overrides
) -> InferenceModel:
    """Load one or several weights of any format into an ``InferenceModel``; prints the summary line(s).

    ``overrides`` are ``InferenceOptions`` fields that replace those of ``opts`` (``augment=True, imgsz=320``).
    ``prune_channels`` removes that fraction of channels from every PyTorch member before it is fused (see
    ``utils.inference.channel_prune``). Raises ``UsageError`` for flags an exported member cannot honour
    (``--prune``, ``--prune-channels``; ``--augment`` with a fixed-shape export; an ``--imgsz`` other than a fixed
    export's) instead of dropping that member or the flag.
    """
    opts = replace(opts or InferenceOptions(), **overrides)
    half, imgsz, prune = opts.half, opts.imgsz, opts.prune
    paths = [str(p) for p in ([weights] if isinstance(weights, (str, Path)) else list(weights))]
    if not paths:
        raise FileNotFoundError("--weights: no weights given")
    cpu_dtype = None
    if half and device.type != "cuda":
        cpu_dtype = _cpu_half_dtype(device)
        half = False  # inputs stay fp32: autocast casts them at each convolution
    if any(p.lower().endswith(".pt") for p in paths):
        if opts.fuse:
            LOGGER.info("Fusing layers... ")
    members: list[Backend] = []
    calib = None  # calibration images for --prune-channels: read once for every member
    for p in paths:
        m = load_backend(p, device, fuse=opts.fuse and not opts.prune_channels)
        if isinstance(m, PyTorchBackend):
            if opts.prune_channels:
                if calib is None and opts.prune_calibration:
                    from utils.inference.channel_prune import calibration_batch

                    calib = calibration_batch(opts.prune_calibration, min(opts.imgsz, 640))
                _channel_prune_member(m.model, opts, calib)
            if LOGGER.isEnabledFor(logging.INFO):  # thop's count costs ~0.5 s
                LOGGER.info(model_summary(m.model, imgsz))
        elif prune or opts.prune_channels:
            flag = "--prune" if prune else "--prune-channels"
            raise UsageError(f"{flag}: {p} is an exported model; prune at export (export.py {flag}) instead")
        members.append(m)
    fixed = _fixed_input(members, paths, imgsz)
    if opts.augment and fixed is not None:
        raise UsageError(
            f"--augment: TTA rescales the input, but {paths[[m.dynamic for m in members].index(False)]} has a fixed "
            f"{fixed[0]}x{fixed[1]} input; re-export it with --dynamic"
        )
    torch_models = [m.model for m in members if isinstance(m, PyTorchBackend)]
    if prune:
        from utils.inference.prune import global_l1_prune

        for m in torch_models:
            global_l1_prune(m, prune, opts.prune_exclude, verbose=opts.verbose)
    ensemble = None
    if len(members) > 1:
        ensemble = Ensemble(members, opts.ensemble_mode, paths)
        if len(torch_models) == len(members) and LOGGER.isEnabledFor(logging.INFO):
            LOGGER.info(members_summary(torch_models, paths, imgsz))
        else:
            LOGGER.info(f"Ensemble created with {paths} ({', '.join(m.format_name for m in members)})")
        net: nn.Module = ensemble
        stride = int(ensemble.stride.max())
    else:
        net = members[0]
        stride = int(max(members[0].stride))
    if half:
        for m in torch_models:
            m.half()
    for m in members:
        if isinstance(m, PyTorchBackend):
            m.autocast_dtype = cpu_dtype
    if opts.augment:
        net = _with_tta(net, opts, stride)
    names = members[0].names
    model = InferenceModel(net, names, max(stride, 32), paths, half, ensemble, fixed)
    model.exported_only = not torch_models and device.type == "cpu"
    return model


def _with_tta(net: nn.Module, opts: InferenceOptions, stride: int) -> nn.Module:
    """Wrap ``net`` in TTA; an Ensemble gets one TTA per member, inside the merge.

    TTA drops the coarsest-level tail of its first pass and the finest-level tail of its last pass, which only
    makes sense on one model's output layout: around an ``nms`` Ensemble (members' candidates concatenated) it
    would cut into the wrong member's rows. Each member runs its own TTA, at the ensemble's stride so that every
    member sees the same padded shapes (``mean``/``max`` need identical layouts), and the ensemble merges the
    augmented outputs, as YOLOv5 does.
    """
    from utils.inference.tta import TTA

    if not isinstance(net, Ensemble):
        return TTA(net, opts.tta_scales, opts.tta_flips, stride, nl=net.nl)
    for i, m in enumerate(net):
        net[i] = TTA(m, opts.tta_scales, opts.tta_flips, stride, nl=m.nl)
    return net
