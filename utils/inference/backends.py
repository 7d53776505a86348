"""One inference interface over every weights format: PyTorch ``.pt``, TorchScript, ONNX Runtime and OpenVINO.

Each backend is an ``nn.Module`` called on float 0-1 Tensor[B, 3, H, W] that returns decoded candidates
Tensor[B, N, 5 + nc] (xywh in network-input pixels, objectness, class probabilities) in fp32 on the input's
device, so ``non_max_suppression``, ``Ensemble`` and ``TTA`` treat all formats alike. An exported file is
self-describing: class names, strides, image size and batch come from its metadata (written by ``utils.export.formats``).

Fixed-shape exports (``supports_rect = False``) need exactly the input size they were exported at; a static
batch export runs any batch size by splitting it into chunks of the exported batch (the last chunk padded).
"""

from __future__ import annotations

import ast
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from utils.checkpoints import CheckpointError, load_model, normalize_names
from utils.log import LOGGER


class BackendError(CheckpointError):
    """Weights that cannot be run, or an input they cannot take; the message is one line naming the file.

    A ``CheckpointError`` so the scripts' ``run_cli`` prints it as a one-line user error.
    """


def decode_metadata(raw: dict[str, Any]) -> dict[str, Any]:
    """Metadata values as Python objects: ours are JSON strings; upstream YOLOv5 ONNX files use Python literals."""
    out = {}
    for k, v in raw.items():
        if isinstance(v, str):
            for parse in (json.loads, ast.literal_eval):  # literal_eval only builds literals, never runs code
                try:
                    v = parse(v)
                    break
                except (ValueError, SyntaxError, TypeError):
                    continue
        out[k] = v
    if "names" in out:
        out["names"] = normalize_names(out["names"])
    return out


class Backend(nn.Module):
    """Base of the per-format backends.

    Attributes:
        names: class names by index. stride: Tensor[nl] level strides (float). nl: detection levels.
        imgsz: (height, width) the file was exported at. batch: the static batch, or None when dynamic.
        dynamic: input height/width may vary. supports_rect: non-square (rectangular) inputs allowed.
        path: the weights path. format_name: the row name shown to users.
    """

    format_name = "base"

    def __init__(self, path: str | Path, device: torch.device, meta: dict[str, Any]):
        super().__init__()
        self.path = str(path)
        self.device = device
        if not meta.get("names"):
            raise BackendError(f"{path}: no class names in the file's metadata; re-export it with export.py")
        self.names: dict[int, str] = meta["names"]
        strides = meta.get("strides") or [8.0, 16.0, float(meta.get("stride", 32))]
        self.stride = torch.tensor([float(s) for s in strides])
        self.nl: int | None = None if meta.get("ensemble") else len(strides)  # None: no TTA tail clipping
        imgsz = meta.get("imgsz", 640)
        self.imgsz: tuple[int, int] = tuple(imgsz) if isinstance(imgsz, (list, tuple)) else (int(imgsz), int(imgsz))
        self.batch: int | None = meta.get("batch")
        self.dynamic = bool(meta.get("dynamic", False))
        self.supports_rect = self.dynamic
        self.input_dtype = torch.float16 if meta.get("half") else torch.float32
        if meta.get("nms"):
            raise BackendError(
                f"{path}: exported with --nms (it returns final boxes); val.py and detect.py need candidates, "
                f"export without --nms"
            )

    def check_input(self, im: torch.Tensor) -> None:
        if not self.dynamic and tuple(im.shape[2:]) != self.imgsz:
            h, w = self.imgsz
            raise BackendError(
                f"{self.path}: fixed input {h}x{w} but got {im.shape[2]}x{im.shape[3]}; use --imgsz {max(h, w)} "
                f"with square letterboxing or re-export with --dynamic"
            )

    def forward(self, im: torch.Tensor) -> torch.Tensor:
        """Tensor[B, 3, H, W] float 0-1 -> decoded Tensor[B, N, 5 + nc] fp32 on ``im.device``."""
        self.check_input(im)
        x = im.to(self.input_dtype)
        b, n = x.shape[0], self.batch
        if n is None or b == n:
            y = self.infer(x)
        else:  # static batch: run chunks of the exported batch, padding the last one with blank images
            outs = []
            for i in range(0, b, n):
                chunk = x[i : i + n]
                k = chunk.shape[0]
                if k < n:
                    chunk = torch.cat((chunk, chunk.new_zeros((n - k, *chunk.shape[1:]))))
                outs.append(self.infer(chunk)[:k])
            y = torch.cat(outs)
        return y.float().to(im.device)

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        """Run the file on one batch it accepts; returns Tensor[B, N, 5 + nc] on any device."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"{self.format_name} {self.path}"


class PyTorchBackend(Backend):
    """A ``.pt`` checkpoint (ours or official YOLOv5) as a ``DetectionModel``; ``self.model`` can be pruned."""

    format_name = "PyTorch"

    def __init__(self, path: str | Path, device: torch.device, fuse: bool = True):
        model = load_model(path, device, fuse=fuse)
        nn.Module.__init__(self)  # names and strides come from the checkpoint, not from export metadata
        # NHWC lets oneDNN/cuDNN pick faster convolution kernels: about 1.5x on this project's 2-core CPU
        model.to(memory_format=torch.channels_last)
        self.path, self.device, self.model = str(path), device, model
        self.names, self.stride, self.nl = model.names, model.stride, model.detect.nl
        self.imgsz, self.batch, self.dynamic, self.supports_rect = (640, 640), None, True, True
        self.autocast_dtype: torch.dtype | None = None  # torch.bfloat16: CPU --half (fp32 weights, bf16 compute)

    def forward(self, im: torch.Tensor) -> torch.Tensor:
        dtype = next(self.model.parameters()).dtype
        x = im.to(dtype).contiguous(memory_format=torch.channels_last)
        with torch.autocast(im.device.type, self.autocast_dtype or torch.float32, enabled=bool(self.autocast_dtype)):
            y = self.model(x)
        return y[0] if isinstance(y, (tuple, list)) else y


class TorchScriptBackend(Backend):
    """A traced ``.torchscript`` file; metadata in its ``config.txt`` extra file."""

    format_name = "TorchScript"

    def __init__(self, path: str | Path, device: torch.device):
        extra = {"config.txt": ""}
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated", category=FutureWarning)
                module = torch.jit.load(str(path), _extra_files=extra, map_location=device).eval()
        except Exception as e:
            raise BackendError(f"{path}: not a TorchScript file ({str(e).splitlines()[0][:200]})") from None
        meta = decode_metadata(json.loads(extra["config.txt"] or "{}"))
        meta.setdefault("dynamic", True)  # traced shapes are symbolic: any size that is a stride multiple runs
        super().__init__(path, device, meta)
        self.module = module

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        y = self.module(x.to(self.device))
        return y[0] if isinstance(y, (tuple, list)) else y


def _threads() -> int:
    """Intra-op threads for the runtimes: the same count PyTorch uses, so timings compare like for like."""
    return max(1, min(torch.get_num_threads(), os.cpu_count() or 1))


class OnnxBackend(Backend):
    """An ``.onnx`` file run by ONNX Runtime (CUDA provider on a CUDA device when available)."""

    format_name = "ONNX"

    def __init__(self, path: str | Path, device: torch.device):
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendError(f"{path}: ONNX inference needs onnxruntime (pip install onnxruntime)") from None
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda":
            if "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
            else:
                LOGGER.warning(f"WARNING ⚠️ {path}: onnxruntime has no CUDA provider here; running ONNX on the CPU")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = _threads()
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=providers)
        except Exception as e:
            raise BackendError(f"{path}: onnxruntime cannot load it ({str(e).splitlines()[0][:200]})") from None
        meta = decode_metadata(self.session.get_modelmeta().custom_metadata_map)
        inp = self.session.get_inputs()[0]
        b, _, h, w = inp.shape
        meta.setdefault("half", inp.type == "tensor(float16)")
        meta["batch"] = b if isinstance(b, int) else None
        meta["dynamic"] = not (isinstance(h, int) and isinstance(w, int))
        if not meta["dynamic"]:
            meta["imgsz"] = [h, w]
        super().__init__(path, device, meta)
        self.input_name = inp.name
        self.output_names = [o.name for o in self.session.get_outputs()][:1]

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        y = self.session.run(self.output_names, {self.input_name: x.cpu().numpy()})[0]
        return torch.from_numpy(y)


class OpenVINOBackend(Backend):
    """A ``*_openvino_model/`` folder (IR ``.xml`` + ``.bin`` + ``metadata.yaml``) run by OpenVINO on the CPU."""

    format_name = "OpenVINO"

    def __init__(self, path: str | Path, device: torch.device, hint: str = "LATENCY"):
        try:
            import openvino as ov
        except ImportError:
            raise BackendError(f"{path}: OpenVINO inference needs openvino (pip install openvino)") from None
        import yaml

        folder = Path(path)
        xmls = sorted(folder.glob("*.xml")) if folder.is_dir() else [folder]
        if not xmls or not xmls[0].is_file():
            raise BackendError(f"{path}: no OpenVINO .xml model in this folder")
        meta_file = xmls[0].parent / "metadata.yaml"
        meta = yaml.safe_load(meta_file.read_text(encoding="utf-8")) if meta_file.is_file() else {}
        meta = decode_metadata(meta or {})
        if device.type != "cpu":
            LOGGER.warning(f"WARNING ⚠️ {path}: OpenVINO runs on the CPU here, not {device}")
        core = ov.Core()
        model = core.read_model(str(xmls[0]))
        shape = model.inputs[0].get_partial_shape()
        meta["dynamic"] = shape[2].is_dynamic or shape[3].is_dynamic
        meta["batch"] = None if shape[0].is_dynamic else shape[0].get_length()
        if not meta["dynamic"]:
            meta["imgsz"] = [shape[2].get_length(), shape[3].get_length()]
        meta["half"] = False  # an fp16-compressed IR still takes fp32 input
        super().__init__(path, device, meta)
        # fp32 inference precision: the default bf16 on AMX CPUs costs accuracy against the PyTorch model
        config = {"PERFORMANCE_HINT": hint, "INFERENCE_NUM_THREADS": _threads(), "INFERENCE_PRECISION_HINT": "f32"}
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        y = self.request.infer({0: np.ascontiguousarray(x.cpu().numpy())})
        return torch.from_numpy(np.array(y[self.compiled.output(0)]))


# suffix (lower case) -> backend; ``_openvino_model`` matches the end of a folder name
BACKENDS: dict[str, type[Backend]] = {
    ".pt": PyTorchBackend,
    ".torchscript": TorchScriptBackend,
    ".onnx": OnnxBackend,
    "_openvino_model": OpenVINOBackend,
}


def backend_class(path: str | Path) -> type[Backend]:
    """The backend row for ``path``; ``BackendError`` naming the supported formats when there is none."""
    name = str(path).rstrip("/\\").lower()
    for suffix, cls in BACKENDS.items():
        if name.endswith(suffix):
            return cls
    if name.endswith(".xml") and "_openvino_model" in name:
        return OpenVINOBackend
    known = ", ".join(f"*{s}" + ("/" if s.startswith("_") else "") for s in BACKENDS)
    raise BackendError(f"{path}: no inference backend for this file type; supported: {known}")


def load_backend(path: str | Path, device: torch.device, fuse: bool = True) -> Backend:
    """Open ``path`` with its backend (``fuse`` applies to ``.pt`` only)."""
    cls = backend_class(path)
    if cls is PyTorchBackend:
        return cls(path, device, fuse=fuse)
    if not Path(path).exists():
        raise FileNotFoundError(f"--weights {path}: file not found")
    LOGGER.info(f"Loading {path} for {cls.format_name} inference...")
    return cls(path, device)
