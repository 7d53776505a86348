"""Detections: what the Python API (``hubconf.py``, ``AutoShape``) returns for a batch of images.

The attribute and method names are those YOLOv5 users know (``results.xyxy[0]``, ``results.pandas().xyxy[0]``,
``results.print()``, ``.save()``, ``.crop()``, ``.render()``, ``.show()``, ``.tolist()``).
"""

from __future__ import annotations

from copy import copy
from pathlib import Path

import numpy as np
import torch

from utils.boxes import xyxy2xywh
from utils.devices import speed_line
from utils.files import increment_path
from utils.inference.predict import describe

XYXY_COLUMNS = ("xmin", "ymin", "xmax", "ymax", "confidence", "class", "name")
XYWH_COLUMNS = ("xcenter", "ycenter", "width", "height", "confidence", "class", "name")


class Detections:
    """Detections of a batch of images, in original-image coordinates.

    Attributes:
        ims: the images, ``np.ndarray[H, W, 3]`` uint8 RGB (``render()`` draws on them).
        pred / xyxy: per image Tensor[n, 6] (x1, y1, x2, y2, confidence, class), pixels, by descending confidence.
        xywh: the same as (centre x, centre y, width, height, confidence, class) pixels.
        xyxyn / xywhn: the same normalised to 0-1 by image width and height.
        names: class names by index. files: a file name per image (``save()`` writes under these names).
        t: (pre-process, inference, NMS) milliseconds per image. s: the network input shape of the last batch.
        n: the number of images (``len(results)``).
    """

    def __init__(
        self,
        ims: list[np.ndarray],
        pred: list[torch.Tensor],
        files: list[str],
        names: dict[int, str],
        times_ms: tuple[float, float, float] = (0.0, 0.0, 0.0),
        shape: tuple[int, ...] | None = None,
    ):
        self.ims, self.pred, self.files, self.names = ims, pred, files, names
        gains = [torch.tensor([im.shape[1], im.shape[0]] * 2 + [1, 1], dtype=torch.float32) for im in ims]
        self.xyxy = pred
        self.xywh = [xyxy2xywh(x) for x in pred]
        self.xyxyn = [x / g.to(x.device) for x, g in zip(self.xyxy, gains)]
        self.xywhn = [x / g.to(x.device) for x, g in zip(self.xywh, gains)]
        self.n = len(pred)
        self.t = tuple(times_ms)
        self.s = tuple(shape) if shape is not None else None

    # ------------------------------------------------------------------------------------------------- text
    def __len__(self) -> int:
        return self.n

    def __str__(self) -> str:
        lines = [
            f"image {i + 1}/{self.n}: {im.shape[0]}x{im.shape[1]} {describe(det, self.names)}"
            for i, (im, det) in enumerate(zip(self.ims, self.pred))
        ]
        if self.s is not None:
            lines.append(speed_line(self.t, self.s))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.n} image(s)>\n{self}"

    def print(self) -> None:
        """Print one line per image (``image 1/2: 480x640 2 persons, 1 tie``) and the speed line."""
        print(self)

    # ------------------------------------------------------------------------------------------------ images
    def _label(self, conf: float, cls: int) -> str:
        return f"{self.names[cls]} {conf:.2f}"

    def _annotated(self, i: int, labels: bool = True, im: np.ndarray | None = None) -> np.ndarray:
        """Image ``i`` (RGB) with its boxes drawn; on a copy unless ``im`` (drawn on in place) is given."""
        from utils.plots import Annotator, colors

        annotator = Annotator(self.ims[i].copy() if im is None else im)
        for *box, conf, cls in self.pred[i].tolist():
            annotator.box_label(box, self._label(conf, int(cls)) if labels else "", color=colors(int(cls)))
        return annotator.result()

    def render(self, labels: bool = True) -> list[np.ndarray]:
        """Draw the boxes onto ``self.ims`` (in place, RGB) and return them."""
        for i in range(self.n):
            self.ims[i] = self._annotated(i, labels, im=np.ascontiguousarray(self.ims[i]))
        return self.ims

    def show(self, labels: bool = True) -> None:
        """Show each annotated image (IPython ``display`` in a notebook, else the system image viewer via PIL)."""
        from PIL import Image

        try:
            from IPython import get_ipython
            from IPython.display import display

            notebook = get_ipython() is not None and "IPKernelApp" in get_ipython().config
        except ImportError:
            notebook = False
        for i in range(self.n):
            im = Image.fromarray(self._annotated(i, labels))
            display(im) if notebook else im.show(self.files[i])

    def save(self, labels: bool = True, save_dir: str | Path = "runs/detect/exp", exist_ok: bool = False) -> Path:
        """Write each annotated image as ``save_dir/<file>`` (``save_dir`` incremented: exp, exp2...); returns it."""
        import cv2

        save_dir = increment_path(save_dir, exist_ok=exist_ok, mkdir=True)
        for i in range(self.n):
            cv2.imwrite(str(save_dir / self.files[i]), self._annotated(i, labels)[..., ::-1])
        return save_dir

    def crop(self, save: bool = True, save_dir: str | Path = "runs/detect/exp", exist_ok: bool = False) -> list[dict]:
        """Crop every box. Returns dicts ``box`` (xyxy Tensor[4]), ``conf``, ``cls``, ``label``, ``im`` (RGB crop);
        with ``save`` also writes ``save_dir/crops/<class name>/<file>.jpg``."""
        from utils.plots import save_one_box

        save_dir = increment_path(save_dir, exist_ok=exist_ok, mkdir=save) if save else Path(save_dir)
        crops = []
        for i in range(self.n):
            bgr = self.ims[i][..., ::-1]
            for *box, conf, cls in self.pred[i].tolist():
                c = int(cls)
                file = save_dir / "crops" / self.names[c] / self.files[i]
                crop = save_one_box(box, bgr, file=file, save=save, bgr=False)
                crops.append(
                    {"box": torch.tensor(box), "conf": conf, "cls": c, "label": self._label(conf, c), "im": crop}
                )
        return crops

    # ------------------------------------------------------------------------------------------------ tables
    def pandas(self) -> Detections:
        """A copy whose ``xyxy``, ``xyxyn``, ``xywh``, ``xywhn`` are lists of pandas DataFrames, one per image,
        with YOLOv5's columns (``xmin ymin xmax ymax confidence class name`` / ``xcenter ycenter width height ...``)."""
        import pandas as pd

        new = copy(self)
        for attr, columns in (
            ("xyxy", XYXY_COLUMNS),
            ("xyxyn", XYXY_COLUMNS),
            ("xywh", XYWH_COLUMNS),
            ("xywhn", XYWH_COLUMNS),
        ):
            tables = []
            for t in getattr(self, attr):
                rows = [[*r[:5], int(r[5]), self.names[int(r[5])]] for r in t.tolist()]
                tables.append(pd.DataFrame(rows, columns=list(columns)).astype({"class": "int64"}))
            setattr(new, attr, tables)
        return new

    def tolist(self) -> list[Detections]:
        """One single-image ``Detections`` per image (for ``for r in results.tolist(): r.print()``)."""
        return [
            Detections([self.ims[i]], [self.pred[i]], [self.files[i]], self.names, self.t, self.s)
            for i in range(self.n)
        ]
