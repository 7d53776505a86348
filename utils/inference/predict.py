"""The frame loop behind ``detect.py``: sources in, annotated images/videos, YOLO label files and crops out.

``predict(model, dataset, is_stream, save_dir, opts, device)`` runs a loaded ``InferenceModel`` over what
``make_source`` opened, prints YOLOv5's per-image line (``image 3/128 /path/x.jpg: 480x640 2 persons, 31.2ms``)
and returns the per-image timings for the ``Speed:`` line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from utils.boxes import scale_boxes_to_original
from utils.data.labels import write_yolo_labels
from utils.devices import Profile
from utils.log import LOGGER
from utils.nms import non_max_suppression


@dataclass
class PredictOptions:
    """What ``predict`` keeps, draws and saves (``detect.py``'s flags of the same names)."""

    conf_thres: float = 0.25
    iou_thres: float = 0.45
    classes: list[int] | None = None
    agnostic_nms: bool = False
    max_det: int = 1000
    view_img: bool = False
    save_txt: bool = False
    save_conf: bool = False
    save_crop: bool = False
    nosave: bool = False
    line_thickness: int = 3
    hide_labels: bool = False
    hide_conf: bool = False


@dataclass
class PredictResult:
    """``seen`` images, the last input ``shape`` (B, 3, H, W) and ms per image (pre-process, inference, NMS)."""

    seen: int
    shape: tuple[int, ...] | None
    speed_ms: tuple[float, float, float]


def describe(det: torch.Tensor, names: dict[int, str]) -> str:
    """``2 persons, 1 tie`` for a Tensor[n, 6] of detections (``(no detections)`` when empty)."""
    if not len(det):
        return "(no detections)"
    classes, counts = det[:, 5].unique(return_counts=True)
    return ", ".join(f"{n} {names[int(c)]}{'s' * (n > 1)}" for c, n in zip(classes.tolist(), counts.tolist()))


class VideoSink:
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


def make_source(source: str, imgsz: int, stride: int, auto: bool, vid_stride: int):
    """(loader, is_stream) for any ``--source``: webcams and stream URLs batch one frame per stream."""
    from utils.data.sources import LoadImages, LoadStreams, classify_source

    if classify_source(source) == "stream":
        return LoadStreams(source, img_size=imgsz, stride=stride, auto=auto, vid_stride=vid_stride), True
    return LoadImages(source, img_size=imgsz, stride=stride, auto=auto, vid_stride=vid_stride, skip_corrupt=True), False


def predict(
    model, dataset, is_stream: bool, save_dir: Path, opts: PredictOptions, device: torch.device
) -> PredictResult:
    """Detect on every frame of ``dataset`` (from ``make_source``) and save what ``opts`` asks for under ``save_dir``.

    ``model`` is an ``InferenceModel`` on ``device``; boxes are drawn and saved in original-image pixels.
    """
    if opts.save_txt:
        (save_dir / "labels").mkdir(parents=True, exist_ok=True)
    dt = Profile(device), Profile(device), Profile(device)
    sinks: dict[int, VideoSink] = {}
    seen, shape = 0, None
    for path, im, im0s, cap, s in dataset:
        with dt[0]:
            x = model.input_tensor(im, device)
            shape = tuple(x.shape)
        with dt[1], torch.inference_mode():
            pred = model(x)
        with dt[2]:
            pred = non_max_suppression(
                pred, opts.conf_thres, opts.iou_thres, opts.classes, opts.agnostic_nms, max_det=opts.max_det
            )
        for i, det in enumerate(pred):
            seen += 1
            if is_stream:
                p, im0, line, frame = Path(path[i]), im0s[i].copy(), f"{i}: ", dataset.count
            else:
                p, im0, line, frame = Path(path), im0s.copy(), s, getattr(dataset, "frame", 0)
            det = det.detach().cpu().float()
            scale_boxes_to_original(x.shape[2:], det[:, :4], im0.shape[:2])
            LOGGER.info(f"{line}{x.shape[2]}x{x.shape[3]} {describe(det, model.names)}, {dt[1].dt * 1e3:.1f}ms")
            is_video = cap is not None or is_stream
            stem = f"{p.stem}_{frame}" if is_video else p.stem
            if opts.save_txt and len(det):  # like YOLOv5: no file for an image without detections
                write_yolo_labels(det, im0.shape, save_dir / "labels" / f"{stem}.txt", opts.save_conf)
            im0 = _annotate(im0, im0s[i] if is_stream else im0s, det, model.names, p, save_dir, opts)
            if opts.view_img:
                cv2.imshow(str(p), im0)
                cv2.waitKey(1)
            if not opts.nosave:
                if is_video:
                    sinks.setdefault(i, VideoSink()).write(save_dir / p.stem, im0, cap)
                else:
                    cv2.imwrite(str(save_dir / p.name), im0)
    for sink in sinks.values():
        sink.close()
    return PredictResult(seen, shape, tuple(x.t / max(seen, 1) * 1e3 for x in dt))


def _annotate(im0, original, det, names, p: Path, save_dir: Path, opts: PredictOptions) -> np.ndarray:
    """Draw the boxes on ``im0`` (a copy of ``original``) and save --save-crop crops cut from ``original``."""
    from utils.plots import Annotator, colors, save_one_box

    annotator = Annotator(im0, line_width=opts.line_thickness)
    for *xyxy, conf, cls in det.tolist():
        c = int(cls)
        label = None if opts.hide_labels else (names[c] if opts.hide_conf else f"{names[c]} {conf:.2f}")
        if not opts.nosave or opts.view_img:
            annotator.box_label(xyxy, label or "", color=colors(c, bgr=True))
        if opts.save_crop:
            save_one_box(xyxy, original, save_dir / "crops" / names[c] / f"{p.stem}.jpg")
    return annotator.result()
