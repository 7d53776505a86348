"""Box format conversions and coordinate-space mapping.

Formats: ``xyxy`` is (x1, y1, x2, y2), ``xywh`` is (centre x, centre y, width, height); a trailing ``n``
means normalised to 0-1 by image width/height, otherwise pixels. Every function accepts a torch tensor or a
numpy array of shape ``[..., 4]`` and returns the same kind.
"""

from __future__ import annotations

import numpy as np
import torch

Array = torch.Tensor | np.ndarray


def _clone(x: Array) -> Array:
    return x.clone() if isinstance(x, torch.Tensor) else np.copy(x)


def xyxy2xywh(x: Array) -> Array:
    """``xyxy`` -> ``xywh`` (same units)."""
    y = _clone(x)
    y[..., 0] = (x[..., 0] + x[..., 2]) / 2
    y[..., 1] = (x[..., 1] + x[..., 3]) / 2
    y[..., 2] = x[..., 2] - x[..., 0]
    y[..., 3] = x[..., 3] - x[..., 1]
    return y


def xywh2xyxy(x: Array) -> Array:
    """``xywh`` -> ``xyxy`` (same units)."""
    y = _clone(x)
    y[..., 0] = x[..., 0] - x[..., 2] / 2
    y[..., 1] = x[..., 1] - x[..., 3] / 2
    y[..., 2] = x[..., 0] + x[..., 2] / 2
    y[..., 3] = x[..., 1] + x[..., 3] / 2
    return y


def xywhn2xyxy(x: Array, w: float, h: float, padw: float = 0.0, padh: float = 0.0) -> Array:
    """Normalised ``xywhn`` -> ``xyxy`` pixels of a ``w`` x ``h`` image placed at offset (padw, padh)."""
    y = _clone(x)
    y[..., 0] = w * (x[..., 0] - x[..., 2] / 2) + padw
    y[..., 1] = h * (x[..., 1] - x[..., 3] / 2) + padh
    y[..., 2] = w * (x[..., 0] + x[..., 2] / 2) + padw
    y[..., 3] = h * (x[..., 1] + x[..., 3] / 2) + padh
    return y


def xyxy2xywhn(x: Array, w: float, h: float, clip: bool = False, eps: float = 0.0) -> Array:
    """``xyxy`` pixels of a ``w`` x ``h`` image -> normalised ``xywhn``; ``clip`` first clips to the image."""
    if clip:
        x = clip_boxes(_clone(x), (h - eps, w - eps))
    y = _clone(x)
    y[..., 0] = ((x[..., 0] + x[..., 2]) / 2) / w
    y[..., 1] = ((x[..., 1] + x[..., 3]) / 2) / h
    y[..., 2] = (x[..., 2] - x[..., 0]) / w
    y[..., 3] = (x[..., 3] - x[..., 1]) / h
    return y


def clip_boxes(boxes: Array, shape: tuple[int, int]) -> Array:
    """Clip ``xyxy`` pixel boxes in place to an image of ``shape`` (height, width); returns them."""
    h, w = shape[0], shape[1]
    if isinstance(boxes, torch.Tensor):
        boxes[..., 0].clamp_(0, w)
        boxes[..., 1].clamp_(0, h)
        boxes[..., 2].clamp_(0, w)
        boxes[..., 3].clamp_(0, h)
    else:
        boxes[..., [0, 2]] = boxes[..., [0, 2]].clip(0, w)
        boxes[..., [1, 3]] = boxes[..., [1, 3]].clip(0, h)
    return boxes


def scale_boxes_to_original(
    letterboxed_shape: tuple[int, int],
    boxes: Array,
    original_shape: tuple[int, int],
    ratio_pad: tuple | None = None,
) -> Array:
    """Map ``xyxy`` boxes from a letterboxed image back to the original image, in place.

    Args:
        letterboxed_shape: (height, width) of the network input the boxes live in.
        boxes: ``[N, 4+]`` xyxy pixels in the letterboxed image.
        original_shape: (height, width) of the original image.
        ratio_pad: ``((gain_h, gain_w), (pad_w, pad_h))`` as returned by ``letterbox``; computed from the
            shapes when omitted (assumes centred padding).
    """
    if ratio_pad is None:
        gain = min(letterboxed_shape[0] / original_shape[0], letterboxed_shape[1] / original_shape[1])
        pad = (
            (letterboxed_shape[1] - original_shape[1] * gain) / 2,
            (letterboxed_shape[0] - original_shape[0] * gain) / 2,
        )
    else:
        gain = ratio_pad[0][0]
        pad = ratio_pad[1]
    boxes[..., [0, 2]] -= pad[0]
    boxes[..., [1, 3]] -= pad[1]
    boxes[..., :4] /= gain
    clip_boxes(boxes, original_shape)
    return boxes


def box_iou(box1: torch.Tensor, box2: torch.Tensor) -> torch.Tensor:
    """IoU of every pair: ``box1`` Tensor[N, 4] and ``box2`` Tensor[M, 4], both xyxy; returns Tensor[N, M].

    The formula of ``torchvision.ops.box_iou`` (no epsilon: a pair of empty boxes gives NaN), whose results it
    equals (tests); written out because importing torchvision's Python package costs ``val.py`` 2.1 s on this
    project's CPU (see ``utils.nms._nms_kernel``), and IoU is all it needs from it besides the NMS kernel.
    """
    if not box1.is_floating_point():
        box1, box2 = box1.float(), box2.float()
    area1 = (box1[:, 2] - box1[:, 0]) * (box1[:, 3] - box1[:, 1])
    area2 = (box2[:, 2] - box2[:, 0]) * (box2[:, 3] - box2[:, 1])
    wh = (torch.min(box1[:, None, 2:], box2[:, 2:]) - torch.max(box1[:, None, :2], box2[:, :2])).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area1[:, None] + area2 - inter)
