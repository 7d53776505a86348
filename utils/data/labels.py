"""Checking images and YOLO label files, with a cache that is rebuilt when any file changes.

A label file has one object per line: ``class x_center y_center width height``, normalised to 0-1
(polygon lines ``class x1 y1 x2 y2 ...`` are reduced to their bounding box). Every bad file is reported
with its own reason and skipped; nothing here raises for bad data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm import tqdm

from utils.boxes import xyxy2xywh
from utils.data.dataset_config import img2label_path
from utils.log import LOGGER

CACHE_VERSION = 2
WARN = "WARNING ⚠️"


@dataclass
class LabelScan:
    """Verified dataset contents: only good images are listed; ``messages`` has one line per bad file."""

    im_files: list[str]
    labels: list[np.ndarray]  # each ndarray[n, 5] (cls, x, y, w, h) normalised
    shapes: np.ndarray  # ndarray[N, 2] (width, height) of each image
    n_found: int = 0
    n_missing: int = 0
    n_empty: int = 0
    n_corrupt: int = 0
    messages: list[str] = field(default_factory=list)


def _image_size(path: str) -> tuple[tuple[int, int], str]:
    """(width, height) after EXIF rotation; raises on an unreadable or truncated image; returns a warning."""
    warning = ""
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        size = ImageOps.exif_transpose(im).size if im.format in ("JPEG", "MPO") else im.size
        fmt = (im.format or "").lower()
    if size[0] < 10 or size[1] < 10:
        raise ValueError(f"image size {size} is below 10 pixels")
    if fmt == "jpeg":
        with open(path, "rb") as fh:
            fh.seek(-2, 2)
            if fh.read() != b"\xff\xd9":
                raise ValueError("truncated JPEG (no end-of-image marker)")
    return size, warning


def verify_image_label(im_file: str, lb_file: str, nc: int) -> tuple[np.ndarray | None, tuple | None, str, str]:
    """Check one image and its label file.

    Returns:
        ``(labels ndarray[n,5] | None, (w, h) | None, status, message)``; ``status`` is one of ``found``,
        ``missing`` (no label file: a background image), ``empty`` or ``corrupt`` (labels is None, skip it).
    """
    try:
        size, _ = _image_size(im_file)
    except Exception as e:
        return None, None, "corrupt", f"{WARN} {im_file}: ignoring corrupt image: {str(e).splitlines()[0][:160]}"
    if not os.path.isfile(lb_file):
        return np.zeros((0, 5), np.float32), size, "missing", ""
    try:
        rows = []
        with open(lb_file, encoding="utf-8") as fh:
            for k, line in enumerate(fh.read().strip().splitlines(), 1):
                parts = line.split()
                if not parts:
                    continue
                if len(parts) < 5 or (len(parts) > 5 and len(parts) % 2 == 0):
                    raise ValueError(f"line {k}: expected 'class x y w h' (5 numbers), got {len(parts)} values")
                try:
                    values = [float(v) for v in parts]
                except ValueError:
                    raise ValueError(f"line {k}: non-numeric value in {line.strip()!r}") from None
                if len(parts) > 5:  # polygon -> bounding box
                    xy = np.array(values[1:], np.float32).reshape(-1, 2)
                    lo, hi = xy.min(0), xy.max(0)
                    values = [values[0], *((lo + hi) / 2), *(hi - lo)]
                rows.append(values)
                cls = values[0]
                if cls != int(cls) or cls < 0:
                    raise ValueError(f"line {k}: class {parts[0]} is not a non-negative integer")
                if cls >= nc:
                    raise ValueError(f"line {k}: class {int(cls)} is out of range for nc={nc}")
                if any(not np.isfinite(v) for v in values[1:]) or min(values[1:]) < 0 or max(values[1:]) > 1:
                    raise ValueError(f"line {k}: coordinates must be normalised to 0-1, got {' '.join(parts[1:5])}")
        lb = np.array(rows, np.float32).reshape(-1, 5)
    except (ValueError, UnicodeDecodeError) as e:
        return None, None, "corrupt", f"{WARN} {im_file}: ignoring corrupt label {lb_file}: {e}"
    message = ""
    if len(lb):
        _, idx = np.unique(lb, axis=0, return_index=True)
        if len(idx) < len(lb):
            message = f"{WARN} {im_file}: {len(lb) - len(idx)} duplicate labels removed"
            lb = lb[np.sort(idx)]
        return lb, size, "found", message
    return lb, size, "empty", ""


def _summary(c: dict) -> str:
    return f"{c['found']} images, {c['missing'] + c['empty']} backgrounds, {c['corrupt']} corrupt"


def _files_hash(files: list[str]) -> str:
    h = hashlib.sha256()
    for f in files:
        try:
            st = os.stat(f)
            h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{f}\0-\n".encode())
    return h.hexdigest()


def cache_path_for(im_files: list[str]) -> Path:
    """``.../labels/train2017.cache`` beside the label folder of the first image."""
    return Path(img2label_path(im_files[0])).parent.with_suffix(".cache")


def _read_cache(path: Path, key: str) -> dict | None:
    try:
        cache = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = isinstance(cache, dict) and cache.get("version") == CACHE_VERSION and cache.get("hash") == key
    return cache if ok else None


def folder_writable(folder: Path) -> bool:
    """Whether we may write in ``folder``: its permission bits allow it, not only our privileges (root)."""
    try:
        mode = folder.stat().st_mode
    except OSError:
        return False
    return os.access(folder, os.W_OK) and bool(mode & stat.S_IWUSR)


def _write_cache(path: Path, cache: dict, prefix: str) -> None:
    if not folder_writable(path.parent):
        LOGGER.warning(f"{prefix}{WARN} Cache directory {path.parent} is not writeable, label cache not saved")
        return
    try:
        fd, tmp = tempfile.mkstemp(prefix=".cache.", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(cache, fh)
        os.replace(tmp, path)
        LOGGER.info(f"{prefix}New cache created: {path}")
    except OSError as e:
        LOGGER.warning(
            f"{prefix}{WARN} Cache directory {path.parent} is not writeable, label cache not saved ({e.strerror})"
        )


def scan_labels(im_files: list[str], nc: int, prefix: str = "", workers: int = 8, use_cache: bool = True) -> LabelScan:
    """Verify every image/label pair (threads), using or rebuilding the label cache; prints the summary line."""
    lb_files = [img2label_path(f) for f in im_files]
    cache_file = cache_path_for(im_files)
    label_dir = Path(lb_files[0]).parent
    no_label_dir = not label_dir.is_dir()  # say so, instead of failing to write a cache into it
    key = _files_hash(im_files + lb_files) + f"|nc={nc}"
    cache = _read_cache(cache_file, key) if use_cache else None
    desc = f"{prefix}Scanning {cache_file.with_suffix('')}..."
    if cache is None:
        results = {}
        counts = {"found": 0, "missing": 0, "empty": 0, "corrupt": 0}
        with ThreadPoolExecutor(max(1, min(workers, 16))) as pool:
            quiet = not LOGGER.isEnabledFor(logging.INFO)  # a silenced package logger hides the bar too
            bar = tqdm(total=len(im_files), desc=desc, bar_format="{l_bar}{bar:10}{r_bar}", disable=quiet)
            checked = pool.map(verify_image_label, im_files, lb_files, [nc] * len(im_files))
            for f, (lb, size, status, msg) in zip(im_files, checked):
                bar.update(1)
                counts[status] += 1
                results[f] = [None if lb is None else lb.tolist(), size, msg]
                bar.set_description(f"{desc} {_summary(counts)}", refresh=False)
            bar.set_description(f"{desc} {_summary(counts)}")  # final counts always shown
            bar.close()
        cache = {"version": CACHE_VERSION, "hash": key, "entries": results, "counts": counts}
        if use_cache and not no_label_dir:
            _write_cache(cache_file, cache, prefix)
    else:
        c = cache["counts"]
        LOGGER.info(f"{desc} {_summary(c)} (from cache)")
    scan = LabelScan([], [], np.zeros((0, 2)))
    shapes = []
    for f in im_files:
        lb, size, msg = cache["entries"][f]
        if msg:
            scan.messages.append(msg)
            LOGGER.warning(f"{prefix}{msg}")
        if lb is None:
            continue
        scan.im_files.append(f)
        scan.labels.append(np.array(lb, np.float32).reshape(-1, 5))
        shapes.append(size)
    scan.shapes = np.array(shapes, np.float64).reshape(-1, 2)
    c = cache["counts"]
    scan.n_found, scan.n_missing, scan.n_empty, scan.n_corrupt = c["found"], c["missing"], c["empty"], c["corrupt"]
    if not scan.im_files:
        from utils.data.dataset_config import DatasetError

        raise DatasetError(f"{prefix}no usable images in {cache_file.with_suffix('')} ({c['corrupt']} corrupt)")
    if no_label_dir:
        LOGGER.warning(
            f"{prefix}{WARN} labels folder {label_dir} does not exist: no labels for the images in "
            f"{Path(im_files[0]).parent} (YOLO labels go in a labels/ folder beside images/)"
        )
    elif scan.n_found == 0:
        LOGGER.warning(f"{prefix}{WARN} no labels found in {cache_file.with_suffix('')}: training needs labels")
    return scan


def write_yolo_labels(det: torch.Tensor, shape0: tuple[int, ...], file: Path, save_conf: bool = False) -> None:
    """Append detections to a YOLO label file, one ``cls x y w h [conf]`` line each (``%g``, xywhn).

    Args:
        det: Tensor[n, 6] (x1, y1, x2, y2, conf, cls) in original-image pixels.
        shape0: the original image's shape (height, width, ...).
    """
    det = det.detach().float().cpu()
    gn = torch.tensor((shape0[1], shape0[0], shape0[1], shape0[0]))
    xywhn = xyxy2xywh(det[:, :4]) / gn
    with open(file, "a", encoding="utf-8") as f:
        for (cls,), xywh, (conf,) in zip(det[:, 5:6].tolist(), xywhn.tolist(), det[:, 4:5].tolist()):
            line = (cls, *xywh, conf) if save_conf else (cls, *xywh)
            f.write(("%g " * len(line)).rstrip() % line + "\n")
