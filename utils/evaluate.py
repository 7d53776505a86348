"""The one evaluation path: ``val.py`` and training both call ``evaluate``."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from utils.boxes import scale_boxes_to_original, xywh2xyxy, xyxy2xywh
from utils.data.labels import write_yolo_labels
from utils.devices import Profile, image_input, print_speed, release_free_memory
from utils.log import LOGGER
from utils.metrics import ConfusionMatrix, ap_per_class, match_predictions
from utils.nms import non_max_suppression

HEADER = ("%22s" + "%11s" * 6) % ("Class", "Images", "Instances", "P", "R", "mAP50", "mAP50-95")
ROW = "%22s" + "%11i" * 2 + "%11.3g" * 4
# COCO's 80 training classes -> its 91 category ids (the paper's numbering with gaps)
COCO80_TO_91 = [
    1,
    2,
    3,
    4,
    5,
    6,
    7,
    8,
    9,
    10,
    11,
    13,
    14,
    15,
    16,
    17,
    18,
    19,
    20,
    21,
    22,
    23,
    24,
    25,
    27,
    28,
    31,
    32,
    33,
    34,
    35,
    36,
    37,
    38,
    39,
    40,
    41,
    42,
    43,
    44,
    46,
    47,
    48,
    49,
    50,
    51,
    52,
    53,
    54,
    55,
    56,
    57,
    58,
    59,
    60,
    61,
    62,
    63,
    64,
    65,
    67,
    70,
    72,
    73,
    74,
    75,
    76,
    77,
    78,
    79,
    80,
    81,
    82,
    84,
    85,
    86,
    87,
    88,
    89,
    90,
]


@dataclass
class EvalResult:
    """Validation figures: means, per-class mAP50-95 (``maps``, indexed by class), losses and timings."""

    mp: float = 0.0
    mr: float = 0.0
    map50: float = 0.0
    map: float = 0.0
    losses: tuple[float, ...] = (0.0, 0.0, 0.0)
    maps: np.ndarray = field(default_factory=lambda: np.zeros(0))
    speed_ms: tuple[float, float, float] = (0.0, 0.0, 0.0)
    shape: tuple[int, ...] = ()
    seen: int = 0
    instances: int = 0
    coco_stats: list[float] | None = None
    member_ms: list[float] | None = None

    def as_tuple(self) -> tuple[float, ...]:
        """(P, R, mAP50, mAP50-95, val box, obj, cls losses): YOLOv5's results order."""
        return (self.mp, self.mr, self.map50, self.map, *self.losses)


@dataclass
class EvalOptions:
    conf_thres: float = 0.001
    iou_thres: float = 0.6
    max_det: int = 300
    single_cls: bool = False
    half: bool = False
    verbose: bool = False
    plots: bool = True
    save_txt: bool = False
    save_hybrid: bool = False
    save_conf: bool = False
    save_json: bool = False
    coco_ids: bool = False  # predictions use COCO's 91 category ids and numeric image ids
    release_memory: bool = True  # hand the freed heap back to the OS at the end (a training loop keeps it)


def coco_image_id(path: str) -> int | str:
    """COCO image id of an image file: its stem, as an int when numeric (``000000000139.jpg`` -> 139)."""
    stem = Path(path).stem
    return int(stem) if stem.isnumeric() else stem


def evaluate(
    model: Callable,
    dataloader,
    names: dict[int, str],
    device: torch.device,
    opts: EvalOptions | None = None,
    save_dir: Path | None = None,
    compute_loss: Callable | None = None,
    prefix: str = "",
) -> tuple[EvalResult, list[dict]]:
    """Run ``model`` over ``dataloader`` and compute YOLOv5's detection metrics in original-image pixels.

    Args:
        model: callable on Tensor[B, 3, H, W] float 0-1 returning decoded Tensor[B, N, 5 + nc] or a
            ``(decoded, raw)`` tuple; ``raw`` feeds ``compute_loss`` when given.
        dataloader: yields ``(uint8 images, targets Tensor[n, 6] (img, cls, xywhn), paths, shapes)``.
        names: class names by index; their count is ``nc``.

    Returns:
        ``(EvalResult, json_predictions)``; the per-class table and speed line are printed.
    """
    opts = opts or EvalOptions()
    nc = 1 if opts.single_cls else len(names)
    iouv = torch.linspace(0.5, 0.95, 10, device=device)
    confusion = ConfusionMatrix(nc=nc)
    dt = Profile(device), Profile(device), Profile(device)
    loss = torch.zeros(3, device=device)
    stats: list[tuple] = []
    jdict: list[dict] = []
    seen = 0
    imgsz = getattr(dataloader.dataset, "img_size", 0)
    shape = (dataloader.batch_size, 3, imgsz, imgsz)  # nominal input, as YOLOv5 reports it
    plot_batches = 3 if (opts.plots and save_dir is not None) else 0
    mosaics: list[Callable] = []  # val_batch*_labels/pred.jpg
    if save_dir is not None and opts.save_txt:
        (save_dir / "labels").mkdir(parents=True, exist_ok=True)
    quiet = not LOGGER.isEnabledFor(logging.INFO)  # a silenced package logger hides the progress bar too
    bar = tqdm(dataloader, desc=f"{prefix}{HEADER}", bar_format="{l_bar}{bar:10}{r_bar}", disable=quiet)
    # val.py: model + NMS on chunks of the uint8 batch, so neither the float copy of 32 images (173 MB at 672 px)
    # nor their decoded candidates (302 MB) exist at once; with a loss (training) the raw outputs of the whole batch
    # are needed, and its small batches run in one call
    chunks = getattr(model, "chunk_size", None) if compute_loss is None else None
    for batch_i, (im, targets, paths, shapes) in enumerate(bar):
        targets = targets.to(device)
        nb, _, height, width = im.shape
        tgt_px = targets.clone()
        tgt_px[:, 2:] *= torch.tensor((width, height, width, height), device=device)
        hybrid = [tgt_px[tgt_px[:, 0] == i, 1:] for i in range(nb)] if opts.save_hybrid else None
        preds = []
        step = chunks(height, width, device) if chunks else nb
        for first in range(0, nb, step):
            with dt[0]:
                x = image_input(im[first : first + step], device, opts.half)
            with dt[1]:
                out = model(x)
                raw, train_out = (out[0], out[1]) if isinstance(out, (tuple, list)) else (out, None)
            if compute_loss is not None and train_out is not None:
                loss += compute_loss([t.float() for t in train_out], targets)[1]
            with dt[2]:
                preds += non_max_suppression(
                    raw, opts.conf_thres, opts.iou_thres, multi_label=True, agnostic=opts.single_cls,
                    max_det=opts.max_det, extra_labels=hybrid[first : first + len(x)] if hybrid else None,
                )  # fmt: skip
            del x, out, raw, train_out
        for si, pred in enumerate(preds):
            seen += 1
            labels = tgt_px[tgt_px[:, 0] == si, 1:]
            stat, predn = _score_image(pred, labels, im[si].shape[1:], shapes[si], iouv, opts, confusion)
            if stat is not None:
                stats.append(stat)
            if predn is not None and opts.save_txt and save_dir is not None:
                file = save_dir / "labels" / f"{Path(paths[si]).stem}.txt"
                write_yolo_labels(predn, shapes[si][0], file, opts.save_conf)
            if predn is not None and opts.save_json:
                jdict.extend(_json_records(predn, paths[si], opts.coco_ids))
        if batch_i < plot_batches:  # drawn at the end, beside the metric plots (their 16 images kept till then)
            from utils.plots import plot_images

            shown, pred_targets = im[:16].clone(), _preds_to_targets(preds, width, height)
            file = save_dir / f"val_batch{batch_i}"
            mosaics.append(partial(plot_images, shown, targets.cpu(), paths, f"{file}_labels.jpg", names))
            mosaics.append(partial(plot_images, shown, pred_targets, paths, f"{file}_pred.jpg", names))
    bar.close()
    if opts.release_memory:  # val.py: the last batch's activations are not needed again
        release_free_memory()

    result = EvalResult(seen=seen, shape=shape)
    result.losses = tuple((loss.cpu() / max(len(dataloader), 1)).tolist())
    ap = _summarize(result, stats, nc, names, opts.verbose or (nc < 50 and compute_loss is None), prefix)
    result.speed_ms = tuple(x.t / max(seen, 1) * 1e3 for x in dt)
    if compute_loss is None:
        print_speed(result.speed_ms, shape)
    if opts.plots and save_dir is not None:
        _plot_metrics(confusion, ap, names, nc, opts.single_cls, save_dir, mosaics)
    return result, jdict


def _score_image(pred, labels, im_hw, shape_info, iouv, opts: EvalOptions, confusion: ConfusionMatrix):
    """One image: (stats row (correct, conf, cls, target cls) or None, predictions in original pixels or None).

    ``pred`` is the image's NMS output Tensor[n, 6] in letterboxed pixels (its classes are zeroed in place with
    --single-cls, as the batch plots show them); ``labels`` Tensor[m, 5] (cls, xywh letterboxed pixels).
    """
    npr, nl = pred.shape[0], labels.shape[0]
    correct = torch.zeros(npr, len(iouv), dtype=torch.bool, device=iouv.device)
    if npr == 0:
        if nl and opts.plots:
            confusion.process_batch(None, labels[:, 0])
        empty = torch.zeros(0, device=iouv.device)
        return ((correct, empty, empty, labels[:, 0]) if nl else None), None
    if opts.single_cls:
        pred[:, 5] = 0
    shape0, ratio_pad = shape_info
    predn = pred.clone()
    scale_boxes_to_original(im_hw, predn[:, :4], shape0, ratio_pad)
    if nl:
        tbox = xywh2xyxy(labels[:, 1:5])
        scale_boxes_to_original(im_hw, tbox, shape0, ratio_pad)
        labelsn = torch.cat((labels[:, 0:1], tbox), 1)
        correct = match_predictions(predn, labelsn, iouv)
        if opts.plots:
            confusion.process_batch(predn, labelsn)
    return (correct, pred[:, 4], pred[:, 5], labels[:, 0]), predn


def _summarize(result: EvalResult, stats: list[tuple], nc: int, names: dict, per_class: bool, prefix: str):
    """Fill ``result``'s P, R, mAPs and instances from ``stats``; print the ``all`` row (and per-class rows)."""
    result.maps = np.zeros(nc)
    cat = [torch.cat(x, 0).cpu().numpy() for x in zip(*stats)] if stats else []
    target_cls = cat[3].astype(int) if cat else np.zeros(0, int)
    nt = np.bincount(target_cls, minlength=nc)
    result.instances = int(nt.sum())
    ap = None
    if cat and cat[0].any():
        ap = ap_per_class(cat[0], cat[1], cat[2], cat[3])
        result.mp, result.mr, result.map50, result.map = (float(v) for v in ap.mean_results())
        for i, c in enumerate(ap.classes):
            result.maps[int(c)] = ap.ap[i].mean()
    LOGGER.info(ROW % ("all", result.seen, nt.sum(), result.mp, result.mr, result.map50, result.map))
    if nt.sum() == 0:
        LOGGER.warning(
            f"{prefix}WARNING ⚠️ no labels found in the validation set, can not compute metrics without labels"
        )
    if ap is not None and per_class and nc > 1:
        for i, c in enumerate(ap.classes):
            LOGGER.info(ROW % (names[int(c)], result.seen, nt[int(c)], *ap.class_result(i)))
    return ap


def _plot_metrics(
    confusion: ConfusionMatrix, ap, names: dict, nc: int, single_cls: bool, save_dir: Path, mosaics: list[Callable]
) -> None:
    """confusion_matrix.png and the PR, F1, P and R curves, with the batch ``mosaics``: the matrix in a second
    process, the rest here (``draw_in_parallel``)."""
    from utils.plots import draw_in_parallel, plot_confusion_matrix, plot_mc_curve, plot_pr_curve

    labels = [names[i] for i in range(nc)] if not single_cls else ["item"]
    curves = []
    if ap is not None:
        curves.append(partial(plot_pr_curve, ap.px, ap.pr_curve, ap.ap, save_dir / "PR_curve.png", names, ap.classes))
        for curve, stem, label in (
            (ap.f1_curve, "F1", "F1"),
            (ap.p_curve, "P", "Precision"),
            (ap.r_curve, "R", "Recall"),
        ):
            curves.append(
                partial(plot_mc_curve, ap.px, curve, save_dir / f"{stem}_curve.png", names, ap.classes, ylabel=label)
            )
    matrix = partial(plot_confusion_matrix, confusion.matrix, labels, save_dir / "confusion_matrix.png")
    draw_in_parallel([matrix], [*curves, *mosaics])  # 80 classes: 1.5-1.7 s vs 1.0 + 0.8 s here


def _preds_to_targets(preds: list[torch.Tensor], width: int, height: int) -> torch.Tensor:
    """NMS output -> Tensor[n, 7] (img, cls, x, y, w, h normalised, conf) for ``plot_images``."""
    rows = []
    for i, p in enumerate(preds[:16]):
        p = p[:15].detach().cpu().float()
        xywh = xyxy2xywh(p[:, :4]) / torch.tensor((width, height, width, height))
        rows.append(torch.cat((torch.full((len(p), 1), i), p[:, 5:6], xywh, p[:, 4:5]), 1))
    return torch.cat(rows, 0) if rows else torch.zeros((0, 7))


def _json_records(predn: torch.Tensor, path: str, coco_ids: bool) -> list[dict]:
    image_id = coco_image_id(path)
    box = xyxy2xywh(predn[:, :4].clone())
    box[:, :2] -= box[:, 2:] / 2  # centre -> top-left corner
    return [
        {
            "image_id": image_id,
            "category_id": COCO80_TO_91[int(c)] if coco_ids else int(c),
            "bbox": [round(x, 3) for x in b],
            "score": round(s, 5),
        }
        for b, s, c in zip(box.tolist(), predn[:, 4].tolist(), predn[:, 5].tolist())
    ]


def ground_truth_coco_json(dataset, names: dict[int, str], file: Path) -> Path:
    """COCO-format ground truth built from a dataset's YOLO labels (original-image pixels)."""
    images, annotations = [], []
    for f, lb, (w, h) in zip(dataset.im_files, dataset.labels, dataset.shapes):
        image_id = coco_image_id(f)
        images.append({"id": image_id, "file_name": Path(f).name, "width": int(w), "height": int(h)})
        for cls, x, y, bw, bh in lb.tolist():
            box = [(x - bw / 2) * w, (y - bh / 2) * h, bw * w, bh * h]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(cls),
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
    categories = [{"id": i, "name": n} for i, n in names.items()]
    file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return file


def coco_evaluate_predictions(
    jdict: list[dict], pred_json: Path, anno_json: Path | None, dataset, names: dict[int, str]
) -> list[float]:
    """Save ``jdict`` (``evaluate``'s JSON predictions) to ``pred_json`` and score it with pycocotools.

    ``anno_json`` is COCO's own annotation file; None builds the ground truth from the dataset's YOLO labels
    (``ground_truth.json`` beside ``pred_json``). Every image of the dataset counts, with or without predictions.
    """
    pred_json.write_text(json.dumps(jdict))
    LOGGER.info(f"\nEvaluating pycocotools mAP... saving {pred_json}...")
    if anno_json is None:
        anno_json = ground_truth_coco_json(dataset, names, pred_json.parent / "ground_truth.json")
    image_ids = sorted({r["image_id"] for r in jdict} | {coco_image_id(f) for f in dataset.im_files})
    return coco_evaluate(pred_json, anno_json, image_ids)


def coco_evaluate(pred_json: Path, anno_json: Path, image_ids: list) -> list[float]:
    """pycocotools bbox evaluation; prints the 12 AP/AR lines and returns them."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    anno = COCO(str(anno_json))
    pred = anno.loadRes(str(pred_json))
    ev = COCOeval(anno, pred, "bbox")
    ev.params.imgIds = image_ids
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return [float(x) for x in ev.stats]
