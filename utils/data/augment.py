"""Image geometry for inference (letterbox) and the training augmentations."""

from __future__ import annotations

import math
from collections.abc import Callable

import cv2
import numpy as np

from utils.boxes import xywhn2xyxy


def letterbox(
    im: np.ndarray,
    new_shape: int | tuple[int, int] = 640,
    color: tuple[int, int, int] = (114, 114, 114),
    auto: bool = True,
    scale_fill: bool = False,
    scaleup: bool = True,
    stride: int = 32,
) -> tuple[np.ndarray, tuple[float, float], tuple[float, float]]:
    """Resize ``im`` (HWC uint8) to fit ``new_shape`` keeping aspect ratio, then pad.

    Args:
        new_shape: target (height, width), or one int for a square.
        auto: pad only up to the next multiple of ``stride`` (minimum rectangle) instead of the full shape.
        scale_fill: stretch to ``new_shape`` with no padding.
        scaleup: allow enlarging; when False images are only shrunk.

    Returns:
        ``(image, (ratio_w, ratio_h), (pad_w, pad_h))``; pads are per side, in pixels, split evenly.
    """
    shape = im.shape[:2]
    if isinstance(new_shape, int):
        new_shape = (new_shape, new_shape)
    r = min(new_shape[0] / shape[0], new_shape[1] / shape[1])
    if not scaleup:
        r = min(r, 1.0)
    ratio = r, r
    new_unpad = int(round(shape[1] * r)), int(round(shape[0] * r))
    dw, dh = new_shape[1] - new_unpad[0], new_shape[0] - new_unpad[1]
    if auto:
        dw, dh = np.mod(dw, stride), np.mod(dh, stride)
    elif scale_fill:
        dw, dh = 0.0, 0.0
        new_unpad = (new_shape[1], new_shape[0])
        ratio = new_shape[1] / shape[1], new_shape[0] / shape[0]
    dw /= 2
    dh /= 2
    if shape[::-1] != new_unpad:
        im = cv2.resize(im, new_unpad, interpolation=cv2.INTER_LINEAR)
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    im = cv2.copyMakeBorder(im, top, bottom, left, right, cv2.BORDER_CONSTANT, value=color)
    return im, ratio, (dw, dh)


def resize_long_side(im: np.ndarray, imgsz: int, augment: bool = False) -> np.ndarray:
    """Resize so the long side equals ``imgsz``: area interpolation when shrinking, linear when enlarging."""
    h0, w0 = im.shape[:2]
    r = imgsz / max(h0, w0)
    if r != 1:
        interp = cv2.INTER_LINEAR if (augment or r > 1) else cv2.INTER_AREA
        im = cv2.resize(im, (math.ceil(w0 * r), math.ceil(h0 * r)), interpolation=interp)
    return im


# ---------------------------------------------------------------------------------------------------------------
# Training augmentations. Images are HWC uint8 BGR; labels are ndarray[n, 5] (cls, x1, y1, x2, y2) in pixels of
# the image they travel with unless a docstring says otherwise. Every random draw comes from the ``rng`` argument.
# ---------------------------------------------------------------------------------------------------------------

FILL = 114  # grey of padding and of canvas areas no image covers


def augment_hsv(im: np.ndarray, hgain: float, sgain: float, vgain: float, rng: np.random.Generator) -> None:
    """Jitter hue, saturation and value of a BGR uint8 image in place.

    Each channel is scaled by a factor drawn from U(1 - gain, 1 + gain) through a 256-entry lookup table (hue wraps
    around OpenCV's 0-179 circle, saturation and value saturate at 255). Zero gains leave ``im`` untouched.
    """
    if not (hgain or sgain or vgain):
        return  # the HSV round trip is lossy, so skip it entirely
    r = rng.uniform(-1, 1, 3) * (hgain, sgain, vgain) + 1
    hue, sat, val = cv2.split(cv2.cvtColor(im, cv2.COLOR_BGR2HSV))
    x = np.arange(256, dtype=r.dtype)
    lut_hue = ((x * r[0]) % 180).astype(np.uint8)
    lut_sat = np.clip(x * r[1], 0, 255).astype(np.uint8)
    lut_val = np.clip(x * r[2], 0, 255).astype(np.uint8)
    hsv = cv2.merge((cv2.LUT(hue, lut_hue), cv2.LUT(sat, lut_sat), cv2.LUT(val, lut_val)))
    np.copyto(im, cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR))  # copyto also writes through non-contiguous views


def box_candidates(
    box1: np.ndarray,
    box2: np.ndarray,
    wh_thr: float = 2,
    ar_thr: float = 100,
    area_thr: float = 0.1,
    eps: float = 1e-16,
) -> np.ndarray:
    """Which boxes survive an augmentation: ``box1`` before and ``box2`` after, both ndarray[n, 4] xyxy pixels.

    A box is kept when its new width and height exceed ``wh_thr`` pixels, its aspect ratio (long / short side) is
    below ``ar_thr`` and its new area is more than ``area_thr`` of the old one. Returns bool ndarray[n].
    """
    w1, h1 = box1[:, 2] - box1[:, 0], box1[:, 3] - box1[:, 1]
    w2, h2 = box2[:, 2] - box2[:, 0], box2[:, 3] - box2[:, 1]
    ar = np.maximum(w2 / (h2 + eps), h2 / (w2 + eps))
    return (w2 > wh_thr) & (h2 > wh_thr) & (w2 * h2 / (w1 * h1 + eps) > area_thr) & (ar < ar_thr)


def random_perspective(
    im: np.ndarray,
    labels: np.ndarray,
    degrees: float = 0.0,
    translate: float = 0.0,
    scale: float = 0.0,
    shear: float = 0.0,
    perspective: float = 0.0,
    border: tuple[int, int] = (0, 0),
    *,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Random rotation, scale, shear, translation and perspective as one 3x3 warp.

    Args:
        im: HWC uint8 image.
        labels: ndarray[n, 5] (cls, x1, y1, x2, y2) pixels of ``im``.
        degrees, shear: ranges +/- in degrees; ``scale``: gain drawn from U(1 - scale, 1 + scale);
            ``translate``: +/- fraction of the output size; ``perspective``: +/- projective coefficient.
        border: (y, x) pixels added to each side of the output; negative crops (a 2s mosaic with border -s/2 gives
            an s x s output).

    Returns:
        ``(image, labels)``: the warped image (grey 114 where nothing maps) and the labels' boxes warped by their
        four corners, clipped to the output and filtered with ``box_candidates``.
    """
    height, width = im.shape[0] + border[0] * 2, im.shape[1] + border[1] * 2
    centre = np.eye(3)  # move the input centre to the origin so rotation/scale/shear pivot around it
    centre[0, 2], centre[1, 2] = -im.shape[1] / 2, -im.shape[0] / 2
    persp = np.eye(3)
    persp[2, 0], persp[2, 1] = rng.uniform(-perspective, perspective, 2)
    rot = np.eye(3)
    angle, s = rng.uniform(-degrees, degrees), rng.uniform(1 - scale, 1 + scale)
    rot[:2] = cv2.getRotationMatrix2D(center=(0, 0), angle=angle, scale=s)
    shr = np.eye(3)
    shr[0, 1], shr[1, 0] = np.tan(np.radians(rng.uniform(-shear, shear, 2)))
    trans = np.eye(3)  # back from the origin to the output centre, plus a random shift
    trans[0, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * width
    trans[1, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * height
    m = trans @ shr @ rot @ persp @ centre  # applied right to left

    if border[0] or border[1] or (m != np.eye(3)).any():
        fill = (FILL,) * 3
        if perspective:
            im = cv2.warpPerspective(im, m, dsize=(width, height), borderValue=fill)
        else:
            im = cv2.warpAffine(im, m[:2], dsize=(width, height), borderValue=fill)

    n = len(labels)
    if n:
        corners = np.ones((n * 4, 3))
        corners[:, :2] = labels[:, [1, 2, 3, 4, 1, 4, 3, 2]].reshape(n * 4, 2)  # x1y1, x2y2, x1y2, x2y1
        corners = corners @ m.T
        xy = (corners[:, :2] / corners[:, 2:3] if perspective else corners[:, :2]).reshape(n, 8)
        x, y = xy[:, [0, 2, 4, 6]], xy[:, [1, 3, 5, 7]]
        new = np.stack((x.min(1), y.min(1), x.max(1), y.max(1)), axis=1)
        new[:, [0, 2]] = new[:, [0, 2]].clip(0, width)
        new[:, [1, 3]] = new[:, [1, 3]].clip(0, height)
        # compare against the box scaled by s, so zooming out alone never drops a box as "mostly cropped"
        keep = box_candidates(labels[:, 1:5] * s, new, area_thr=0.1)
        labels = np.concatenate((labels[keep, :1], new[keep]), axis=1)
    return im, labels


def load_mosaic(
    indices: list[int],
    load_image: Callable[[int], tuple[np.ndarray, tuple[int, int], tuple[int, int]]],
    labels_of: Callable[[int], np.ndarray],
    imgsz: int,
    hyp: dict,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Four images tiled around a random centre, then copy-paste and a random perspective crop to imgsz x imgsz.

    Args:
        indices: four dataset indices (top-left, top-right, bottom-left, bottom-right).
        load_image: index -> (BGR image resized so its long side is ``imgsz``, (h0, w0) original, (h, w) resized).
        labels_of: index -> ndarray[n, 5] (cls, xc, yc, w, h) normalised xywhn.
        hyp: hyperparameters; uses degrees, translate, scale, shear, perspective, copy_paste (missing keys = 0).

    Returns:
        ``(image, labels)``: ``imgsz`` x ``imgsz`` uint8 image and ndarray[m, 5] (cls, x1, y1, x2, y2) pixels of it.
    """
    s = imgsz
    canvas = np.full((2 * s, 2 * s, 3), FILL, dtype=np.uint8)
    # the four tiles meet at (xc, yc), drawn from [s/2, 3s/2] so every tile shows part of itself after the crop
    yc, xc = (int(rng.uniform(s / 2, 3 * s / 2)) for _ in range(2))
    all_labels = []
    for i, index in enumerate(indices):
        im, _, (h, w) = load_image(index)
        if i == 0:  # top-left: image's bottom-right corner at the centre
            xa1, ya1, xa2, ya2 = max(xc - w, 0), max(yc - h, 0), xc, yc
            xb1, yb1 = w - (xa2 - xa1), h - (ya2 - ya1)
        elif i == 1:  # top-right: bottom-left corner at the centre
            xa1, ya1, xa2, ya2 = xc, max(yc - h, 0), min(xc + w, 2 * s), yc
            xb1, yb1 = 0, h - (ya2 - ya1)
        elif i == 2:  # bottom-left: top-right corner at the centre
            xa1, ya1, xa2, ya2 = max(xc - w, 0), yc, xc, min(yc + h, 2 * s)
            xb1, yb1 = w - (xa2 - xa1), 0
        else:  # bottom-right: top-left corner at the centre
            xa1, ya1, xa2, ya2 = xc, yc, min(xc + w, 2 * s), min(yc + h, 2 * s)
            xb1, yb1 = 0, 0
        canvas[ya1:ya2, xa1:xa2] = im[yb1 : yb1 + (ya2 - ya1), xb1 : xb1 + (xa2 - xa1)]
        lab = np.array(labels_of(index), dtype=np.float64).reshape(-1, 5)
        lab[:, 1:] = xywhn2xyxy(lab[:, 1:], w, h, padw=xa1 - xb1, padh=ya1 - yb1)
        all_labels.append(lab)
    labels = np.concatenate(all_labels, 0)
    labels[:, 1:] = labels[:, 1:].clip(0, 2 * s)

    canvas, labels = copy_paste(canvas, labels, hyp.get("copy_paste", 0.0), rng)
    return random_perspective(
        canvas,
        labels,
        degrees=hyp.get("degrees", 0.0),
        translate=hyp.get("translate", 0.0),
        scale=hyp.get("scale", 0.0),
        shear=hyp.get("shear", 0.0),
        perspective=hyp.get("perspective", 0.0),
        border=(-s // 2, -s // 2),
        rng=rng,
    )


def mixup(
    im: np.ndarray, labels: np.ndarray, im2: np.ndarray, labels2: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Blend two same-shape uint8 images with a Beta(32, 32) weight (close to 0.5) and keep both label sets.

    Labels are ndarray[n, 5] and ndarray[m, 5] in any one format; returns ndarray[n + m, 5].
    """
    r = rng.beta(32.0, 32.0)
    im = (im * r + im2 * (1 - r)).astype(np.uint8)
    return im, np.concatenate((labels, labels2), 0)


def copy_paste(im: np.ndarray, labels: np.ndarray, p: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Box-level copy-paste: copy ``round(p * n)`` random boxes to their left-right mirrored position.

    Without segmentation masks we paste the whole rectangle (object plus the background inside its box), mirrored
    left-right, at the mirrored location. A paste is skipped when the new box would cover 30% or more of any box
    already in the image (intersection over that box's area). ``im`` is modified in place.

    Args:
        im: HWC uint8 image.
        labels: ndarray[n, 5] (cls, x1, y1, x2, y2) pixels.

    Returns:
        ``(image, labels)`` with the pasted boxes appended as (cls, w - x2, y1, w - x1, y2).
    """
    n = len(labels)
    if not p or not n:
        return im, labels
    h, w = im.shape[:2]
    for j in rng.choice(n, size=round(p * n), replace=False):
        cls, x1, y1, x2, y2 = labels[j]
        new = np.array([w - x2, y1, w - x1, y2])
        if (_ioa(new, labels[:, 1:5]) >= 0.30).any():
            continue
        # whole pixels covering the box; the mirrored patch lands on exactly the mirrored pixel columns
        px1, py1 = max(int(np.floor(x1)), 0), max(int(np.floor(y1)), 0)
        px2, py2 = min(int(np.ceil(x2)), w), min(int(np.ceil(y2)), h)
        im[py1:py2, w - px2 : w - px1] = im[py1:py2, px1:px2][:, ::-1].copy()
        labels = np.concatenate((labels, [[cls, *new]]), 0)
    return im, labels


def _ioa(box: np.ndarray, boxes: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """Intersection of one xyxy ``box`` [4] with each of ``boxes`` [n, 4], over the area of each of ``boxes``."""
    iw = (np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0])).clip(0)
    ih = (np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1])).clip(0)
    return iw * ih / ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) + eps)


def random_flip(
    im: np.ndarray, labels: np.ndarray, fliplr: float, flipud: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Flip up-down with probability ``flipud``, then left-right with probability ``fliplr``.

    Args:
        labels: ndarray[n, 5] (cls, xc, yc, w, h) normalised xywhn; a copy is returned, the input is not changed.
    """
    labels = labels.copy()
    if flipud and rng.random() < flipud:
        im = np.ascontiguousarray(im[::-1])
        labels[:, 2] = 1 - labels[:, 2]
    if fliplr and rng.random() < fliplr:
        im = np.ascontiguousarray(im[:, ::-1])
        labels[:, 1] = 1 - labels[:, 1]
    return im, labels
