"""AutoShape: the Python API's model. Any image in, ``Detections`` out, through the same code as ``detect.py``.

Images are letterboxed exactly as ``detect.py`` does it (``letterbox`` with the minimum stride-multiple
rectangle), so each image gets the same network input and therefore the same boxes as ``detect.py --imgsz size``.
Images whose letterboxed shapes agree run as one batch; a list of differently shaped images runs as one batch per
shape (upstream pads the whole list to its largest shape instead, which moves boxes slightly).
"""

from __future__ import annotations

import urllib.request
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from utils.boxes import scale_boxes_to_original
from utils.data.augment import letterbox
from utils.data.sources import SourceError
from utils.devices import Profile
from utils.errors import UsageError
from utils.inference.detections import Detections
from utils.inference.loader import InferenceModel
from utils.nms import non_max_suppression
from utils.options import check_img_size

URL_TIMEOUT = 10.0  # seconds for an image URL


def _read_path(source: str | Path) -> tuple[np.ndarray, str]:
    """An image file or http(s) URL -> (RGB HWC uint8, file name). OpenCV decodes it, as in ``detect.py``."""
    s = str(source)
    if s.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(s, timeout=URL_TIMEOUT) as r:
                data = np.frombuffer(r.read(), np.uint8)
        except Exception as e:
            raise SourceError(f"image URL {s}: could not be downloaded ({type(e).__name__}: {str(e)[:120]})") from None
        im = cv2.imdecode(data, cv2.IMREAD_COLOR)
        name = Path(s.split("?")[0]).name or "image.jpg"
    else:
        if not Path(s).is_file():
            raise SourceError(f"image {s}: file not found")
        im, name = cv2.imread(s), Path(s).name
    if im is None:
        raise SourceError(f"image {s}: cannot be decoded")
    return np.ascontiguousarray(im[..., ::-1]), name


def _rgb_uint8(im: np.ndarray) -> np.ndarray:
    """HWC/HW/CHW array (0-255) -> contiguous RGB HWC uint8 (alpha dropped, grey repeated)."""
    if im.ndim == 3 and im.shape[0] < 5 and im.shape[2] >= 5:  # CHW
        im = im.transpose(1, 2, 0)
    if im.ndim == 2:
        im = im[..., None]
    if im.ndim != 3 or im.shape[2] not in (1, 3, 4):
        raise UsageError(f"image array of shape {im.shape}: expected HWC with 1, 3 or 4 channels")
    im = np.repeat(im, 3, axis=2) if im.shape[2] == 1 else im[..., :3]
    if im.dtype != np.uint8:
        im = np.clip(im, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(im)


def _one_input(im, i: int) -> list[tuple[np.ndarray, str]]:
    """One item of the input list -> [(RGB HWC uint8 image, file name)] (a BCHW tensor gives B images)."""
    if isinstance(im, (str, Path)):
        return [_read_path(im)]
    if isinstance(im, torch.Tensor):
        t = im.detach().cpu()
        t = t[None] if t.ndim == 3 else t
        if t.ndim != 4:
            raise UsageError(f"image tensor of shape {tuple(im.shape)}: expected CHW or BCHW")
        t = t if t.dtype == torch.uint8 else (t.float() * 255).round().clamp(0, 255)
        names = [f"image{i}.jpg"] if len(t) == 1 else [f"image{i}_{k}.jpg" for k in range(len(t))]
        return [(_rgb_uint8(x.permute(1, 2, 0).numpy()), n) for x, n in zip(t, names)]
    if isinstance(im, np.ndarray):
        return [(_rgb_uint8(im), f"image{i}.jpg")]
    if hasattr(im, "convert") and hasattr(im, "size"):  # PIL.Image (EXIF rotation applied, as OpenCV does)
        from PIL import ImageOps

        name = Path(getattr(im, "filename", "") or f"image{i}").with_suffix(".jpg").name
        return [(np.ascontiguousarray(np.asarray(ImageOps.exif_transpose(im).convert("RGB"))), name)]
    raise UsageError(f"image of type {type(im).__name__}: expected a path, URL, PIL image, numpy array or tensor")


def to_rgb_images(ims) -> tuple[list[np.ndarray], list[str]]:
    """Paths, URLs, PIL images, numpy HWC arrays (RGB, 0-255), torch tensors (CHW or BCHW RGB, float 0-1 or uint8)
    or a list of them -> (RGB HWC uint8 images, a file name per image)."""
    items = list(ims) if isinstance(ims, (list, tuple)) else [ims]
    pairs = [pair for i, im in enumerate(items) for pair in _one_input(im, i)]
    return [im for im, _ in pairs], [name for _, name in pairs]


class AutoShape(nn.Module):
    """Wraps an ``InferenceModel``: ``model(images, size=640)`` -> ``Detections``.

    Attributes (change them between calls, as in YOLOv5): ``conf`` (0.25), ``iou`` (0.45), ``classes`` (None,
    or a list of class indices to keep), ``max_det`` (1000), ``agnostic`` (class-agnostic NMS), ``multi_label``.
    """

    conf = 0.25
    iou = 0.45
    classes: list[int] | None = None
    max_det = 1000
    agnostic = False
    multi_label = False

    def __init__(self, model: InferenceModel, device: torch.device, augment: bool = False):
        super().__init__()
        self.model = model.eval()
        self.device = device
        self.names, self.stride = model.names, model.max_stride
        self.augmented = augment

    def _input_size(self, size: int | tuple[int, int]) -> int | tuple[int, int]:
        fixed = self.model.fixed_imgsz
        if fixed is not None:
            if ((size, size) if isinstance(size, int) else tuple(size)) != fixed:
                raise UsageError(f"size={size}: {self.model.weight_paths[0]} has a fixed {fixed[0]}x{fixed[1]} input")
            return fixed
        if isinstance(size, int):
            return check_img_size(size, self.stride)
        return tuple(check_img_size(int(s), self.stride) for s in size)

    @torch.inference_mode()
    def forward(self, ims, size: int | tuple[int, int] = 640, augment: bool = False) -> Detections:
        """Detect on one image or a list (see ``to_rgb_images`` for the accepted kinds).

        ``size`` is the letterbox target as in ``detect.py --imgsz`` (an int: long side; ``(h, w)``: fit inside).
        ``augment=True`` needs the model loaded with ``augment=True`` (TTA is set up at load time).
        """
        if augment and not self.augmented:
            raise UsageError("augment=True: load the model with torch.hub.load(..., augment=True) to use TTA")
        dt = Profile(self.device), Profile(self.device), Profile(self.device)
        with dt[0]:
            images, files = to_rgb_images(ims)
            shape = self._input_size(size)
            groups: dict[tuple[int, int], list[int]] = defaultdict(list)
            boxed = [letterbox(im, shape, stride=self.stride, auto=self.model.supports_rect)[0] for im in images]
            for i, b in enumerate(boxed):
                groups[b.shape[:2]].append(i)
        pred: list[torch.Tensor | None] = [None] * len(images)
        x_shape = None
        for hw, idx in groups.items():
            with dt[0]:
                x = self.model.input_tensor(np.stack([boxed[i].transpose(2, 0, 1) for i in idx]), self.device)
                x_shape = tuple(x.shape)
            with dt[1]:
                y = self.model(x)
            with dt[2]:
                out = non_max_suppression(
                    y, self.conf, self.iou, self.classes, self.agnostic, self.multi_label, max_det=self.max_det
                )
                for i, det in zip(idx, out):
                    det = det.detach().cpu().float()
                    scale_boxes_to_original(hw, det[:, :4], images[i].shape[:2])
                    pred[i] = det
        times = tuple(p.t / max(len(images), 1) * 1e3 for p in dt)
        return Detections(images, pred, files, self.names, times, x_shape)


def load_autoshape(
    weights: str | Path | list[str | Path],
    device: str | torch.device | None = None,
    autoshape: bool = True,
    verbose: bool = True,
    **options,
) -> AutoShape | InferenceModel:
    """Load weights (one path, or a list for an Ensemble) for the Python API; ``options`` are ``InferenceOptions``
    fields (``half``, ``augment``, ``tta_scales``, ``tta_flips``, ``ensemble_mode``, ``prune``, ``prune_exclude``,
    ``imgsz``). ``verbose=False`` silences the loading lines (warnings still show)."""
    from utils.devices import select_device
    from utils.inference.loader import InferenceOptions, load_inference_model
    from utils.log import quiet

    opts = InferenceOptions.from_kwargs(**options)
    with quiet(not verbose):
        dev = select_device("" if device is None else device, verbose=verbose)
        model = load_inference_model(weights, dev, opts)
    return AutoShape(model, dev, augment=opts.augment) if autoshape else model
