"""Run folders."""

from __future__ import annotations

from pathlib import Path

from utils.log import LOGGER

REPO_ROOT = Path(__file__).resolve().parents[1]  # the checkout: data/, models/, runs/ are found from here


def increment_path(path: str | Path, exist_ok: bool = False, mkdir: bool = False) -> Path:
    """``runs/val/exp`` -> the first free of ``exp``, ``exp2``, ``exp3``... (unchanged with ``exist_ok``)."""
    path = Path(path)
    if path.exists() and not exist_ok:
        base, suffix = (path.with_suffix(""), path.suffix) if path.is_file() else (path, "")
        n = 2
        while Path(f"{base}{n}{suffix}").exists():
            n += 1
        path = Path(f"{base}{n}{suffix}")
    if mkdir:
        path.mkdir(parents=True, exist_ok=True)
    return path


def append_csv_row(path: Path, keys: tuple[str, ...] | list[str], values) -> None:
    """Append one row of numbers to a YOLOv5-style CSV (``%20s`` / ``%20.5g`` columns), with a header when new.

    ``results.csv`` and ``evolve.csv`` are written this way; ``utils.plots.read_csv_columns`` reads them back.
    """
    path = Path(path)
    values = tuple(values)
    head = "" if path.exists() else ("%20s," * len(keys) % tuple(keys)).rstrip(",") + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(head + ("%20.5g," * len(values) % values).rstrip(",") + "\n")


def print_labels_saved(labels_dir: Path) -> None:
    """``3 labels saved to runs/detect/exp/labels`` after --save-txt (val.py and detect.py)."""
    n = len(list(labels_dir.glob("*.txt")))
    LOGGER.info(f"{n} labels saved to {labels_dir}")
