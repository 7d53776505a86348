"""Detection accuracy metrics: prediction/label matching, average precision, fitness, confusion matrix.

Pure functions and small containers only: no file I/O, plotting or printing (see ``utils/plots.py``).
Behaviour follows upstream YOLOv5 validation so that mAP figures agree: matching at ten IoU thresholds,
101-point trapezoid AP on a monotone precision envelope, and P/R read at the max of the smoothed mean F1.

Box format everywhere is ``xyxy`` pixels; detections and labels must share one coordinate space
(validation uses original-image pixels).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from utils.boxes import box_iou


def _unique_first(matches: np.ndarray, col: int) -> np.ndarray:
    """Rows of ``matches`` keeping the first row for each value of ``matches[:, col]``; result sorted by that value."""
    return matches[np.unique(matches[:, col], return_index=True)[1]]


def _iou_pairs(iou: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Candidate pairs ``[K, 3]`` (label index, detection index, IoU) where ``mask`` [M, N] is set, sorted by IoU desc.

    Pairs are enumerated label-major before the sort, and the sort is numpy's default (unstable) one on float32
    IoUs, so IoU ties resolve exactly as upstream's do.
    """
    li, di = np.nonzero(mask)
    matches = np.stack((li.astype(np.float32), di.astype(np.float32), iou[li, di]), 1)
    return matches[matches[:, 2].argsort()[::-1]]


def match_predictions(detections: torch.Tensor, labels: torch.Tensor, iouv: torch.Tensor) -> torch.Tensor:
    """Mark each detection a true positive or not at each IoU threshold.

    Args:
        detections: Tensor[N, 6] (x1, y1, x2, y2, conf, cls), xyxy pixels, sorted by confidence descending.
        labels: Tensor[M, 5] (cls, x1, y1, x2, y2), xyxy pixels in the same space as ``detections``.
        iouv: Tensor[T] IoU thresholds (validation uses 0.50:0.05:0.95).

    Returns:
        Tensor[N, T] bool on ``iouv``'s device: detection n is correct at threshold t.

    For each threshold independently, same-class pairs with IoU >= threshold are ranked by IoU; each detection keeps
    its highest-IoU pair, then each label keeps the surviving pair with the lowest detection index (the most
    confident detection). This two-step order is upstream's and matters for parity. The IoU matrix is computed
    once in torch and the ten thresholds are walked in numpy (float32, as before), where each small step costs a
    fraction of a tensor op's overhead (the shapes job's 200 validation images: 0.41-0.43 -> 0.25-0.31 s).
    """
    n, t = detections.shape[0], iouv.shape[0]
    correct = np.zeros((n, t), dtype=bool)
    if n and labels.shape[0]:
        iou = box_iou(labels[:, 1:5], detections[:, :4]).float().cpu().numpy()  # [M, N]
        same_class = (labels[:, 0:1] == detections[:, 5]).cpu().numpy()  # [M, N]
        for j, thr in enumerate(iouv.float().cpu().numpy()):
            mask = (iou >= thr) & same_class
            if not mask.any():
                continue
            matches = _iou_pairs(iou, mask)
            matches = _unique_first(matches, 1)  # best IoU per detection, now ordered by detection index
            matches = _unique_first(matches, 0)  # per label: lowest detection index
            correct[matches[:, 1].astype(int), j] = True
    return torch.tensor(correct, dtype=torch.bool, device=iouv.device)


def compute_ap(recall: np.ndarray, precision: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Average precision of one precision/recall curve (COCO-style 101-point, trapezoid rule).

    Args:
        recall: ndarray[K] cumulative recall, non-decreasing.
        precision: ndarray[K] precision at the same points.

    Returns:
        (ap, mpre, mrec): AP in [0, 1], and the padded curve ``mpre``/``mrec`` ndarray[K + 2] with precision made
        monotone non-increasing (the envelope the area is taken under).
    """
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([1.0], precision, [0.0]))
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))  # running max from the right
    x = np.linspace(0, 1, 101)
    ap = float(np.trapezoid(np.interp(x, mrec, mpre), x))
    return ap, mpre, mrec


def smooth(y: np.ndarray, f: float = 0.05) -> np.ndarray:
    """Box-filter ``y`` ndarray[K] over a fraction ``f`` of its length, padding with copies of the end values.

    Width is ``round(K * f * 2) // 2 + 1`` (101 for the 1000-point F1 curve at f=0.1); for odd widths, as there,
    the output has the input's length.
    """
    nf = round(len(y) * f * 2) // 2 + 1
    pad = np.ones(nf // 2)
    yp = np.concatenate((pad * y[0], y, pad * y[-1]))
    return np.convolve(yp, np.ones(nf) / nf, mode="valid")


@dataclass
class APResult:
    """Per-class accuracy from :func:`ap_per_class`; C = number of classes present in the labels, T = thresholds.

    ``tp, fp, p, r, f1`` are ndarray[C] at the single confidence where the smoothed mean F1 peaks; ``ap`` is
    ndarray[C, T]; ``classes`` ndarray[C] int class ids (sorted); ``px`` ndarray[1000] the 0-1 grid; ``pr_curve``
    ndarray[C, 1000] precision vs recall ``px`` at the first IoU threshold (zeros for classes without predictions);
    ``p_curve, r_curve, f1_curve`` ndarray[C, 1000] as functions of confidence ``px``.
    """

    tp: np.ndarray
    fp: np.ndarray
    p: np.ndarray
    r: np.ndarray
    f1: np.ndarray
    ap: np.ndarray
    classes: np.ndarray
    px: np.ndarray
    pr_curve: np.ndarray
    p_curve: np.ndarray
    r_curve: np.ndarray
    f1_curve: np.ndarray

    @staticmethod
    def _mean(x: np.ndarray) -> float:
        return float(x.mean()) if x.size else 0.0

    @property
    def ap50(self) -> np.ndarray:
        """ndarray[C] AP at the first threshold (IoU 0.5)."""
        return self.ap[:, 0] if self.ap.size else np.zeros(len(self.classes))

    @property
    def ap_mean(self) -> np.ndarray:
        """ndarray[C] AP averaged over thresholds (AP50-95)."""
        return self.ap.mean(1) if self.ap.size else np.zeros(len(self.classes))

    @property
    def mp(self) -> float:
        """Mean precision over classes."""
        return self._mean(self.p)

    @property
    def mr(self) -> float:
        """Mean recall over classes."""
        return self._mean(self.r)

    @property
    def map50(self) -> float:
        """mAP at IoU 0.5."""
        return self._mean(self.ap50)

    @property
    def map(self) -> float:
        """mAP averaged over all thresholds (mAP50-95)."""
        return self._mean(self.ap_mean)

    def mean_results(self) -> tuple[float, float, float, float]:
        """(mP, mR, mAP50, mAP50-95)."""
        return self.mp, self.mr, self.map50, self.map

    def class_result(self, i: int) -> tuple[float, float, float, float]:
        """(P, R, AP50, AP50-95) of the ``i``-th present class (an index into ``classes``, not a class id)."""
        return float(self.p[i]), float(self.r[i]), float(self.ap50[i]), float(self.ap_mean[i])

    def class_maps(self, nc: int) -> np.ndarray:
        """ndarray[nc] AP50-95 by class id; classes absent from the labels get the overall mAP50-95."""
        maps = np.full(nc, self.map)
        maps[self.classes] = self.ap_mean
        return maps


def _empty_result(nc: int, t: int, px: np.ndarray) -> APResult:
    z, zc = np.zeros(nc), np.zeros((nc, len(px)))
    return APResult(z, z, z, z, z, np.zeros((nc, t)), np.zeros(nc, int), px, zc, zc, zc, zc)


def ap_per_class(
    tp: np.ndarray, conf: np.ndarray, pred_cls: np.ndarray, target_cls: np.ndarray, eps: float = 1e-16
) -> APResult:
    """Per-class AP at each IoU threshold, plus P/R/F1 at the confidence maximising the smoothed mean F1.

    Args:
        tp: ndarray[N, T] bool, prediction n correct at threshold t (from :func:`match_predictions`), whole dataset.
        conf: ndarray[N] prediction confidences.
        pred_cls: ndarray[N] predicted class ids.
        target_cls: ndarray[M] class ids of all labels in the dataset.
        eps: guards divisions.

    Returns:
        :class:`APResult` over the classes present in ``target_cls`` (mAP is the mean over those).
    """
    order = np.argsort(-conf)  # numpy's default sort, as upstream, so confidence ties order identically
    tp, conf, pred_cls = tp[order], conf[order], pred_cls[order]
    classes, n_labels = np.unique(target_cls, return_counts=True)
    nc, t = classes.shape[0], tp.shape[1]
    px = np.linspace(0, 1, 1000)
    if nc == 0:
        return _empty_result(0, t, px)

    ap = np.zeros((nc, t))
    p_curve, r_curve, pr_curve = np.zeros((nc, 1000)), np.zeros((nc, 1000)), np.zeros((nc, 1000))
    for ci, c in enumerate(classes):
        i = pred_cls == c
        n_l, n_p = n_labels[ci], i.sum()
        if n_p == 0 or n_l == 0:
            continue
        fpc = (1 - tp[i]).cumsum(0)
        tpc = tp[i].cumsum(0)
        recall = tpc / (n_l + eps)
        precision = tpc / (tpc + fpc)
        # np.interp needs increasing x; confidence decreases along the sorted predictions, hence the negation
        r_curve[ci] = np.interp(-px, -conf[i], recall[:, 0], left=0)
        p_curve[ci] = np.interp(-px, -conf[i], precision[:, 0], left=1)
        for j in range(t):
            ap[ci, j], mpre, mrec = compute_ap(recall[:, j], precision[:, j])
            if j == 0:
                pr_curve[ci] = np.interp(px, mrec, mpre)

    f1_curve = 2 * p_curve * r_curve / (p_curve + r_curve + eps)
    i = smooth(f1_curve.mean(0), 0.1).argmax()
    p, r, f1 = p_curve[:, i], r_curve[:, i], f1_curve[:, i]
    tp_c = (r * n_labels).round()
    fp_c = (tp_c / (p + eps) - tp_c).round()
    return APResult(tp_c, fp_c, p, r, f1, ap, classes.astype(int), px, pr_curve, p_curve, r_curve, f1_curve)


def fitness(x: np.ndarray) -> np.ndarray:
    """Model fitness for checkpoint selection: 0.1 * mAP50 + 0.9 * mAP50-95.

    Args:
        x: ndarray[..., 4+] with columns (P, R, mAP50, mAP50-95); extra columns are ignored.

    Returns:
        ndarray[...] fitness per row.
    """
    w = np.array([0.0, 0.0, 0.1, 0.9])
    return (np.asarray(x, dtype=float)[..., :4] * w).sum(-1)


class ConfusionMatrix:
    """Detection confusion matrix: ``matrix[pred, true]`` of shape [nc + 1, nc + 1], index ``nc`` = background.

    A missed label counts as ``matrix[nc, true]``; a detection matching no label counts as ``matrix[pred, nc]``.
    Matching is class-agnostic (the matrix is what shows class confusion).
    """

    def __init__(self, nc: int, conf: float = 0.25, iou_thres: float = 0.45) -> None:
        self.nc = nc
        self.conf = conf
        self.iou_thres = iou_thres
        self.matrix = np.zeros((nc + 1, nc + 1))

    def process_batch(self, detections: torch.Tensor | None, labels: torch.Tensor) -> None:
        """Accumulate one image.

        Args:
            detections: Tensor[N, 6] (x1, y1, x2, y2, conf, cls) xyxy pixels, or None when the image has none.
            labels: Tensor[M, 5] (cls, x1, y1, x2, y2) xyxy pixels in the same space; a Tensor[M] of class ids is
                also accepted when ``detections`` is None.
        """
        gt_classes = (labels[:, 0] if labels.ndim == 2 else labels).int().tolist()
        if detections is None:
            for gc in gt_classes:
                self.matrix[self.nc, gc] += 1
            return

        detections = detections[detections[:, 4] > self.conf]
        det_classes = detections[:, 5].int().tolist()
        matches = self._match(detections, labels)
        label_to_det = dict(zip(matches[:, 0].astype(int).tolist(), matches[:, 1].astype(int).tolist()))
        for li, gc in enumerate(gt_classes):
            di = label_to_det.get(li)
            self.matrix[self.nc if di is None else det_classes[di], gc] += 1
        matched_dets = set(label_to_det.values())
        for di, dc in enumerate(det_classes):
            if di not in matched_dets:
                self.matrix[dc, self.nc] += 1

    def _match(self, detections: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
        """One-to-one (label, detection, IoU) pairs [K, 3] with IoU > ``iou_thres``, greedy by IoU."""
        if not len(detections) or not len(labels):
            return np.zeros((0, 3))
        iou = box_iou(labels[:, 1:5], detections[:, :4]).float().cpu().numpy()
        matches = _iou_pairs(iou, iou > self.iou_thres)
        if len(matches) > 1:
            matches = _unique_first(matches, 1)  # best label per detection
            matches = matches[matches[:, 2].argsort()[::-1]]  # re-rank by IoU so each label keeps its best
            matches = _unique_first(matches, 0)
        return matches

    def tp_fp(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-class (TP, FP) ndarray[nc] each: the diagonal, and the rest of each predicted-class row."""
        tp = self.matrix.diagonal()
        fp = self.matrix.sum(1) - tp
        return tp[:-1], fp[:-1]
