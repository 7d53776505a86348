"""A deterministic synthetic detection dataset: filled shapes on textured backgrounds.

Five classes (``CLASSES``) drawn 1-6 per image, 14-110 px at 256 px (sizes scale with ``imgsz``), in random colours
chosen to stand out from what lies under them, triangles/stars/crosses randomly rotated, over backgrounds made of a
colour gradient, smooth blotches, random lines and pixel noise. Shapes may overlap, but a new shape is never placed
where it would hide more than 60% of an earlier shape's box or leave an earlier shape less than 40% visible. Labels
are the full (amodal) box of each shape, YOLO format: ``cls xc yc w h`` normalised (xywhn), 6 decimals.

Every image has its own random stream seeded by (seed, split, index), so a seed reproduces the dataset exactly.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from utils.log import LOGGER

CLASSES: tuple[str, ...] = ("circle", "rectangle", "triangle", "star", "cross")
DEFAULTS: dict[str, int] = {"n_train": 800, "n_val": 200, "imgsz": 256, "seed": 0}
FORMAT_VERSION = 1  # bump when the drawing changes, so existing datasets are regenerated
MARKER = ".complete"
JPEG_QUALITY = 95
SIZE_RANGE = (14.0, 110.0)  # nominal shape size (circumscribed-circle diameter) in pixels at 256 px, log-uniform
MAX_SHAPES = 6
MAX_BOX_COVER = 0.6  # a new box may cover at most this fraction of an earlier box
MIN_VISIBLE = 0.4  # every shape keeps at least this fraction of its pixels visible
MIN_COLOUR_DIST = 90.0  # Euclidean BGR distance from the background and the shapes underneath
_SHIFT = 4  # fillPoly fixed-point bits: vertices are drawn with 1/16 px precision


def _rotate(points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    a = rng.uniform(0, 2 * np.pi)
    return points @ np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])


def shape_polygon(cls: int, size: float, rng: np.random.Generator) -> np.ndarray:
    """Outline of a shape of class ``cls`` and nominal ``size`` (pixels), centred on 0: ndarray[k, 2] float (x, y)."""
    r = size / 2
    name = CLASSES[cls]
    if name == "circle":
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        return np.stack((np.cos(t), np.sin(t)), 1) * r
    if name == "rectangle":  # axis-aligned, aspect ratio up to 2.5:1 either way
        w, h = size, size * rng.uniform(0.4, 1.0)
        if rng.random() < 0.5:
            w, h = h, w
        return np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) / 2
    if name == "triangle":  # near-equilateral: corners jittered by up to 12 degrees
        t = np.radians(90 + np.array([0.0, 120.0, 240.0]) + rng.uniform(-12, 12, 3))
        return _rotate(np.stack((np.cos(t), np.sin(t)), 1) * r, rng)
    if name == "star":  # five points, inner radius 38-50% of the outer one
        t = np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, r * rng.uniform(0.38, 0.5))
        return _rotate(np.stack((np.cos(t), np.sin(t)), 1) * radii[:, None], rng)
    if name == "cross":  # plus sign, arm half-width 22-36% of the arm length
        a = r * rng.uniform(0.22, 0.36)
        q = [[a, r], [a, a], [r, a], [r, -a], [a, -a], [a, -r], [-a, -r], [-a, -a], [-r, -a], [-r, a], [-a, a], [-a, r]]
        return _rotate(np.array(q, dtype=np.float64), rng)
    raise ValueError(f"unknown shape class {cls}")


def draw_shape(im: np.ndarray, polygon: np.ndarray, colour: tuple[int, int, int]) -> None:
    """Fill ``polygon`` (ndarray[k, 2] float xy pixels) on the BGR image ``im`` in place, anti-aliased."""
    cv2.fillPoly(im, [np.round(polygon * (1 << _SHIFT)).astype(np.int32)], colour, cv2.LINE_AA, _SHIFT)


def _background(rng: np.random.Generator, imgsz: int) -> np.ndarray:
    """Linear gradient between two random colours + smooth blotches + random lines: HWC uint8 BGR."""
    a = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:imgsz, 0:imgsz] / imgsz
    t = xx * np.cos(a) + yy * np.sin(a)
    t = (t - t.min()) / (t.max() - t.min())
    c0, c1 = rng.uniform(0, 255, (2, 3))
    im = c0 + t[..., None] * (c1 - c0)
    g = int(rng.integers(3, 9))  # a coarse random grid upsampled smoothly gives low-frequency texture
    im += cv2.resize(rng.normal(0, rng.uniform(5, 40), (g, g, 3)), (imgsz, imgsz), interpolation=cv2.INTER_CUBIC)
    im = np.clip(im, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(0, 9))):
        p1, p2 = rng.integers(0, imgsz, (2, 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.line(im, tuple(int(v) for v in p1), tuple(int(v) for v in p2), colour, int(rng.integers(1, 4)), cv2.LINE_AA)
    return im


def _pick_colour(rng: np.random.Generator, under: np.ndarray) -> tuple[int, int, int]:
    """A random colour at least MIN_COLOUR_DIST from every colour in ``under`` (ndarray[m, 3]), or the farthest
    of 50 tries."""
    best, best_dist = None, -1.0
    for _ in range(50):
        c = rng.integers(0, 256, 3)
        dist = float(np.linalg.norm(under - c, axis=1).min())
        if dist > best_dist:
            best, best_dist = c, dist
        if dist >= MIN_COLOUR_DIST:
            break
    return tuple(int(v) for v in best)


def render_image(rng: np.random.Generator, imgsz: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic image and its labels.

    Returns:
        ``(image, labels)``: ``imgsz`` x ``imgsz`` uint8 BGR and ndarray[n, 5] (cls, x1, y1, x2, y2) pixels, n in 1-6.
    """
    im = _background(rng, imgsz)
    owner = np.full((imgsz, imgsz), -1, dtype=np.int16)  # index of the shape on top at each pixel
    labels, areas, colours = [], [], []
    lo, hi = (v * imgsz / 256 for v in SIZE_RANGE)
    for _ in range(int(rng.integers(1, MAX_SHAPES + 1))):
        for _attempt in range(30):
            cls = int(rng.integers(len(CLASSES)))
            poly = shape_polygon(cls, float(np.exp(rng.uniform(np.log(lo), np.log(hi)))), rng)
            (xmin, ymin), (xmax, ymax) = poly.min(0), poly.max(0)
            poly = poly + (rng.uniform(1 - xmin, imgsz - 1 - xmax), rng.uniform(1 - ymin, imgsz - 1 - ymax))
            box = np.concatenate((poly.min(0), poly.max(0))).clip(0, imgsz)
            if labels and _cover(box, np.array(labels)[:, 1:]).max() > MAX_BOX_COVER:
                continue
            mask = np.zeros((imgsz, imgsz), dtype=np.uint8)
            cv2.fillPoly(mask, [np.round(poly * (1 << _SHIFT)).astype(np.int32)], 1, cv2.LINE_8, _SHIFT)
            hidden = owner[mask.astype(bool)]
            if labels:
                visible = np.bincount(owner[owner >= 0], minlength=len(labels))
                lost = np.bincount(hidden[hidden >= 0], minlength=len(labels))
                if ((visible - lost) < MIN_VISIBLE * np.array(areas)).any():
                    continue
            under = [im[mask.astype(bool)].reshape(-1, 3).mean(0)] + [
                colours[k] for k in np.unique(hidden[hidden >= 0])
            ]
            colour = _pick_colour(rng, np.array(under, dtype=np.float64))
            draw_shape(im, poly, colour)
            owner[mask.astype(bool)] = len(labels)
            labels.append([cls, *box])
            areas.append(int(mask.sum()))
            colours.append(colour)
            break
    noise = rng.normal(0, rng.uniform(2, 10), im.shape)  # sensor-like noise over shapes and background alike
    im = np.clip(im + noise, 0, 255).astype(np.uint8)
    return im, np.array(labels, dtype=np.float64).reshape(-1, 5)


def _cover(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Fraction of each of ``boxes`` (ndarray[n, 4] xyxy) covered by ``box`` (ndarray[4] xyxy)."""
    iw = (np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0])).clip(0)
    ih = (np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1])).clip(0)
    return iw * ih / ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))


def _label_text(labels: np.ndarray, imgsz: int) -> str:
    lines = []
    for cls, x1, y1, x2, y2 in labels:
        xc, yc, w, h = (x1 + x2) / 2 / imgsz, (y1 + y2) / 2 / imgsz, (x2 - x1) / imgsz, (y2 - y1) / imgsz
        lines.append(f"{int(cls)} {xc:.6f} {yc:.6f} {w:.6f} {h:.6f}\n")
    return "".join(lines)


def _params(**params: int) -> dict:
    unknown = sorted(set(params) - set(DEFAULTS))
    if unknown:
        raise TypeError(f"unknown shapes dataset parameters {unknown}; known: {list(DEFAULTS)}")
    return {"generator": "shapes", "version": FORMAT_VERSION, **DEFAULTS, **params}


def generate_shapes_dataset(
    root: Path, n_train: int = 800, n_val: int = 200, imgsz: int = 256, seed: int = 0, *, progress: bool = False
) -> Path:
    """Write the dataset to ``root`` atomically and return ``root``.

    Layout: ``root/images/{train,val}/NNNNN.jpg``, ``root/labels/{train,val}/NNNNN.txt`` and ``root/.complete``
    (JSON of the generation parameters). Everything is written into a temporary folder beside ``root`` and renamed
    into place at the end, so an interrupted run leaves no ``root`` (or the previous one untouched).
    """
    root = Path(root)
    params = _params(n_train=n_train, n_val=n_val, imgsz=imgsz, seed=seed)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    jobs = [(split_id, split, i) for split_id, split, n in ((0, "train", n_train), (1, "val", n_val)) for i in range(n)]
    write = partial(_write_image, tmp, seed, imgsz)
    try:
        for split in ("train", "val"):
            (tmp / "images" / split).mkdir(parents=True)
            (tmp / "labels" / split).mkdir(parents=True)
        with tqdm(total=len(jobs), desc="shapes", disable=not progress) as bar, _pool() as pool:
            for _ in pool.map(write, jobs, chunksize=25) if pool else map(write, jobs):
                bar.update()
        (tmp / MARKER).write_text(json.dumps(params, indent=1) + "\n")
        _swap_into_place(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def _write_image(tmp: Path, seed: int, imgsz: int, job: tuple[int, str, int]) -> None:
    """Render image ``i`` of a split from its own random stream and write it and its labels under ``tmp``."""
    split_id, split, i = job
    im, labels = render_image(np.random.default_rng([seed, split_id, i]), imgsz)
    if not cv2.imwrite(str(tmp / "images" / split / f"{i:05d}.jpg"), im, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
        raise OSError(f"could not write an image into {tmp}")
    (tmp / "labels" / split / f"{i:05d}.txt").write_text(_label_text(labels, imgsz))


def _pool():
    """Forked worker processes, one per core (``fork_helpers``), else none: every image has its own
    random stream, so the files are the same either way (10-13 ms an image; the default job's 1,000 images took
    12.8 s on one of this project's 2 cores)."""
    from utils.devices import fork_helpers

    context, cores = fork_helpers()
    if context is None:
        return contextlib.nullcontext()  # enters as None: the images are written here
    return ProcessPoolExecutor(max_workers=min(cores, 8), mp_context=context)


def _swap_into_place(tmp: Path, root: Path) -> None:
    """Rename ``tmp`` to ``root``, replacing an existing ``root`` (a folder cannot be renamed over a non-empty one)."""
    if not root.exists():
        tmp.rename(root)
        return
    trash = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
    root.rename(trash / root.name)
    try:
        tmp.rename(root)
    except BaseException:
        (trash / root.name).rename(root)  # put the previous dataset back
        raise
    finally:
        shutil.rmtree(trash, ignore_errors=True)


def read_marker(root: Path) -> dict | None:
    """The generation parameters stored in ``root/.complete``, or None when there is no valid marker."""
    try:
        return json.loads((Path(root) / MARKER).read_text())
    except (OSError, ValueError):
        return None


def ensure_shapes_dataset(root: Path, **params: int) -> Path:
    """Return ``root`` if it holds a complete shapes dataset made with ``params`` (defaults: ``DEFAULTS``), else
    generate it there with a progress bar.

    Raises:
        FileExistsError: ``root`` is a non-empty folder that this module did not write (no marker): never deleted.
    """
    root = Path(root)
    wanted = _params(**params)
    marker = read_marker(root)
    if marker == wanted:
        return root
    if marker is None and root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} exists but is not a generated shapes dataset (no {MARKER}); not overwriting it")
    LOGGER.info(f"Generating synthetic shapes dataset in {root} ...")
    kwargs = {k: wanted[k] for k in DEFAULTS}
    return generate_shapes_dataset(root, **kwargs, progress=True)
