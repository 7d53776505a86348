"""Run detection on images, folders, globs, list files, videos, webcams and streams.

Usage:
    python detect.py --weights yolov5n.pt --source data/images
    python detect.py --weights a.pt b.pt --source vid.mp4 --augment     # Ensemble + TTA
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import utils.startup  # noqa: F401 (first: no garbage collection while the script imports)
from utils.data.sources import classify_source
from utils.devices import print_speed, select_device
from utils.files import increment_path, print_labels_saved
from utils.inference.loader import InferenceOptions, load_inference_model
from utils.inference.predict import PredictOptions, make_source, predict
from utils.log import LOGGER
from utils.options import (
    REPO_ROOT,
    add_shared,
    check_img_size,
    device_options,
    image_size_options,
    inference_options,
    output_options,
    print_args,
    run_cli,
    threshold_options,
    weights_options,
)


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    parents = [
        weights_options("yolov5s.pt"),
        image_size_options(640),
        threshold_options(0.25, 0.45),
        device_options(),
        inference_options(),
        output_options("runs/detect"),
    ]
    p = argparse.ArgumentParser(description="Detect objects with YOLOv5-style weights", parents=parents)
    p.add_argument(
        "--source",
        type=str,
        default=str(REPO_ROOT / "data/images"),
        help="file, folder, glob, .txt list, video, webcam index (0), stream URL or .streams list",
    )
    p.add_argument("--view-img", action="store_true", help="show results in a window")
    add_shared(p, "--save-txt", "--save-conf")
    p.add_argument("--save-crop", action="store_true", help="save cropped prediction boxes")
    p.add_argument("--nosave", action="store_true", help="do not save images/videos")
    p.add_argument("--classes", nargs="+", type=int, help="filter by class: --classes 0, or --classes 0 2 3")
    p.add_argument("--agnostic-nms", action="store_true", help="class-agnostic NMS")
    p.add_argument("--line-thickness", default=3, type=int, help="bounding box thickness (pixels)")
    p.add_argument("--hide-labels", action="store_true", help="hide labels")
    p.add_argument("--hide-conf", action="store_true", help="hide confidences")
    p.add_argument("--vid-stride", type=int, default=1, help="video frame-rate stride")
    p.add_argument("--verbose", action="store_true", help="per-member ensemble timings, per-layer prune table")
    p.set_defaults(max_det=1000)
    return p.parse_args(argv)


def run(
    weights: list[str] | str = "yolov5s.pt",
    source: str = "data/images",
    imgsz: int = 640,
    conf_thres: float = 0.25,
    iou_thres: float = 0.45,
    max_det: int = 300,
    device: str = "",
    view_img: bool = False,
    save_txt: bool = False,
    save_conf: bool = False,
    save_crop: bool = False,
    nosave: bool = False,
    classes: list[int] | None = None,
    agnostic_nms: bool = False,
    augment: bool = False,
    project: str | Path = "runs/detect",
    name: str = "exp",
    exist_ok: bool = False,
    line_thickness: int = 3,
    hide_labels: bool = False,
    hide_conf: bool = False,
    half: bool = False,
    vid_stride: int = 1,
    verbose: bool = False,
    **inference,
) -> Path:
    """Detect on ``source`` and save annotated images/videos (and labels, crops); returns the run folder.

    ``inference``: the other ``InferenceOptions`` keywords (``tta_scales, tta_flips, ensemble_mode, prune,
    prune_exclude, prune_channels, prune_method, prune_global``), as the flags of the same names.
    """
    device = select_device(device)
    if classify_source(source) == "files":  # --prune-channels: compensate on the images to detect in
        inference.setdefault("prune_calibration", str(source))
    inference = InferenceOptions.from_kwargs(half=half, augment=augment, verbose=verbose, imgsz=imgsz, **inference)
    model = load_inference_model(weights, device, inference)
    imgsz = check_img_size(imgsz, model.max_stride)
    dataset, is_stream = make_source(str(source), imgsz, model.max_stride, model.supports_rect, vid_stride)
    save_dir = increment_path(Path(project) / name, exist_ok=exist_ok, mkdir=True)
    opts = PredictOptions(
        conf_thres, iou_thres, classes, agnostic_nms, max_det, view_img, save_txt, save_conf, save_crop, nosave,
        line_thickness, hide_labels, hide_conf,
    )  # fmt: skip
    with model.runtime_threads():
        result = predict(model, dataset, is_stream, save_dir, opts, device)
    if result.seen:
        print_speed(result.speed_ms, result.shape)
    if model.member_times is not None and verbose:
        model.print_member_times(result.seen)
    if save_txt:
        print_labels_saved(save_dir / "labels")
    LOGGER.info(f"Results saved to {save_dir}")
    return save_dir


def main(opt: argparse.Namespace) -> None:
    print_args("detect", vars(opt))
    run(**vars(opt))


if __name__ == "__main__":
    run_cli("detect.py", lambda: main(parse_opt(sys.argv[1:])))
