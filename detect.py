"""Run detection on images, folders, globs, list files, videos, webcams and streams.

Usage:
    python detect.py --weights yolov5n.pt --source data/images
    python detect.py --weights a.pt b.pt --source vid.mp4 --augment     # Ensemble + TTA
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from utils.boxes import scale_boxes_to_original, xyxy2xywh
from utils.devices import Profile, select_device
from utils.files import increment_path
from utils.inference.loader import load_inference_model
from utils.nms import non_max_suppression
from utils.options import (
    REPO_ROOT,
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

if TYPE_CHECKING:  # torch is imported where used: utils (imported first) sets OMP_WAIT_POLICY before it loads
    import torch


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
    p.add_argument("--save-txt", action="store_true", help="save results to *.txt")
    p.add_argument("--save-conf", action="store_true", help="save confidences in --save-txt labels")
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


def describe(det: torch.Tensor, names: dict[int, str]) -> str:
    """``2 persons, 1 tie`` for a Tensor[n, 6] of detections (``(no detections)`` when empty)."""
    if not len(det):
        return "(no detections)"
    classes, counts = det[:, 5].unique(return_counts=True)
    return ", ".join(f"{n} {names[int(c)]}{'s' * (n > 1)}" for c, n in zip(classes.tolist(), counts.tolist()))


class _VideoSink:
    """One cv2.VideoWriter per output path, reopened when the source changes."""

    def __init__(self):
        self.path, self.writer = None, None

    def write(self, path: Path, frame: np.ndarray, cap) -> None:
        if self.path != path:
            self.close()
            fps = cap.get(cv2.CAP_PROP_FPS) if cap is not None else 30
            h, w = frame.shape[:2]
            self.path = path.with_suffix(".mp4")
            self.writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), fps or 30, (w, h))
        self.writer.write(frame)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
        self.path, self.writer = None, None


def _save_txt(det: torch.Tensor, shape0: tuple[int, ...], file: Path, save_conf: bool) -> None:
    import torch

    gn = torch.tensor(shape0)[[1, 0, 1, 0]]
    with open(file, "a", encoding="utf-8") as f:
        for *xyxy, conf, cls in det.tolist():
            xywh = (xyxy2xywh(torch.tensor(xyxy).view(1, 4)) / gn).view(-1).tolist()
            line = (cls, *xywh, conf) if save_conf else (cls, *xywh)
            f.write(("%g " * len(line)).rstrip() % line + "\n")


def _make_source(source: str, imgsz: int, stride: int, auto: bool, vid_stride: int):
    from utils.data.sources import LoadImages, LoadStreams, classify_source

    if classify_source(source) == "stream":
        return LoadStreams(source, img_size=imgsz, stride=stride, auto=auto, vid_stride=vid_stride), True
    return LoadImages(source, img_size=imgsz, stride=stride, auto=auto, vid_stride=vid_stride, skip_corrupt=True), False


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
    tta_scales: list[float] | None = None,
    tta_flips: list[str] | None = None,
    ensemble_mode: str = "nms",
    prune: float = 0.0,
    prune_exclude: list[str] | None = None,
    prune_channels: float = 0.0,
    prune_method: str = "l1",
    prune_global: bool = False,
    verbose: bool = False,
) -> Path:
    """Detect on ``source`` and save annotated images/videos (and labels, crops); returns the run folder."""
    import torch

    from utils.plots import Annotator, colors, save_one_box

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = select_device(device)
    model = load_inference_model(
        weights,
        device,
        half=half,
        augment=augment,
        tta_scales=tta_scales,
        tta_flips=tta_flips,
        ensemble_mode=ensemble_mode,
        prune=prune,
        prune_exclude=prune_exclude,
        verbose=verbose,
        imgsz=imgsz,
        prune_channels=prune_channels,
        prune_method=prune_method,
        prune_global=prune_global,
    )
    names, stride = model.names, model.max_stride
    imgsz = check_img_size(imgsz, stride)
    dataset, is_stream = _make_source(str(source), imgsz, stride, model.supports_rect, vid_stride)
    save_dir = increment_path(Path(project) / name, exist_ok=exist_ok, mkdir=True)
    if save_txt:
        (save_dir / "labels").mkdir(parents=True, exist_ok=True)
    dt = Profile(device), Profile(device), Profile(device)
    sinks: dict[int, _VideoSink] = {}
    seen, shape = 0, None
    for path, im, im0s, cap, s in dataset:
        with dt[0]:
            x = torch.from_numpy(im).to(device)
            x = (x.half() if model.half_precision else x.float()) / 255
            if x.ndim == 3:
                x = x[None]
            shape = tuple(x.shape)
        with dt[1], torch.inference_mode():
            pred = model(x)
        with dt[2]:
            pred = non_max_suppression(pred, conf_thres, iou_thres, classes, agnostic_nms, max_det=max_det)
        for i, det in enumerate(pred):
            seen += 1
            if is_stream:
                p, im0, line = Path(path[i]), im0s[i].copy(), f"{i}: "
                frame = dataset.count
            else:
                p, im0, line = Path(path), im0s.copy(), s
                frame = getattr(dataset, "frame", 0)
            det = det.detach().cpu().float()
            scale_boxes_to_original(x.shape[2:], det[:, :4], im0.shape[:2])
            line += f"{x.shape[2]}x{x.shape[3]} {describe(det, names)}, {dt[1].dt * 1e3:.1f}ms"
            print(line)
            stem = p.stem if (cap is None and not is_stream) else f"{p.stem}_{frame}"
            if save_txt and len(det):  # like YOLOv5: no file for an image without detections
                _save_txt(det, im0.shape, save_dir / "labels" / f"{stem}.txt", save_conf)
            annotator = Annotator(im0, line_width=line_thickness)
            for *xyxy, conf, cls in det.tolist():
                c = int(cls)
                label = None if hide_labels else (names[c] if hide_conf else f"{names[c]} {conf:.2f}")
                if not nosave or view_img:
                    annotator.box_label(xyxy, label or "", color=colors(c, bgr=True))
                if save_crop:
                    save_one_box(xyxy, im0s[i] if is_stream else im0s, save_dir / "crops" / names[c] / f"{p.stem}.jpg")
            im0 = annotator.result()
            if view_img:
                cv2.imshow(str(p), im0)
                cv2.waitKey(1)
            if not nosave:
                if cap is None and not is_stream:
                    cv2.imwrite(str(save_dir / p.name), im0)
                else:
                    sinks.setdefault(i, _VideoSink()).write(save_dir / p.stem, im0, cap)
    for sink in sinks.values():
        sink.close()
    if seen:
        t = tuple(x.t / seen * 1e3 for x in dt)
        print(f"Speed: %.1fms pre-process, %.1fms inference, %.1fms NMS per image at shape {shape}" % t)
    if model.member_times is not None and verbose:
        model.print_member_times(seen)
    if save_txt:
        n = len(list((save_dir / "labels").glob("*.txt")))
        print(f"{n} labels saved to {save_dir / 'labels'}")
    print(f"Results saved to {save_dir}")
    return save_dir


def main(opt: argparse.Namespace) -> None:
    print_args("detect", vars(opt))
    run(**vars(opt))


if __name__ == "__main__":
    run_cli("detect.py", lambda: main(parse_opt(sys.argv[1:])))
