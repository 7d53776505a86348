"""Shared fixtures: paths into ../shared (skipped with a reason when absent) and small writable dataset copies."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
COCO128 = SHARED / "datasets" / "coco128"
YOLOV5N = SHARED / "weights" / "yolov5n.pt"


@pytest.fixture(scope="session")
def yolov5n_pt() -> Path:
    if not YOLOV5N.is_file():
        pytest.skip(f"{YOLOV5N} absent: the official checkpoint lives in ../shared beside the checkout")
    return YOLOV5N


@pytest.fixture(scope="session")
def coco128() -> Path:
    if not COCO128.is_dir():
        pytest.skip(f"{COCO128} absent: the dataset lives in ../shared beside the checkout")
    return COCO128


def copy_coco_subset(src: Path, dst: Path, n: int, start: int = 0) -> Path:
    """Copy ``n`` coco128 images (and their labels when present) into a writable YOLO-layout folder."""
    images = sorted((src / "images" / "train2017").glob("*.jpg"))[start : start + n]
    (dst / "images" / "train").mkdir(parents=True, exist_ok=True)
    (dst / "labels" / "train").mkdir(parents=True, exist_ok=True)
    for im in images:
        shutil.copy(im, dst / "images" / "train" / im.name)
        lb = src / "labels" / "train2017" / f"{im.stem}.txt"
        if lb.exists():
            shutil.copy(lb, dst / "labels" / "train" / lb.name)
    return dst


def write_data_yaml(root: Path, names: list[str] | dict, file: Path | None = None) -> Path:
    import yaml

    file = file or root / "data.yaml"
    names = dict(enumerate(names)) if isinstance(names, list) else names
    file.write_text(yaml.safe_dump({"path": str(root), "train": "images/train", "val": "images/train", "names": names}))
    return file


@pytest.fixture()
def coco8(tmp_path: Path, coco128: Path) -> Path:
    """8 coco128 images with labels in a writable temp folder, plus its data YAML (80 COCO names)."""
    import yaml

    root = copy_coco_subset(coco128, tmp_path / "coco8", 8)
    names = yaml.safe_load((REPO / "data" / "coco128.yaml").read_text())["names"]
    return write_data_yaml(root, names)
