"""Drawing and plotting: box annotation with OpenCV, training/validation figures with matplotlib.

Every figure is a standalone ``matplotlib.figure.Figure`` rendered by the Agg canvas, never a pyplot figure,
so nothing here touches the global backend or pyplot's figure registry and figures are freed once the
function returns (no leak over many epochs). matplotlib is imported lazily so that ``detect.py``, which only
needs ``Annotator``, does not pay for it. Plot functions take explicit inputs and return the path written.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from utils.boxes import clip_boxes, xywh2xyxy, xyxy2xywh
from utils.devices import fork_helpers
from utils.log import LOGGER
from utils.metrics import smooth

Names = Mapping[int, str] | Sequence[str] | None

# Hand-picked, well separated hues (RGB hex); class i gets entry i % 20.
_PALETTE_HEX = (
    "E6194B", "3CB44B", "FFC61A", "4363D8", "F58231", "911EB4", "42D4F4", "F032E6", "BFEF45", "FA8EB4",
    "469990", "B784F5", "9A6324", "E0C85A", "800000", "5BD6A0", "808000", "F7A35C", "000075", "A9A9A9",
)  # fmt: skip
_PALETTE = tuple(tuple(int(h[k : k + 2], 16) for k in (0, 2, 4)) for h in _PALETTE_HEX)


def colors(i: int, bgr: bool = False) -> tuple[int, int, int]:
    """Colour of class ``i`` as an (R, G, B) tuple of 0-255 ints, or (B, G, R) for OpenCV when ``bgr``."""
    c = _PALETTE[int(i) % len(_PALETTE)]
    return (c[2], c[1], c[0]) if bgr else c


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _name(names: Names, c: int) -> str:
    try:
        return str(names[int(c)]) if names is not None else str(int(c))
    except (KeyError, IndexError):
        return str(int(c))


class Annotator:
    """Draws boxes and text on a BGR uint8 image ``[H, W, 3]`` with OpenCV.

    The image is drawn on in place when it is already C-contiguous (no copy); ``result()`` returns it.
    """

    def __init__(self, im: np.ndarray, line_width: int | None = None):
        self.im = np.ascontiguousarray(im)
        # Thicker lines on bigger images so boxes stay visible once the image is viewed scaled down.
        self.lw = line_width or max(round(sum(im.shape) / 2 * 0.003), 2)
        self.tf = max(self.lw - 1, 1)  # font thickness
        self.fs = self.lw / 3  # font scale

    def box_label(
        self,
        box,
        label: str = "",
        color: tuple[int, int, int] = (128, 128, 128),
        txt_color: tuple[int, int, int] = (255, 255, 255),
    ) -> None:
        """Draw one ``xyxy`` pixel box; ``label`` goes on a filled background above it (inside at the top edge)."""
        x1, y1, x2, y2 = (int(v) for v in _numpy(box).reshape(-1)[:4])
        cv2.rectangle(self.im, (x1, y1), (x2, y2), color, thickness=self.lw, lineType=cv2.LINE_AA)
        if not label:
            return
        (tw, th), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, self.fs, self.tf)
        above = y1 - th - 3 >= 0  # is there room for the label above the box?
        y_bg = y1 - th - 3 if above else y1 + th + 3
        cv2.rectangle(self.im, (x1, y1), (x1 + tw, y_bg), color, -1, cv2.LINE_AA)
        y_txt = y1 - 2 if above else y1 + th + 2
        cv2.putText(self.im, label, (x1, y_txt), cv2.FONT_HERSHEY_SIMPLEX, self.fs, txt_color, self.tf, cv2.LINE_AA)

    def rectangle(self, xyxy, color: tuple[int, int, int] = (255, 255, 255), width: int = 1) -> None:
        """Draw an unfilled ``xyxy`` pixel rectangle."""
        x1, y1, x2, y2 = (int(v) for v in xyxy)
        cv2.rectangle(self.im, (x1, y1), (x2, y2), color, width)

    def text(self, xy, text: str, txt_color: tuple[int, int, int] = (255, 255, 255)) -> None:
        """Write ``text`` with its top-left corner at pixel ``xy``."""
        th = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, self.fs, self.tf)[0][1]
        org = (int(xy[0]), int(xy[1]) + th)
        cv2.putText(self.im, text, org, cv2.FONT_HERSHEY_SIMPLEX, self.fs, txt_color, self.tf, cv2.LINE_AA)

    def result(self) -> np.ndarray:
        """The annotated BGR image ``[H, W, 3]``."""
        return self.im


def _unused_path(file: Path) -> Path:
    """``file`` if free, else ``stem2.ext``, ``stem3.ext``... (the first that does not exist)."""
    n = 2
    path = file
    while path.exists():
        path = file.with_name(f"{file.stem}{n}{file.suffix}")
        n += 1
    return path


def save_one_box(
    xyxy,
    im: np.ndarray,
    file: Path = Path("im.jpg"),
    gain: float = 1.02,
    pad: int = 10,
    square: bool = False,
    bgr: bool = True,
    save: bool = True,
) -> np.ndarray:
    """Crop one ``xyxy`` pixel box from a BGR image ``[H, W, 3]``, enlarged by ``gain`` and ``pad`` pixels.

    The crop is saved as a jpg at ``file`` (parents created; a number is appended instead of overwriting) and
    returned as ``[h, w, 3]`` in BGR order, or RGB when ``bgr`` is False.
    """
    b = xyxy2xywh(_numpy(xyxy).astype(np.float64).reshape(1, 4))
    if square:
        b[:, 2:] = b[:, 2:].max(1, keepdims=True)
    b[:, 2:] = b[:, 2:] * gain + pad
    b = clip_boxes(xywh2xyxy(b), im.shape[:2]).astype(int)[0]
    crop = im[b[1] : b[3], b[0] : b[2]]
    if save:
        file = Path(file)
        file.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(_unused_path(file.with_suffix(".jpg"))), crop, [cv2.IMWRITE_JPEG_QUALITY, 95])
    return crop if bgr else crop[..., ::-1]


def draw_in_parallel(in_child: Sequence[Callable[[], object]], here: Sequence[Callable[[], object]]) -> None:
    """Run plotting calls: ``in_child`` in a forked process while this one runs ``here``.

    Rendering is single-threaded: ``val.py``'s confusion matrix (80 classes, 1.1-1.7 s on this project's CPU)
    draws on the otherwise idle second core while the four curves and six batch mosaics draw here, the same files
    in about half the wall time. Sequential where fork is unsafe or unavailable (not Linux) or with one core; if the
    child fails, its calls run again here, so an error is raised as usual.
    """
    context, _ = fork_helpers()
    if not in_child or not here or context is None:
        for call in (*in_child, *here):
            call()
        return
    import matplotlib.backends.backend_agg  # noqa: F401 (imported once, before the fork, for both processes)

    def run_all():
        for call in in_child:
            call()

    child = context.Process(target=run_all, daemon=True)
    child.start()
    for call in here:
        call()
    child.join()
    if child.exitcode != 0:
        LOGGER.warning(f"WARNING ⚠️ plotting process exited with code {child.exitcode}; drawing its figures here")
        run_all()


def _figure(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] = (6.4, 4.8), **kwargs):
    """A pyplot-free figure on the Agg canvas and its axes array ``[nrows, ncols]``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, **kwargs)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def _save(fig, path: Path, dpi: int) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # zlib level 1 instead of matplotlib's 6: PNG encoding was about 40% of savefig's time in val.py's plots
    kw = {"pil_kwargs": {"compress_level": 1}} if path.suffix.lower() == ".png" else {}
    fig.savefig(path, dpi=dpi, **kw)
    fig.clear()  # drop artists now rather than at garbage collection
    return path


def plot_pr_curve(
    px: np.ndarray, pr_curve: np.ndarray, ap: np.ndarray, save_path: Path, names: Names, classes: np.ndarray
) -> Path:
    """Precision-recall curves: ``px`` ``[1000]`` recall grid, ``pr_curve`` ``[nc, 1000]`` precision per class,
    ``ap`` ``[nc, T]`` AP per class at T IoU thresholds (column 0 is IoU 0.5), ``classes`` ``[nc]`` class ids."""
    fig, ax = _figure(figsize=(9, 6), layout="tight")
    ax = ax[0, 0]
    py, ap = np.atleast_2d(pr_curve), np.asarray(ap).reshape(len(classes), -1) if len(classes) else None
    legend = 0 < len(classes) < 21  # beyond that a legend hides the plot
    for i, c in enumerate(classes):
        label = f"{_name(names, c)} {ap[i, 0]:.3f}" if legend else None
        ax.plot(px, py[i], linewidth=1, label=label, color=None if legend else "grey")
    if len(classes):
        ax.plot(px, py.mean(0), linewidth=3, color="blue", label=f"all classes {ap[:, 0].mean():.3f} mAP@0.5")
        ax.legend(bbox_to_anchor=(1.04, 1), loc="upper left")
    ax.set(xlabel="Recall", ylabel="Precision", xlim=(0, 1), ylim=(0, 1), title="Precision-Recall Curve")
    return _save(fig, save_path, dpi=250)


def plot_mc_curve(
    px: np.ndarray,
    y: np.ndarray,
    save_path: Path,
    names: Names,
    classes: np.ndarray,
    xlabel: str = "Confidence",
    ylabel: str = "Metric",
) -> Path:
    """Metric-vs-confidence curves (F1, P or R): ``px`` ``[1000]`` confidence grid, ``y`` ``[nc, 1000]``."""
    fig, ax = _figure(figsize=(9, 6), layout="tight")
    ax = ax[0, 0]
    y = np.atleast_2d(y)
    legend = 0 < len(classes) < 21
    for i, c in enumerate(classes):
        ax.plot(px, y[i], linewidth=1, label=_name(names, c) if legend else None, color=None if legend else "grey")
    if len(classes):
        mean = smooth(y.mean(0), 0.05)
        i = int(mean.argmax())
        ax.plot(px, mean, linewidth=3, color="blue", label=f"all classes {mean[i]:.2f} at {px[i]:.3f}")
        ax.legend(bbox_to_anchor=(1.04, 1), loc="upper left")
    ax.set(xlabel=xlabel, ylabel=ylabel, xlim=(0, 1), ylim=(0, 1), title=f"{ylabel}-Confidence Curve")
    return _save(fig, save_path, dpi=250)


def normalize_confusion(matrix: np.ndarray) -> np.ndarray:
    """Divide each column (a true class) by its total, so non-empty columns sum to 1; empty columns stay 0."""
    m = np.asarray(matrix, dtype=np.float64)
    totals = m.sum(0, keepdims=True)
    return np.divide(m, totals, out=np.zeros_like(m), where=totals > 0)


def plot_confusion_matrix(matrix: np.ndarray, names: list[str], save_path: Path, normalize: bool = True) -> Path:
    """Confusion matrix ``[nc+1, nc+1]``: rows predicted class, columns true class, last index background."""
    n = len(matrix) - 1  # number of classes
    data = normalize_confusion(matrix) if normalize else np.asarray(matrix, dtype=np.float64)
    data = np.where(data < 0.005, np.nan, data)  # blank cells instead of a sea of zeros
    fig, ax = _figure(figsize=(12, 9), layout="tight")
    ax = ax[0, 0]
    vmax = 1.0 if normalize else max(float(np.nanmax(data, initial=0.0)), 1.0)
    im = ax.imshow(data, cmap="Blues", vmin=0.0, vmax=vmax, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if n < 30:
        size = 8 if n < 10 else 6
        for (r, c), v in np.ndenumerate(data):
            if not np.isnan(v):
                colour = "white" if v > 0.5 * vmax else "black"
                ax.text(
                    c, r, f"{v:.2f}" if normalize else f"{v:.0f}", ha="center", va="center", size=size, color=colour
                )
    if 0 < n < 99 and len(names) == n:
        ticks = [*map(str, names), "background"]
        ax.set_xticks(range(n + 1), ticks, rotation=90)
        ax.set_yticks(range(n + 1), ticks)
    ax.set(xlabel="True", ylabel="Predicted", title="Confusion Matrix")
    return _save(fig, save_path, dpi=250)


def plot_images(
    images,
    targets,
    paths: list[str] | None = None,
    fname: Path = Path("images.jpg"),
    names: Names = None,
    max_size: int = 1920,
    max_subplots: int = 16,
) -> Path:
    """Save a grid mosaic jpg of a batch with its boxes.

    Args:
        images: Tensor or ndarray ``[B, 3, H, W]``, RGB, uint8 0-255 or float 0-1.
        targets: ``[n, 6]`` labels (batch_idx, cls, x, y, w, h) or ``[n, 7]`` predictions (+ conf); xywh in
            pixels of the ``H x W`` batch images, or normalised 0-1 (detected per image: all values <= 1.01).
        paths: image file names written in each cell's corner.
        max_size: the longest mosaic side is at most this many pixels.
    """
    images, targets = _numpy(images)[:max_subplots], _numpy(targets).astype(np.float64)
    targets = targets.reshape(-1, targets.shape[-1]) if targets.size else np.zeros((0, 6))
    if images.dtype != np.uint8:  # only the plotted images are converted: val.py passes a whole uint8 batch
        images = images.astype(np.float32)
        images = (images * 255 if images.max(initial=0) <= 1 else images).clip(0, 255).astype(np.uint8)
    bs, _, h, w = images.shape
    if bs == 0:
        raise ValueError("plot_images needs at least one image")
    ns = math.ceil(bs**0.5)  # grid is ns x ns
    scale = min(max_size / ns / max(h, w), 1.0)
    h, w = math.ceil(scale * h), math.ceil(scale * w)
    mosaic = np.full((ns * h, ns * w, 3), 255, dtype=np.uint8)
    for i in range(bs):
        im = np.ascontiguousarray(images[i].transpose(1, 2, 0)[..., ::-1])  # BGR
        if scale < 1:
            im = cv2.resize(im, (w, h), interpolation=cv2.INTER_AREA)
        y, x = h * (i // ns), w * (i % ns)
        mosaic[y : y + h, x : x + w] = im

    fs = int((h + w) * ns * 0.01)  # reference size for lines and text
    annotator = Annotator(mosaic, line_width=max(round(fs / 10), 1))
    for i in range(bs):
        y, x = h * (i // ns), w * (i % ns)
        annotator.rectangle((x, y, x + w, y + h), (255, 255, 255), width=2)
        if paths:
            annotator.text((x + 5, y + 5), Path(paths[i]).name[:40], txt_color=(220, 220, 220))
        t = targets[targets[:, 0] == i]
        if not len(t):
            continue
        boxes = xywh2xyxy(t[:, 2:6])
        if t[:, 2:6].max() <= 1.01:  # normalised
            boxes[:, [0, 2]] *= w
            boxes[:, [1, 3]] *= h
        elif scale < 1:
            boxes *= scale
        boxes += (x, y, x, y)
        conf = t[:, 6] if t.shape[1] > 6 else None
        for j, (box, c) in enumerate(zip(boxes, t[:, 1].astype(int))):
            if conf is None or conf[j] > 0.25:
                label = _name(names, c) if conf is None else f"{_name(names, c)} {conf[j]:.1f}"
                annotator.box_label(box, label, color=colors(c, bgr=True))
    fname = Path(fname)
    fname.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(fname), annotator.result())
    return fname


def plot_labels(labels: np.ndarray, names: Names, save_dir: Path) -> Path:
    """Dataset label statistics -> ``save_dir/labels.png``; ``labels`` ``[n, 5]`` (cls, x, y, w, h) normalised."""
    labels = _numpy(labels).reshape(-1, 5)
    cls, xywh = labels[:, 0].astype(int), labels[:, 1:]
    nc = max(int(cls.max(initial=-1)) + 1, len(names) if names is not None else 0)
    fig, ax = _figure(2, 2, figsize=(8, 8), layout="tight")

    counts = np.bincount(cls, minlength=nc)
    ax[0, 0].bar(range(nc), counts, color=[np.array(colors(i)) / 255 for i in range(nc)])
    ax[0, 0].set_ylabel("instances")
    if 0 < nc < 30:
        ax[0, 0].set_xticks(range(nc), [_name(names, i) for i in range(nc)], rotation=90, fontsize=10)
    else:
        ax[0, 0].set_xlabel("classes")

    # Shapes of up to 1000 boxes, all centred, on a 1000 x 1000 canvas.
    canvas = np.full((1000, 1000, 3), 255, dtype=np.uint8)
    boxes = xywh2xyxy(np.concatenate([np.full((len(xywh), 2), 0.5), xywh[:, 2:]], 1)[:1000]) * 1000
    for box, c in zip(boxes.astype(int), cls[:1000]):
        cv2.rectangle(canvas, (box[0], box[1]), (box[2], box[3]), colors(c), 1)
    ax[0, 1].imshow(canvas)
    ax[0, 1].axis("off")

    for a, (i, j), (xl, yl) in zip((ax[1, 0], ax[1, 1]), ((0, 1), (2, 3)), (("x", "y"), ("width", "height"))):
        if len(xywh):
            a.hist2d(xywh[:, i], xywh[:, j], bins=50, range=((0, 1), (0, 1)), cmap="Blues", cmin=1, vmin=0)
        a.set(xlabel=xl, ylabel=yl, xlim=(0, 1), ylim=(0, 1))
    return _save(fig, Path(save_dir) / "labels.png", dpi=200)


def read_csv_columns(path: Path) -> dict[str, np.ndarray]:
    """Numeric CSV -> {header name with spaces stripped: column values ``[rows]``}; blanks read as NaN."""
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if r]
    header = [h.strip() for h in rows[0]]
    data = np.array([[float(v) if v.strip() else np.nan for v in r] for r in rows[1:]], dtype=np.float64)
    data = data.reshape(-1, len(header))
    return {k: data[:, i] for i, k in enumerate(header)}


def _smooth_gauss(y: np.ndarray) -> np.ndarray:
    from scipy.ndimage import gaussian_filter1d

    return gaussian_filter1d(y, sigma=3, mode="nearest")


_RESULTS_GRID = (  # YOLOv5's results.png layout: train losses and P, R on top; val losses and mAPs below
    "train/box_loss", "train/obj_loss", "train/cls_loss", "metrics/precision", "metrics/recall",
    "val/box_loss", "val/obj_loss", "val/cls_loss", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95",
)  # fmt: skip


def plot_results(csv_path: Path) -> Path:
    """Training curves from a YOLOv5 ``results.csv`` -> ``results.png`` beside it (2 x 5 grid vs epoch)."""
    csv_path = Path(csv_path)
    cols = read_csv_columns(csv_path)
    keys = list(cols)
    x = cols.get("epoch", cols[keys[0]])
    grid = _RESULTS_GRID if all(k in cols for k in _RESULTS_GRID) else keys[1:11]
    fig, ax = _figure(2, 5, figsize=(12, 6), layout="tight")
    for a, k in zip(ax.ravel(), grid):
        y = cols[k]
        a.plot(x, y, marker=".", label=csv_path.parent.name or "results", linewidth=2, markersize=8)
        a.plot(x, _smooth_gauss(y), ":", label="smooth", linewidth=2)
        a.set_title(k, fontsize=12)
    ax[0, 0].legend()
    return _save(fig, csv_path.with_name("results.png"), dpi=200)


def plot_evolve(evolve_csv: Path) -> Path:
    """Hyperparameter evolution -> ``evolve.png`` beside ``evolve.csv`` (7 metric columns, then one per hyp).

    One scatter per hyperparameter of its value vs fitness (0.1 mAP@0.5 + 0.9 mAP@0.5:0.95); '+' marks the best.
    """
    evolve_csv = Path(evolve_csv)
    cols = read_csv_columns(evolve_csv)
    f = 0.1 * cols["metrics/mAP_0.5"] + 0.9 * cols["metrics/mAP_0.5:0.95"]
    best = int(np.nanargmax(f))
    hyps = list(cols)[7:]
    ncols = max(math.ceil(len(hyps) ** 0.5), 1)
    nrows = max(math.ceil(len(hyps) / ncols), 1)
    fig, ax = _figure(nrows, ncols, figsize=(2.4 * ncols, 2.4 * nrows), layout="tight")
    for a in ax.ravel()[len(hyps) :]:
        a.axis("off")
    for i, (a, k) in enumerate(zip(ax.ravel(), hyps)):
        v = cols[k]
        a.scatter(v, f, c=f, cmap="viridis", alpha=0.8, edgecolors="none")
        a.plot(v[best], f[best], "k+", markersize=15)
        a.set_title(f"{k} = {v[best]:.3g}", fontdict={"size": 9})
        a.tick_params(labelsize=7)
        if i % ncols:
            a.set_yticks([])
    return _save(fig, evolve_csv.with_name("evolve.png"), dpi=200)


def plot_training_curves(
    runs: Mapping[str, Path], save_path: Path, columns: Sequence[str] = ("train/box_loss", "metrics/mAP_0.5")
) -> Path:
    """Overlay several runs' ``results.csv`` curves: one subplot per column, one line per run label, vs epoch."""
    fig, ax = _figure(1, len(columns), figsize=(5 * len(columns), 4), layout="tight")
    for label, path in runs.items():
        cols = read_csv_columns(path)
        missing = [c for c in columns if c not in cols]
        if missing:
            raise KeyError(f"{path} has no column(s) {missing}; it has {list(cols)}")
        x = cols.get("epoch", np.arange(len(cols[columns[0]])))
        for a, c in zip(ax[0], columns):
            a.plot(x, cols[c], marker=".", linewidth=2, label=label)
    for a, c in zip(ax[0], columns):
        a.set(title=c, xlabel="epoch")
        a.legend()
    return _save(fig, save_path, dpi=200)
