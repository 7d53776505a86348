"""Non-maximum suppression over the decoded head output, with torchvision's NMS kernel."""

from __future__ import annotations

import functools
import importlib.machinery
import importlib.util
import sys

import torch

from utils.boxes import xywh2xyxy

MAX_NMS = 30000  # candidates per image that enter NMS, most confident first


def non_max_suppression(
    prediction: torch.Tensor | tuple | list,
    conf_thres: float = 0.25,
    iou_thres: float = 0.45,
    classes: list[int] | None = None,
    agnostic: bool = False,
    multi_label: bool = False,
    max_det: int = 300,
    extra_labels: list[torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """Filter and suppress the candidates of each image.

    Args:
        prediction: Tensor[B, N, 5 + nc] decoded head output (xywh pixels of the network input, objectness,
            class probabilities), or the ``(decoded, raw)`` tuple an eval-mode model returns.
        conf_thres: keep candidates whose objectness and (objectness x class probability) exceed this.
        iou_thres: IoU above which a lower-scored box of the same class is suppressed.
        classes: keep only these class indices.
        agnostic: suppress across classes.
        multi_label: a box may produce one candidate per class above ``conf_thres`` (validation default).
        max_det: detections kept per image.
        extra_labels: per image Tensor[n, 5] (cls, x, y, w, h pixels) added as candidates of confidence 1.0
            (``--save-hybrid`` autolabelling: ground truth merged with predictions).

    Returns:
        One float32 Tensor[n, 6] per image: (x1, y1, x2, y2, conf, cls), xyxy pixels of the network input, sorted
        by descending confidence. Every image is processed: there is no time limit that could skip the rest of a
        batch.
    """
    if isinstance(prediction, (list, tuple)):
        prediction = prediction[0]
    if not 0 <= conf_thres <= 1:
        raise ValueError(f"--conf-thres {conf_thres}: must be between 0.0 and 1.0")
    if not 0 <= iou_thres <= 1:
        raise ValueError(f"--iou-thres {iou_thres}: must be between 0.0 and 1.0")
    nc = prediction.shape[2] - 5
    multi_label &= nc > 1
    out = []
    for xi, x in enumerate(prediction):
        # fp32 from here on, whatever the model ran in: fp16 (CUDA --half) boxes scaled to original-image pixels
        # would snap to 0.5-4 px steps, and an image without detections (fp32 zeros) would differ in dtype
        x = x[x[:, 4] > conf_thres].float()
        if extra_labels is not None and len(extra_labels[xi]):
            lb = extra_labels[xi].to(x.dtype)
            v = torch.zeros((len(lb), nc + 5), device=x.device, dtype=x.dtype)
            v[:, :4] = lb[:, 1:5]
            v[:, 4] = 1.0
            v[torch.arange(len(lb)), lb[:, 0].long() + 5] = 1.0
            x = torch.cat((x, v), 0)
        if not x.shape[0]:
            out.append(torch.zeros((0, 6), device=prediction.device))
            continue
        scores = x[:, 5:] * x[:, 4:5]
        box = xywh2xyxy(x[:, :4])
        if multi_label:
            i, j = (scores > conf_thres).nonzero(as_tuple=False).T
            det = torch.cat((box[i], scores[i, j, None], j[:, None].to(x.dtype)), 1)
        else:
            conf, j = scores.max(1, keepdim=True)
            det = torch.cat((box, conf, j.to(x.dtype)), 1)[conf.view(-1) > conf_thres]
        if classes is not None:
            det = det[(det[:, 5:6] == torch.tensor(classes, device=det.device)).any(1)]
        if not det.shape[0]:
            out.append(torch.zeros((0, 6), device=prediction.device))
            continue
        det = det[det[:, 4].argsort(descending=True)[:MAX_NMS]]
        out.append(det[_greedy_keep(det, iou_thres, max_det, agnostic)])
    return out


def _greedy_keep(det: torch.Tensor, iou_thres: float, max_det: int, agnostic: bool) -> torch.Tensor:
    """Indices of the first ``max_det`` boxes greedy NMS keeps from ``det`` (sorted by descending confidence).

    Greedy NMS decides each box from the higher-scored boxes alone, so NMS over the ``k`` most confident
    candidates keeps exactly the full run's survivors among them. Once that prefix run keeps ``max_det`` boxes, the
    rest cannot change the answer: the prefix grows (x4) only while it keeps too few. This is exact, and turns
    the quadratic cost of an untrained model's thousands of scattered low-confidence candidates (the first
    validations of a training run) into that of a few thousand.
    """
    n = det.shape[0]
    k = min(n, max(1024, 4 * max_det))
    while True:
        keep = _class_aware_nms(det[:k], iou_thres, agnostic)
        if k == n or keep.numel() >= max_det:
            return keep[:max_det]
        k = min(n, 4 * k)


PER_CLASS_NMS = 2048  # candidates from which NMS runs class by class


def _class_aware_nms(det: torch.Tensor, iou_thres: float, agnostic: bool) -> torch.Tensor:
    """NMS over ``det`` (Tensor[n, 6] xyxy, conf, cls sorted by descending confidence): kept indices, in order.

    Classes never suppress each other. Up to ``PER_CLASS_NMS`` candidates one kernel call does it, each class moved
    to its own region of the plane (a whole number of spans of the coordinates apart: boxes reaching past the image's
    top-left have negative ones); above, the kernel's quadratic cost makes one call per class several times cheaper
    (an early-epoch model's 4,800-candidate prefixes with 5 classes: 1.9 s of a 3.7 s validation before). Both ways
    give the same answer: the boxes go to the kernel in float64, where adding a whole-number offset to float32
    coordinates is exact (so are the IoUs, the same as without it), and the kernel sorts scores stably, so both
    visit a class's boxes in ``det``'s order (kept indices sorted ascending are in confidence order). A 2x ensemble of
    one model, twice the candidates, keeps exactly what the model alone keeps.
    """
    nms = _nms_kernel()
    if agnostic:
        return nms(det[:, :4], det[:, 4], iou_thres)
    boxes, scores, cls = det[:, :4].double(), det[:, 4].double(), det[:, 5].double()
    if det.shape[0] < PER_CLASS_NMS:
        return nms(boxes + cls[:, None] * (boxes.max() - boxes.min() + 1).ceil(), scores, iou_thres)
    groups = ((cls == c).nonzero()[:, 0] for c in cls.unique())
    keep = [idx[nms(boxes[idx], scores[idx], iou_thres)] for idx in groups]
    return torch.cat(keep).sort().values


@functools.cache
def _nms_kernel():
    """``torch.ops.torchvision.nms``: torchvision's compiled NMS (CPU and CUDA), loaded without running the
    torchvision package's Python.

    ``import torchvision`` executes the whole package, and its ``ops`` import ``torch._dynamo``: 2.1 s of the
    4.5 s that ``val.py`` and ``detect.py`` spent importing on this project's 2-core CPU, for one kernel. Its
    library is found the way torchvision's own loader finds it (``_C_stable`` since 0.29, ``_C`` before, with
    one of this Python's extension suffixes, in the package folder); when that fails (another layout, Windows'
    DLL paths) the package is imported after all. Training imports torchvision anyway (the CIoU loss): the
    kernel is then simply there.
    """
    if "torchvision" not in sys.modules:
        try:
            spec = importlib.util.find_spec("torchvision")
            loader = (importlib.machinery.ExtensionFileLoader, importlib.machinery.EXTENSION_SUFFIXES)
            finder = importlib.machinery.FileFinder(spec.submodule_search_locations[0], loader)
            lib = finder.find_spec("_C_stable") or finder.find_spec("_C")
            torch.ops.load_library(lib.origin)
        except (ImportError, OSError, AttributeError, TypeError, RuntimeError):
            pass
    if not hasattr(torch.ops.torchvision, "nms"):
        import torchvision.ops  # noqa: F401 (registers the kernel through torchvision's own loader)
    return torch.ops.torchvision.nms
