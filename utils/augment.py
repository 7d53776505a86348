"""Image geometry for inference (letterbox) and the training augmentations."""

from __future__ import annotations

import math

import cv2
import numpy as np


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
