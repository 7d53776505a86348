"""Export formats as rows of one table: name, ``--include`` flag, file suffix, exporter, requirements.

Every exporter takes the fused eval-mode model (``Detect.export = True``: it returns decoded Tensor[B, N, 5 + nc],
xywh input pixels), writes one file or folder carrying the metadata a runtime needs (class names, strides, image
size, batch, task) and returns its path. ``export_formats`` runs the requested rows, checks each exported file
against PyTorch through ``utils.inference.backends`` and raises ``ExportError`` naming every format that failed and why.
"""

from __future__ import annotations

import copy
import datetime
import importlib.util
import io
import json
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from utils.checkpoints import FORMAT, checkpoint_dict, save_atomic
from utils.errors import UserError
from utils.log import LOGGER


class ExportError(UserError):
    """An export that failed; the message names the format(s) and the reason."""


@dataclass
class ExportOptions:
    """What every exporter may need. ``imgsz`` is (height, width)."""

    imgsz: tuple[int, int] = (640, 640)
    batch_size: int = 1
    half: bool = False
    dynamic: bool | None = None  # None: each format's own default (ExportFormat.dynamic)
    simplify: bool = False
    opset: int = 17
    nms: bool = False
    conf_thres: float = 0.25
    iou_thres: float = 0.45
    max_det: int = 300
    prune: float = 0.0
    source: str = ""


def export_metadata(model: nn.Module, opts: ExportOptions, **overrides: Any) -> dict[str, Any]:
    """The self-description stored in every exported file (JSON-able values).

    An ``Ensemble`` is described by its largest stride (members' levels are concatenated, so per-level strides
    mean nothing) and lists its member files and merge mode.
    """
    from models.ensemble import Ensemble

    strides = [float(s) for s in model.stride]
    extra = {"ensemble": list(model.paths), "ensemble_mode": model.mode} if isinstance(model, Ensemble) else {}
    meta = {
        "description": f"yolo-toolkit detector exported from {Path(opts.source).name}",
        "format": FORMAT,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "task": "detect",
        "names": {int(k): str(v) for k, v in model.names.items()},
        "stride": int(max(strides)),
        "strides": strides,
        "imgsz": list(opts.imgsz),
        "batch": None if opts.dynamic else opts.batch_size,
        "dynamic": opts.dynamic,
        "half": opts.half,
        "nms": False,
        **extra,
    }
    meta.update(overrides)
    return meta


def _traceable(model: nn.Module, im: torch.Tensor, half: bool) -> tuple[nn.Module, torch.Tensor]:
    if not half:
        return model, im
    return copy.deepcopy(model).half(), im.half()


# ---------------------------------------------------------------------------------------------------- exporters
def export_torchscript(model: nn.Module, im: torch.Tensor, file: Path, opts: ExportOptions) -> Path:
    """Traced TorchScript; metadata in the ``config.txt`` extra file. Traced sizes stay symbolic (any input)."""
    m, x = _traceable(model, im, opts.half)
    with warnings.catch_warnings():  # TorchScript is deprecated upstream but is still the format users ask for
        warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated", category=FutureWarning)
        traced = torch.jit.trace(m, x, strict=False, check_trace=False)
    meta = export_metadata(model, opts, dynamic=True, batch=None)
    traced.save(str(file), _extra_files={"config.txt": json.dumps(meta)})
    return file


def export_onnx(model: nn.Module, im: torch.Tensor, file: Path, opts: ExportOptions) -> Path:
    """ONNX through the TorchScript-based exporter; ``metadata_props`` hold the metadata (JSON values)."""
    import onnx

    m, x = _traceable(model, im, opts.half)
    dynamic_axes = None
    if opts.dynamic:
        dynamic_axes = {"images": {0: "batch", 2: "height", 3: "width"}, "output0": {0: "batch", 1: "anchors"}}
    with warnings.catch_warnings():  # the legacy exporter is deprecated, but needs no onnxscript
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated", category=FutureWarning)
        torch.onnx.export(
            m,
            (x,),
            str(file),
            dynamo=False,  # the torch.export-based exporter needs onnxscript and gives nothing more for this graph
            opset_version=opts.opset,
            input_names=["images"],
            output_names=["output0"],
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )
    proto = onnx.load(str(file))
    onnx.checker.check_model(proto, full_check=True)  # type and shape inference too: catches ops given fp16
    if opts.simplify:
        try:
            import onnxslim
        except ImportError:
            raise ExportError("--simplify needs onnxslim (pip install onnxslim)") from None
        proto = onnxslim.slim(proto)
    meta = export_metadata(model, opts, nms=opts.nms)
    if opts.nms:
        from utils.export.onnx_nms import add_nms

        proto = add_nms(proto, opts.conf_thres, opts.iou_thres, opts.max_det)
        meta.update(conf_thres=opts.conf_thres, iou_thres=opts.iou_thres, max_det=opts.max_det)
    del proto.metadata_props[:]
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, json.dumps(v)
    onnx.save(proto, str(file))
    return file


def export_openvino(model: nn.Module, im: torch.Tensor, file: Path, opts: ExportOptions) -> Path:
    """OpenVINO IR folder ``*_openvino_model/`` (``.xml`` + ``.bin`` + ``metadata.yaml``), via a temporary ONNX.

    ``--half`` compresses the weights to FP16 (any device); the IR still takes fp32 input.
    """
    import openvino as ov
    import yaml

    file.mkdir(parents=True, exist_ok=True)
    onnx_opts = copy.copy(opts)
    onnx_opts.half = onnx_opts.nms = onnx_opts.simplify = False
    with tempfile.TemporaryDirectory() as tmp:
        onnx_file = export_onnx(model, im.float(), Path(tmp) / "model.onnx", onnx_opts)
        ov_model = ov.convert_model(str(onnx_file))
    xml = file / f"{file.name.removesuffix('_openvino_model')}.xml"
    ov.save_model(ov_model, str(xml), compress_to_fp16=opts.half)
    meta = export_metadata(model, opts, half=False, weights_fp16=opts.half)
    (file / "metadata.yaml").write_text(yaml.safe_dump(meta, sort_keys=False), encoding="utf-8")
    return file


def export_pt(model: nn.Module, im: torch.Tensor, file: Path, opts: ExportOptions) -> Path:
    """Our checkpoint format with fp16 values; tensors with zeros (after ``--prune``) stored as bitmask + non-zeros.

    The fused weights are stored in the unfused layout (each BatchNorm an exact identity: mean 0, variance 1,
    eps 0, weight 1, bias = the fused bias), so every checkpoint reader loads them and re-fusing is exact.
    Prints the dense and the sparse file sizes.
    """
    from models.common import Conv
    from utils.inference.prune import conv_sparsity, sparse_state_dict

    if not hasattr(model, "yaml"):
        raise ExportError("an Ensemble cannot be saved as one checkpoint; export each member separately")
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    bn_eps = {}
    for name, m in model.named_modules():
        if isinstance(m, Conv) and m.bn is None:
            bias = state.pop(f"{name}.conv.bias")
            n = bias.numel()
            state.update(
                {
                    f"{name}.bn.weight": torch.ones(n),
                    f"{name}.bn.bias": bias,
                    f"{name}.bn.running_mean": torch.zeros(n),
                    f"{name}.bn.running_var": torch.ones(n),
                    f"{name}.bn.num_batches_tracked": torch.tensor(0),
                }
            )
            bn_eps[f"{name}.bn"] = 0.0
    sparsity = conv_sparsity(model)
    meta = {"bn_eps": bn_eps, "pruned": opts.prune, "conv_sparsity": sparsity, "export": export_metadata(model, opts)}
    ckpt = checkpoint_dict(model, **meta)
    dense, sparse = sparse_state_dict(state)
    dense_size = _serialized_size({**ckpt, "state_dict": sparse_state_dict(state, min_sparsity=2.0)[0]})
    ckpt.update(state_dict=dense, sparse_state_dict=sparse, encoding="bitmask+fp16" if sparse else "fp16")
    save_atomic(ckpt, file)
    size = file.stat().st_size
    LOGGER.info(
        f"PyTorch: dense fp16 checkpoint {dense_size / 1e6:.2f} MB; this file {size / 1e6:.2f} MB "
        f"({len(sparse)} tensors as bitmask + fp16 non-zero values, conv sparsity {100 * sparsity:.1f}%)"
    )
    return file


def _serialized_size(obj: Any) -> int:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.tell()


def export_engine(model: nn.Module, im: torch.Tensor, file: Path, opts: ExportOptions) -> Path:
    """TensorRT engine built from an ONNX export; the file starts with 4 bytes of JSON length and the metadata."""
    import tensorrt as trt

    onnx_opts = copy.copy(opts)
    onnx_opts.half = onnx_opts.nms = False
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(trt_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_file = export_onnx(model, im.float(), Path(tmp) / "model.onnx", onnx_opts)
        if not parser.parse_from_file(str(onnx_file)):
            raise ExportError(f"TensorRT cannot parse the ONNX export: {parser.get_error(0)}")
    config = builder.create_builder_config()
    if opts.dynamic:
        profile = builder.create_optimization_profile()
        b, (h, w) = opts.batch_size, opts.imgsz
        profile.set_shape("images", (1, 3, 32, 32), (b, 3, h, w), (max(1, b * 2), 3, h, w))
        config.add_optimization_profile(profile)
    if opts.half:
        config.set_flag(trt.BuilderFlag.FP16)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise ExportError("TensorRT engine build failed (see the TensorRT log above)")
    meta = json.dumps(export_metadata(model, opts, half=False, fp16_kernels=opts.half)).encode()  # fp32 bindings
    with open(file, "wb") as fh:
        fh.write(len(meta).to_bytes(4, "little") + meta + bytes(engine))
    return file


def trt_network_flags(trt: Any) -> int:
    """``create_network`` flags: explicit batch, which TensorRT 7/8's ONNX parser requires (implicit-batch networks
    are refused) and which TensorRT 10 made the only mode (the flag is deprecated there: 0)."""
    if int(str(trt.__version__).split(".")[0]) >= 10:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)


def export_coreml(model: nn.Module, im: torch.Tensor, file: Path, opts: ExportOptions) -> Path:
    """Core ML ``.mlpackage`` (ML program) from the traced model; metadata in ``user_defined_metadata``."""
    import coremltools as ct

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated", category=FutureWarning)
        traced = torch.jit.trace(model, im, strict=False, check_trace=False)
    precision = ct.precision.FLOAT16 if opts.half else ct.precision.FLOAT32
    ml = ct.convert(traced, inputs=[ct.TensorType(name="images", shape=tuple(im.shape))], compute_precision=precision)
    ml.user_defined_metadata.update({k: json.dumps(v) for k, v in export_metadata(model, opts).items()})
    ml.save(str(file))
    return file


def export_tflite(model: nn.Module, im: torch.Tensor, file: Path, opts: ExportOptions) -> Path:
    """TFLite flatbuffer through litert-torch; the metadata goes to ``<name>_metadata.json`` beside it."""
    import litert_torch

    litert_torch.convert(model.eval(), (im,)).export(str(file))
    meta = export_metadata(model, opts)
    file.with_name(f"{file.stem}_metadata.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return file


# ------------------------------------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class ExportFormat:
    """One export format. ``needs``: importable module -> pip package; ``cuda``: needs a CUDA device;
    ``checked``: an inference backend exists, so the file is compared with PyTorch after export."""

    name: str
    flag: str
    suffix: str
    function: Callable[[nn.Module, torch.Tensor, Path, ExportOptions], Path]
    needs: dict[str, str] = field(default_factory=dict)
    cuda: bool = False
    checked: bool = True
    dynamic: bool = False  # dynamic batch/height/width unless --dynamic/--no-dynamic says otherwise


_OPENVINO_NEEDS = {"onnx": "onnx", "openvino": "openvino"}  # the IR is converted from a temporary ONNX file
FORMATS: tuple[ExportFormat, ...] = (
    ExportFormat("PyTorch", "pt", ".pt", export_pt),
    ExportFormat("TorchScript", "torchscript", ".torchscript", export_torchscript),
    ExportFormat("ONNX", "onnx", ".onnx", export_onnx, {"onnx": "onnx", "onnxruntime": "onnxruntime"}, dynamic=True),
    ExportFormat("OpenVINO", "openvino", "_openvino_model", export_openvino, _OPENVINO_NEEDS, dynamic=True),
    ExportFormat("TensorRT", "engine", ".engine", export_engine, {"tensorrt": "tensorrt"}, cuda=True, checked=False),
    ExportFormat("CoreML", "coreml", ".mlpackage", export_coreml, {"coremltools": "coremltools"}, checked=False),
    ExportFormat("TFLite", "tflite", ".tflite", export_tflite, {"litert_torch": "litert-torch"}, checked=False),
)


def format_row(flag: str) -> ExportFormat:
    """The row for an ``--include`` flag; ``ExportError`` listing the known flags otherwise."""
    for row in FORMATS:
        if row.flag == flag.lower():
            return row
    raise ExportError(f"--include {flag}: unknown format; choose from {', '.join(r.flag for r in FORMATS)}")


HALF_NEEDS_CUDA = ("torchscript", "onnx", "engine")  # fp16 graphs; OpenVINO --half only compresses stored weights


def missing_requirement(row: ExportFormat, device: torch.device) -> str | None:
    """``"needs X"`` when a package or device of ``row`` is absent, else None."""
    missing = [pkg for mod, pkg in row.needs.items() if importlib.util.find_spec(mod) is None]
    if missing:
        return f"needs {' and '.join(missing)} (pip install {' '.join(missing)})"
    if row.cuda and device.type != "cuda":
        return "needs a CUDA device (use --device 0 on a machine with an NVIDIA GPU)"
    return None


def output_path(row: ExportFormat, stem_file: Path, source: str | Path | None = None) -> Path:
    """``dir/stem`` + the row's suffix; a ``.pt`` export never overwrites its source weights."""
    out = stem_file.with_name(stem_file.name + row.suffix)
    if source is not None and out.resolve() == Path(source).resolve():
        out = stem_file.with_name(f"{stem_file.name}_fused{row.suffix}")
    return out


def file_size_mb(path: Path) -> float:
    """Size of a file, or of every file under a folder, in MB."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e6


# ------------------------------------------------------------------------------------------------ model and checks
def load_export_model(
    weights: list[str] | str,
    device: torch.device,
    prune: float = 0.0,
    prune_exclude: list[str] | None = None,
    ensemble_mode: str = "nms",
    channel_prune: dict | None = None,
    fuse: bool = True,
) -> nn.Module:
    """Fused eval model (or ``Ensemble`` of several) returning decoded Tensor[B, N, 5 + nc]; ``prune`` zeros
    that fraction of conv weights (global L1 on the fused convs) and makes the masks permanent.

    ``channel_prune`` (keyword arguments of ``utils.inference.channel_prune.channel_prune``, e.g. ``{"ratio": 0.3}``)
    removes channels from each member before it is fused; ``fuse=False`` keeps the BatchNorms (a trainable
    checkpoint)."""
    from models.ensemble import Ensemble
    from models.yolo import Detect
    from utils.checkpoints import load_model
    from utils.inference.prune import global_l1_prune, make_permanent

    paths = [weights] if isinstance(weights, (str, Path)) else list(weights)
    if len(paths) > 1 and ensemble_mode == "wbf":
        raise ExportError("--ensemble-mode wbf runs a per-member NMS in Python and cannot be exported; use nms")
    members = [load_model(p, device, fuse=fuse and not channel_prune) for p in paths]
    for m in members:
        if channel_prune:
            from utils.inference.channel_prune import channel_prune as prune_channels

            prune_channels(m, **channel_prune)
            if fuse:
                m.fuse(verbose=False)
        if prune:
            global_l1_prune(m, prune, prune_exclude)
            make_permanent(m)
        for d in m.modules():
            if isinstance(d, Detect):
                d.export = True  # forward returns the decoded tensor only
    if len(members) == 1:
        return members[0]
    return Ensemble(members, ensemble_mode, [str(p) for p in paths]).eval()


def check_export(row: ExportFormat, file: Path, model: nn.Module, opts: ExportOptions, device: torch.device) -> float:
    """Run the exported file and PyTorch on one seeded random input; print and return the max abs difference.

    Raises ``ExportError`` beyond a tolerance of 1e-3 (fp32) or 5e-3 (fp16 values) times (1 + max |output|).
    """
    from utils.inference.backends import load_backend

    gen = torch.Generator().manual_seed(0)
    x = torch.rand((opts.batch_size, 3, *opts.imgsz), generator=gen).to(device)
    with torch.no_grad():
        ref = model(x)
        ref = ref[0] if isinstance(ref, (tuple, list)) else ref
        if row.flag == "onnx" and opts.nms:
            return _check_nms(file, x, ref, opts)
        y = load_backend(file, device)(x)  # .pt files load through the same interface as the exports
    diff = float((y.float() - ref.float()).abs().max())
    tol = (5e-3 if opts.half or row.flag == "pt" else 1e-3) * (1 + float(ref.abs().max()))
    LOGGER.info(f"{row.name}: max abs difference vs PyTorch {diff:.2e} on {tuple(x.shape)} (tolerance {tol:.2g})")
    if not diff <= tol:
        raise ExportError(f"output differs from PyTorch by {diff:.3g} (tolerance {tol:.3g})")
    return diff


def _check_nms(file: Path, x: torch.Tensor, ref: torch.Tensor, opts: ExportOptions) -> float:
    """Compare the in-graph NMS with ``non_max_suppression`` on the PyTorch output.

    The check feeds ``conf_thres`` 0.001 (a graph input): on a random image few boxes pass the export default.
    """
    import numpy as np
    import onnxruntime as ort

    from utils.nms import non_max_suppression

    so = ort.SessionOptions()
    so.log_severity_level = 3  # overridable thresholds are initializers listed as inputs: ORT warns, by design
    session = ort.InferenceSession(str(file), so, providers=["CPUExecutionProvider"])
    conf = 0.001
    images = x.cpu().numpy().astype(np.float16 if opts.half else np.float32)  # an fp16 export takes fp16 images
    dets = session.run(None, {"images": images, "conf_thres": np.array([conf], np.float32)})[0]
    expect = non_max_suppression(ref.float().cpu(), conf, opts.iou_thres, max_det=opts.max_det)
    expect = torch.cat([torch.cat((torch.full((len(d), 1), float(i)), d), 1) for i, d in enumerate(expect)])
    if len(dets) != len(expect):
        raise ExportError(f"in-graph NMS kept {len(dets)} boxes, PyTorch + non_max_suppression {len(expect)}")
    diff = float((torch.from_numpy(dets) - expect).abs().max()) if len(dets) else 0.0
    LOGGER.info(f"ONNX: {len(dets)} detections, max abs difference vs PyTorch + non_max_suppression {diff:.2e}")
    if diff > 1e-2 * (1 + max(opts.imgsz)):
        raise ExportError(f"in-graph NMS boxes differ from PyTorch by {diff:.3g}")
    return diff


def export_formats(
    model: nn.Module,
    flags: list[str],
    stem_file: Path,
    opts: ExportOptions,
    device: torch.device,
    source: str | Path | None = None,
) -> dict[str, Path]:
    """Export ``model`` to each ``--include`` flag as ``stem_file`` + suffix, checking each against PyTorch.

    Every format is attempted; the failures (missing package or device, exporter error, output mismatch) are
    printed as they happen and raised together as one ``ExportError``. Returns ``{flag: path}`` of successes.
    """
    rows = [format_row(f) for f in dict.fromkeys(flags)]
    im = torch.zeros((opts.batch_size, 3, *opts.imgsz), device=device)
    with torch.no_grad():
        model(im)  # dry run: builds the grids and surfaces model errors before any export
    done: dict[str, Path] = {}
    failed: list[str] = []
    for row in rows:
        reason = missing_requirement(row, device)
        if reason is None:
            t0 = time.time()
            try:
                row_opts = opts if opts.dynamic is not None else replace(opts, dynamic=row.dynamic)
                file = row.function(model, im, output_path(row, stem_file, source), row_opts)
                mb = file_size_mb(file)
                h, w = opts.imgsz
                shapes = "dynamic shapes" if row_opts.dynamic else f"fixed input {opts.batch_size}x3x{h}x{w}"
                LOGGER.info(
                    f"{row.name}: export success ✅ {time.time() - t0:.1f}s, saved as {file} ({mb:.1f} MB, {shapes})"
                )
                if row.checked:
                    check_export(row, file, model, row_opts, device)
                else:
                    LOGGER.info(f"{row.name}: not compared with PyTorch (this toolkit has no {row.name} runtime)")
                done[row.flag] = file
                continue
            except Exception as e:  # every format's failure is reported with its reason, none is dropped
                lines = str(e).strip().splitlines()
                reason = f"{type(e).__name__}: {lines[0][:300] if lines else ''}"
        LOGGER.info(f"{row.name}: export failure ❌ {reason}")
        failed.append(f"{row.name} ({reason})")
    if failed:
        raise ExportError(f"export failed for {len(failed)} of {len(rows)} format(s): {'; '.join(failed)}")
    return done
