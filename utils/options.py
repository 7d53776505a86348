"""Command-line options shared by the scripts, each declared once, and the entry-point error handling."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from utils import startup
from utils.devices import keep_freed_memory
from utils.errors import UsageError, UserError
from utils.files import REPO_ROOT
from utils.inference.channel_prune import DEFAULT_METHOD as CHANNEL_PRUNE_DEFAULT
from utils.inference.channel_prune import METHODS as CHANNEL_PRUNE_METHODS
from utils.log import LOGGER

__all__ = ["REPO_ROOT", "UsageError", "UserError"]  # re-exported: scripts and tests import them from here

OPTIMIZERS = ("SGD", "Adam", "AdamW")  # train.py --optimizer, benchmarks.py --study (built in utils/train/optim.py)
ENSEMBLE_MODES = ("nms", "mean", "max", "wbf")  # --ensemble-mode: how members' outputs merge (models/ensemble.py)


def check_img_size(imgsz: int, stride: int, min_strides: int = 1) -> int:
    """``imgsz`` rounded up to a multiple of the model's max ``stride`` (at least ``min_strides`` of it), with a
    one-line warning when it changes. val.py, detect.py and train.py (``min_strides=2``) all size images this way."""
    new = max(-(-imgsz // stride) * stride, stride * min_strides)
    if new != imgsz:
        LOGGER.warning(f"WARNING ⚠️ --img-size {imgsz} must be a multiple of max stride {stride}, updating to {new}")
    return int(new)


def _parent() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(add_help=False)


def weights_options(default: str | None = "yolov5s.pt") -> argparse.ArgumentParser:
    p = _parent()
    p.add_argument(
        "--weights",
        nargs="+",
        type=str,
        default=[default] if default else [],
        help="model path(s): .pt (ours or official YOLOv5), several build an Ensemble",
    )
    return p


def data_options(default: str = "data/coco128.yaml") -> argparse.ArgumentParser:
    p = _parent()
    p.add_argument("--data", type=str, default=default, help="dataset YAML path or name (e.g. coco128)")
    return p


def image_size_options(default: int = 640) -> argparse.ArgumentParser:
    p = _parent()
    p.add_argument("--imgsz", "--img", "--img-size", type=int, default=default, help="inference size (pixels)")
    return p


def device_options() -> argparse.ArgumentParser:
    p = _parent()
    p.add_argument("--device", default="", help="cuda device, i.e. 0 or 0,1,2,3 or cpu")
    p.add_argument(
        "--half", action="store_true", help="half precision: fp16 on CUDA, bf16 on a CPU with AMX/AVX512-BF16"
    )
    return p


def threshold_options(conf: float, iou: float) -> argparse.ArgumentParser:
    p = _parent()
    p.add_argument("--conf-thres", type=float, default=conf, help="confidence threshold")
    p.add_argument("--iou-thres", type=float, default=iou, help="NMS IoU threshold")
    p.add_argument("--max-det", type=int, default=300, help="maximum detections per image")
    return p


def channel_prune_options() -> argparse.ArgumentParser:
    """Structured pruning (``utils.inference.channel_prune``): val.py, detect.py, export.py and train.py."""
    p = _parent()
    p.add_argument(
        "--prune-channels",
        type=float,
        default=0.0,
        help="remove this fraction of conv output channels (torch-pruning): a smaller, faster model",
    )
    p.add_argument(
        "--prune-method",
        choices=CHANNEL_PRUNE_METHODS,
        default=CHANNEL_PRUNE_DEFAULT,
        help="channel importance for --prune-channels: activation (variance on calibration images x the weights "
        "reading it; the default), l1/l2 weight norm or bn-scale (|BatchNorm gamma|)",
    )
    p.add_argument(
        "--prune-global",
        action="store_true",
        help="--prune-channels ranks channels over the whole network (layers pruned unevenly), not per layer",
    )
    return p


def inference_options() -> argparse.ArgumentParser:
    """Test-time augmentation, ensembling and pruning: the same flags for val.py, detect.py and export.py."""
    p = argparse.ArgumentParser(add_help=False, parents=[channel_prune_options()])
    p.add_argument("--augment", action="store_true", help="test-time augmentation (scales and flips)")
    p.add_argument("--tta-scales", type=float, nargs="+", default=None, help="TTA scales (default 1 0.83 0.67)")
    p.add_argument(
        "--tta-flips",
        type=str,
        nargs="+",
        default=None,
        help="TTA flip per scale: none, lr (left-right) or ud (up-down) (default none lr none)",
    )
    p.add_argument(
        "--ensemble-mode",
        choices=ENSEMBLE_MODES,
        default="nms",
        help="how several --weights are merged (default: one NMS over all members' candidates)",
    )
    p.add_argument("--prune", type=float, default=0.0, help="global L1 unstructured sparsity of conv weights (0-1)")
    p.add_argument(
        "--prune-exclude",
        type=str,
        nargs="*",
        default=[],
        help="module name prefixes kept dense, e.g. model.24 (the Detect head)",
    )
    return p


SHARED_FLAGS: dict[str, dict] = {  # flags several scripts declare; each script may change default and help
    "--batch-size": {"type": int, "default": None, "help": "batch size"},
    "--workers": {"type": int, "default": 8, "help": "max dataloader workers"},
    "--save-txt": {"action": "store_true", "help": "save results to *.txt"},
    "--save-conf": {"action": "store_true", "help": "save confidences in --save-txt labels"},
    "--include": {"nargs": "+", "help": "export formats"},
    "--dynamic": {
        "action": argparse.BooleanOptionalAction,
        "default": None,
        "help": "dynamic batch and image size (default: on for ONNX/OpenVINO, which then take val/detect's "
        "rectangular batches and give PyTorch's numbers; off for TensorRT/CoreML/TFLite); --no-dynamic: fixed "
        "--imgsz/--batch-size",
    },
}


def add_shared(p: argparse.ArgumentParser, *flags: str, **overrides) -> None:
    """Declare ``flags`` from ``SHARED_FLAGS`` on ``p`` at this point of its flag order (``print_args`` echoes
    options in that order); ``overrides`` (``default=32``, ``help=...``) apply to each of them."""
    for flag in flags:
        p.add_argument(flag, **{**SHARED_FLAGS[flag], **overrides})


def output_options(default_project: str) -> argparse.ArgumentParser:
    p = _parent()
    p.add_argument("--project", default=str(REPO_ROOT / default_project), help="save results to project/name")
    p.add_argument("--name", default="exp", help="save results to project/name")
    p.add_argument("--exist-ok", action="store_true", help="existing project/name ok, do not increment")
    return p


def print_args(script: str, args: dict) -> None:
    """The echo line users know: ``val: data=..., weights=[...], ...``."""
    LOGGER.info(f"{script}: " + ", ".join(f"{k}={v}" for k, v in args.items()))


def run_cli(script: str, main: Callable[[], object]) -> None:
    """Run ``main``; user errors print one ``script: error: ...`` line and exit 2 instead of a traceback."""
    startup.resume()
    keep_freed_memory()
    try:
        main()
    except (UserError, FileNotFoundError) as e:
        print(f"{script}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{script}: interrupted", file=sys.stderr)
        sys.exit(130)
