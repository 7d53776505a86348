import os
import shutil
import stat
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from tests.conftest import copy_coco_subset, write_data_yaml
from utils.data.augment import letterbox
from utils.data.dataset_config import DatasetError, img2label_path, list_image_files, load_data_config
from utils.data.datasets import YoloDataset, create_dataloader, rect_batch_shapes
from utils.data.labels import cache_path_for, scan_labels, verify_image_label, write_yolo_labels


@pytest.fixture()
def tiny(tmp_path: Path) -> Path:
    """Synthetic YOLO folder: images/train with 2 good labelled images (nc=2)."""
    root = tmp_path / "tiny"
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    for i in range(2):
        cv2.imwrite(str(root / "images" / "train" / f"ok{i}.jpg"), np.full((60, 80, 3), 100 + i, np.uint8))
        (root / "labels" / "train" / f"ok{i}.txt").write_text("0 0.5 0.5 0.2 0.2\n1 0.3 0.3 0.1 0.1\n")
    return root


def _add(root: Path, name: str, label: str | None, image: bytes | None = None):
    im = root / "images" / "train" / f"{name}.jpg"
    if image is None:
        cv2.imwrite(str(im), np.zeros((50, 50, 3), np.uint8))
    else:
        im.write_bytes(image)
    if label is not None:
        (root / "labels" / "train" / f"{name}.txt").write_text(label)
    return str(im)


def test_each_kind_of_bad_file_is_reported_and_skipped(tiny, capsys):
    good_jpg = (tiny / "images" / "train" / "ok0.jpg").read_bytes()
    bad = {
        "corrupt": _add(tiny, "corrupt", "0 0.5 0.5 0.1 0.1", image=b"not an image at all" * 10),
        "truncated": _add(tiny, "truncated", "0 0.5 0.5 0.1 0.1", image=good_jpg[:-200]),
        "classrange": _add(tiny, "classrange", "5 0.5 0.5 0.1 0.1"),
        "malformed": _add(tiny, "malformed", "0 0.5 0.5\n"),
        "nonnumeric": _add(tiny, "nonnumeric", "0 a b c d\n"),
        "outofrange": _add(tiny, "outofrange", "0 0.5 0.5 1.7 0.1\n"),
    }
    dup = _add(tiny, "dup", "1 0.5 0.5 0.1 0.1\n1 0.5 0.5 0.1 0.1\n")
    background = _add(tiny, "background", None)
    files = list_image_files(str(tiny / "images" / "train"))
    scan = scan_labels(files, nc=2, prefix="train: ")
    captured = capsys.readouterr()
    out = captured.out
    assert "Scanning" in captured.err and "3 images, 1 backgrounds, 6 corrupt" in captured.err
    for f in bad.values():
        assert f not in scan.im_files
        assert sum(f in line for line in out.splitlines()) == 1  # one warning naming the file
    assert "class 5 is out of range for nc=2" in out
    assert "expected 'class x y w h' (5 numbers), got 3 values" in out
    assert "coordinates must be normalised" in out
    assert "runcated" in out
    assert "1 duplicate labels removed" in out
    assert dup in scan.im_files and len(scan.labels[scan.im_files.index(dup)]) == 1
    assert background in scan.im_files and scan.labels[scan.im_files.index(background)].shape == (0, 5)
    assert scan.n_corrupt == 6 and scan.n_missing == 1


def test_polygon_labels_become_boxes(tiny):
    im = _add(tiny, "poly", "1 0.1 0.2 0.5 0.2 0.5 0.6 0.1 0.6\n")
    lb, size, status, _ = verify_image_label(im, img2label_path(im), nc=2)
    assert status == "found" and size == (50, 50)
    assert lb[0].tolist() == pytest.approx([1, 0.3, 0.4, 0.4, 0.4])


def test_cache_is_used_then_invalidated_when_a_file_changes(tiny, capsys):
    files = list_image_files(str(tiny / "images" / "train"))
    scan_labels(files, nc=2)
    assert cache_path_for(files).is_file() and "New cache created" in capsys.readouterr().out
    scan_labels(files, nc=2)
    assert "(from cache)" in capsys.readouterr().out
    lb = tiny / "labels" / "train" / "ok0.txt"
    lb.write_text("7 0.5 0.5 0.2 0.2\n")
    os.utime(lb, ns=(lb.stat().st_atime_ns, lb.stat().st_mtime_ns + 10**9))
    scan = scan_labels(files, nc=2)
    out = capsys.readouterr().out
    assert "(from cache)" not in out and "class 7 is out of range" in out and len(scan.im_files) == 1


def test_read_only_label_folder_costs_only_the_cache(tiny, capsys):
    labels = tiny / "labels"
    labels.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
    try:
        scan = scan_labels(list_image_files(str(tiny / "images" / "train")), nc=2)
        out = capsys.readouterr().out
    finally:
        labels.chmod(0o755)
    assert len(scan.im_files) == 2
    assert "is not writeable, label cache not saved" in out and not (labels / "train.cache").exists()


def test_missing_labels_folder_is_named_not_called_unwriteable(tiny, capsys):
    shutil.rmtree(tiny / "labels")
    scan = scan_labels(list_image_files(str(tiny / "images" / "train")), nc=2)
    out = capsys.readouterr().out
    assert len(scan.im_files) == 2 and scan.n_missing == 2 and scan.n_found == 0
    warnings = [line for line in out.splitlines() if "WARNING" in line]
    assert warnings == [
        f"WARNING ⚠️ labels folder {tiny / 'labels' / 'train'} does not exist: no labels for the images in "
        f"{tiny / 'images' / 'train'} (YOLO labels go in a labels/ folder beside images/)"
    ]
    assert "writeable" not in out and not (tiny / "labels").exists()


def test_data_yaml_resolution_and_errors(tiny, tmp_path):
    data = load_data_config(write_data_yaml(tiny, ["a", "b"]))
    assert data["nc"] == 2 and data["names"] == {0: "a", 1: "b"}
    assert data["val"] == [str(tiny / "images" / "train")]
    with pytest.raises(DatasetError, match="dataset YAML not found"):
        load_data_config(tmp_path / "nope.yaml")
    missing = tmp_path / "missing.yaml"
    missing.write_text(yaml.safe_dump({"path": str(tmp_path / "void"), "val": "images", "names": ["a"]}))
    with pytest.raises(DatasetError, match=r"missing.yaml: dataset not found: val path .*void/images does not exist"):
        load_data_config(missing)
    nonames = tmp_path / "nonames.yaml"
    nonames.write_text(yaml.safe_dump({"path": str(tiny), "val": "images/train"}))
    with pytest.raises(DatasetError, match="missing 'names'"):
        load_data_config(nonames)
    assert load_data_config("coco128")["nc"] == 80  # bare names are looked up in data/


def test_list_files_and_globs(tiny, tmp_path):
    lst = tiny / "train.txt"
    lst.write_text("./images/train/ok0.jpg\n./images/train/ok1.jpg\n")
    assert [Path(f).name for f in list_image_files(str(lst))] == ["ok0.jpg", "ok1.jpg"]
    assert len(list_image_files(str(tiny / "images" / "*" / "ok1.jpg"))) == 1
    assert img2label_path("/d/images/train/x.jpg") == "/d/labels/train/x.txt"


def test_rect_batch_shapes_known_answer():
    wh = np.array([[640, 480], [640, 427], [500, 375], [480, 640]], float)
    wh = wh[(wh[:, 1] / wh[:, 0]).argsort()]
    shapes = rect_batch_shapes(wh, batch_size=2, img_size=640, stride=32, pad=0.5)
    # batch 0: h/w 0.667, 0.75 -> height ceil(0.75*640/32 + 0.5)*32 = 512, width ceil(20 + 0.5)*32 = 672
    # batch 1: h/w 0.75 and 1.333 straddle 1 -> square ceil(20.5)*32 = 672
    assert shapes.tolist() == [[512, 672], [672, 672]]


def test_letterbox_centres_with_grey_padding():
    im = np.zeros((100, 200, 3), np.uint8)
    out, ratio, pad = letterbox(im, 128, auto=False)
    assert out.shape == (128, 128, 3) and ratio == (0.64, 0.64) and pad == (0.0, 32.0)
    assert out[0, 0].tolist() == [114, 114, 114] and out[64, 64].tolist() == [0, 0, 0]


def test_val_dataset_labels_follow_the_letterbox(coco128, tmp_path):
    root = copy_coco_subset(coco128, tmp_path / "c", 4)
    loader, ds = create_dataloader(str(root / "images" / "train"), 80, 320, 4, 32, pad=0.5, rect=True, workers=0)
    ims, targets, paths, shapes = next(iter(loader))
    assert ims.dtype == torch.uint8 and ims.shape[0] == 4 and ims.shape[2] % 32 == 0 and ims.shape[3] % 32 == 0
    assert targets.shape[1] == 6 and float(targets[:, 2:].max()) <= 1.0
    assert set(targets[:, 0].long().tolist()) <= {0, 1, 2, 3}
    (h0, w0), ((gh, gw), pad) = shapes[0]
    assert max(h0, w0) * gh == pytest.approx(320, abs=1)


def test_single_cls_and_bad_dataset_in_yoloDataset(tiny):
    _add(tiny, "bad", "9 0.5 0.5 0.1 0.1")
    ds = YoloDataset(str(tiny / "images" / "train"), nc=2, img_size=64, single_cls=True)
    assert len(ds) == 2 and all((lb[:, 0] == 0).all() for lb in ds.labels)
    shutil.rmtree(tiny / "images" / "train")
    (tiny / "images" / "train").mkdir()
    with pytest.raises(DatasetError, match="no images found"):
        YoloDataset(str(tiny / "images" / "train"), nc=2)


def test_write_yolo_labels_known_answer(tmp_path):
    """xyxy pixels of a 100x200 (h, w) image -> ``cls x y w h [conf]`` normalised, appended, ``%g`` numbers."""
    det = torch.tensor([[10.0, 20.0, 30.0, 60.0, 0.9, 2.0], [0.0, 0.0, 200.0, 100.0, 0.25, 0.0]])
    file = tmp_path / "a.txt"
    write_yolo_labels(det, (100, 200, 3), file, save_conf=True)
    assert file.read_text().splitlines() == ["2 0.1 0.4 0.1 0.4 0.9", "0 0.5 0.5 1 1 0.25"]
    write_yolo_labels(det[:1].half(), (100, 200), file)  # appends; fp16 detections are written as fp32
    assert file.read_text().splitlines()[-1] == "2 0.1 0.4 0.1 0.4"
