"""Export detection weights to deployment formats, each checked against PyTorch after export.

Usage:
    python export.py --weights yolov5n.pt --include torchscript onnx openvino
    python export.py --weights yolov5n.pt --include onnx --simplify       # dynamic batch/shape (ONNX default)
    python export.py --weights yolov5n.pt --include onnx --no-dynamic     # fixed 1x3x640x640 input
    python export.py --weights yolov5n.pt --include onnx --nms             # final boxes from ONNX Runtime alone
    python export.py --weights yolov5n.pt --include pt --prune 0.3         # sparse-stored pruned checkpoint
    python export.py --weights yolov5n.pt --include pt onnx --prune-channels 0.3 --data coco128   # faster

Formats (``--include``): pt, torchscript, onnx, openvino; engine (TensorRT), coreml and tflite when their package
(and for TensorRT a CUDA device) is present. Exported files run in val.py and detect.py like .pt weights.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import utils.startup  # noqa: F401 (first: no garbage collection while the script imports)
from utils.devices import select_device
from utils.export.formats import (
    FORMATS,
    HALF_NEEDS_CUDA,
    ExportError,
    ExportOptions,
    export_formats,
    format_row,
    load_export_model,
)
from utils.log import LOGGER
from utils.options import (
    CHANNEL_PRUNE_DEFAULT,
    UsageError,
    add_shared,
    device_options,
    inference_options,
    print_args,
    run_cli,
    threshold_options,
    weights_options,
)


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    parents = [weights_options("yolov5s.pt"), device_options(), threshold_options(0.25, 0.45), inference_options()]
    p = argparse.ArgumentParser(description="Export YOLOv5-style detection weights", parents=parents)
    # export takes one or two sizes (height, width), unlike the single --imgsz of val.py and detect.py
    p.add_argument("--imgsz", "--img", "--img-size", nargs="+", type=int, default=[640], help="image (h, w)")
    add_shared(p, "--batch-size", default=1, help="batch size of the exported input")
    add_shared(p, "--include", default=["torchscript"], help=f"formats: {', '.join(r.flag for r in FORMATS)}")
    add_shared(p, "--dynamic")
    p.add_argument("--simplify", action="store_true", help="ONNX: optimise the graph with onnxslim")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset version")
    p.add_argument("--nms", action="store_true", help="ONNX: append NMS; output [N, 7] (image, xyxy, conf, cls)")
    p.add_argument("--save-dir", default="", help="folder for the exported files (default: beside the weights)")
    p.add_argument("--data", default=None, help="dataset YAML whose train images calibrate --prune-channels")
    return p.parse_args(argv)


def run(
    weights: list[str] | str = "yolov5s.pt",
    imgsz: list[int] | int = 640,
    batch_size: int = 1,
    device: str = "cpu",
    half: bool = False,
    include: list[str] | tuple[str, ...] = ("torchscript",),
    dynamic: bool | None = None,
    simplify: bool = False,
    opset: int = 17,
    nms: bool = False,
    conf_thres: float = 0.25,
    iou_thres: float = 0.45,
    max_det: int = 300,
    prune: float = 0.0,
    prune_exclude: list[str] | None = None,
    prune_channels: float = 0.0,
    prune_method: str = CHANNEL_PRUNE_DEFAULT,
    prune_global: bool = False,
    ensemble_mode: str = "nms",
    augment: bool = False,
    tta_scales: list[float] | None = None,
    tta_flips: list[str] | None = None,
    save_dir: str | Path = "",
    data: str | None = None,
) -> dict[str, Path]:
    """Export ``weights`` to every ``include`` format; returns ``{flag: path}``; ``ExportError`` if any failed."""
    paths = [weights] if isinstance(weights, (str, Path)) else list(weights)
    if not paths:
        raise UsageError("--weights: no weights given")
    sizes = [imgsz] if isinstance(imgsz, int) else list(imgsz)
    if not 1 <= len(sizes) <= 2 or min(sizes) < 1:
        raise UsageError(f"--imgsz {imgsz}: give one size or two (height width)")
    if augment or tta_scales or tta_flips:
        raise UsageError("--augment: TTA is not exported; export (dynamic shapes) and pass --augment to val/detect")
    if batch_size < 1:
        raise UsageError(f"--batch-size {batch_size}: must be at least 1")
    try:
        [format_row(f) for f in include]
    except ExportError as e:
        raise UsageError(str(e)) from None
    if nms and "onnx" not in include:
        raise UsageError("--nms applies to ONNX exports: add onnx to --include")
    dev = select_device(device)
    if half and dev.type != "cuda" and any(f in HALF_NEEDS_CUDA for f in include):
        raise UsageError(f"--half: fp16 {'/'.join(HALF_NEEDS_CUDA)} export needs a CUDA device (use --device 0)")
    channels = {"ratio": prune_channels, "method": prune_method, "global_pruning": prune_global}
    if prune_channels and data:  # calibration images: mean compensation and the 'activation' ranking
        from utils.data.dataset_config import load_data_config
        from utils.inference.channel_prune import calibration_batch

        channels["calibration"] = calibration_batch(
            load_data_config(data, require=("train",))["train"], min(sizes[0], 640)
        )
    # a channel-pruned .pt keeps its BatchNorms so that train.py can fine-tune it; other formats get it fused
    keep_bn = bool(prune_channels) and "pt" in include and len(paths) == 1
    model = load_export_model(
        paths, dev, prune, prune_exclude, ensemble_mode, channels if prune_channels else None, fuse=not keep_bn
    )
    stride = int(max(model.stride))
    h, w = sizes * 2 if len(sizes) == 1 else sizes
    if h % stride or w % stride:
        raise UsageError(f"--imgsz {h} {w}: must be multiples of the model stride {stride}")
    source = Path(paths[0])
    stem = source.stem + (f"_pruned{round(prune * 100)}" if prune else "")
    stem += (f"_ch{round(prune_channels * 100)}" if prune_channels else "") + ("_ensemble" if len(paths) > 1 else "")
    out_dir = Path(save_dir) if save_dir else source.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    opts = ExportOptions(
        imgsz=(h, w),
        batch_size=batch_size,
        half=half,
        dynamic=dynamic,
        simplify=simplify,
        opset=opset,
        nms=nms,
        conf_thres=conf_thres,
        iou_thres=iou_thres,
        max_det=max_det,
        prune=prune,
        source=str(source),
    )
    LOGGER.info(f"\nStarting export of {', '.join(map(str, paths))} at {h}x{w}, batch {batch_size}...")
    done = {}
    if keep_bn:
        done = export_formats(model, ["pt"], out_dir / stem, opts, dev, source=source)
        model.fuse(verbose=False)
    rest = [f for f in include if not (keep_bn and f == "pt")]
    if rest:
        done.update(export_formats(model, rest, out_dir / stem, opts, dev, source=source))
    LOGGER.info(f"\nExport complete: {', '.join(str(f) for f in done.values())}")
    return done


def main(opt: argparse.Namespace) -> None:
    print_args("export", vars(opt))
    try:
        run(**vars(opt))
    except ExportError as e:  # the per-format reasons were printed as they happened; exit non-zero
        print(f"export.py: error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    run_cli("export.py", lambda: main(parse_opt(sys.argv[1:])))
