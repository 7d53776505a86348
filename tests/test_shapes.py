import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from utils.data import shapes
from utils.data.shapes import CLASSES, ensure_shapes_dataset, generate_shapes_dataset, render_image, shape_polygon

TINY = {"n_train": 6, "n_val": 2}
LINE = re.compile(r"^[0-4]( \d\.\d{6}){4}$")


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_files_and_another_seed_differs(tmp_path):
    a = files_of(generate_shapes_dataset(tmp_path / "a", **TINY, seed=3))
    b = files_of(generate_shapes_dataset(tmp_path / "b", **TINY, seed=3))
    c = files_of(generate_shapes_dataset(tmp_path / "c", **TINY, seed=4))
    assert len(a) == 6 * 2 + 2 * 2 + 1  # images + labels + marker
    assert a == b
    assert {k: v for k, v in a.items() if k.endswith(".txt")} != {k: v for k, v in c.items() if k.endswith(".txt")}


def test_worker_processes_write_the_same_files_as_one_process(tmp_path, monkeypatch):
    """Generation runs in forked workers (one per core): each image has its own random stream, so the dataset is
    byte for byte the one a single process writes."""
    import contextlib

    many = files_of(generate_shapes_dataset(tmp_path / "pool", n_train=60, n_val=10, seed=5))
    monkeypatch.setattr(shapes, "_pool", contextlib.nullcontext)
    one = files_of(generate_shapes_dataset(tmp_path / "one", n_train=60, n_val=10, seed=5))
    assert len(many) == 70 * 2 + 1 and many == one


def test_layout_and_label_lines_are_valid(tmp_path):
    root = generate_shapes_dataset(tmp_path / "shapes", **TINY, seed=0)
    for split, n in (("train", 6), ("val", 2)):
        images = sorted((root / "images" / split).glob("*.jpg"))
        assert [p.name for p in images] == [f"{i:05d}.jpg" for i in range(n)]
        for image in images:
            im = cv2.imread(str(image))
            assert im.shape == (256, 256, 3)
            lines = (root / "labels" / split / f"{image.stem}.txt").read_text().splitlines()
            assert 1 <= len(lines) <= 6
            for line in lines:
                assert LINE.match(line), line
                cls, xc, yc, w, h = (float(v) for v in line.split())
                assert cls < len(CLASSES)
                assert all(0 < v <= 1 for v in (xc, yc, w, h))
                assert xc - w / 2 >= 0 and xc + w / 2 <= 1 and yc - h / 2 >= 0 and yc + h / 2 <= 1
    marker = json.loads((root / ".complete").read_text())
    assert marker == {"generator": "shapes", "version": shapes.FORMAT_VERSION, "imgsz": 256, "seed": 0, **TINY}


def test_ensure_reuses_a_matching_dataset_and_regenerates_on_change(tmp_path, capsys):
    root = tmp_path / "shapes"
    ensure_shapes_dataset(root, **TINY)
    assert f"Generating synthetic shapes dataset in {root} ..." in capsys.readouterr().out
    stamps = {p: p.stat().st_mtime_ns for p in (root / ".complete", root / "images" / "train" / "00000.jpg")}
    assert ensure_shapes_dataset(root, **TINY) == root
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert capsys.readouterr().out == ""

    ensure_shapes_dataset(root, **{**TINY, "n_train": 3})
    assert len(list((root / "images" / "train").glob("*.jpg"))) == 3
    assert json.loads((root / ".complete").read_text())["n_train"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["shapes"]  # no temporary or old folders left behind


def test_ensure_refuses_to_overwrite_foreign_data(tmp_path):
    root = tmp_path / "shapes"
    root.mkdir()
    (root / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a generated shapes dataset"):
        ensure_shapes_dataset(root, **TINY)
    assert (root / "mine.txt").read_text() == "keep me"


def test_unknown_parameter_is_rejected(tmp_path):
    with pytest.raises(TypeError, match="n_test"):
        ensure_shapes_dataset(tmp_path / "shapes", n_test=5)


def crash_on_call(n):
    calls = []

    def draw(*args):
        calls.append(1)
        if len(calls) == n:
            raise RuntimeError("simulated crash")
        return original_draw(*args)

    return draw


original_draw = shapes.draw_shape


def test_interrupted_generation_leaves_no_root(tmp_path, monkeypatch):
    monkeypatch.setattr(shapes, "draw_shape", crash_on_call(10))  # several images are already on disk by then
    with pytest.raises(RuntimeError, match="simulated crash"):
        generate_shapes_dataset(tmp_path / "shapes", **TINY)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_regeneration_keeps_the_previous_dataset(tmp_path, monkeypatch):
    root = generate_shapes_dataset(tmp_path / "shapes", **TINY, seed=0)
    before = files_of(root)
    monkeypatch.setattr(shapes, "draw_shape", crash_on_call(10))
    with pytest.raises(RuntimeError, match="simulated crash"):
        ensure_shapes_dataset(root, **TINY, seed=1)
    assert files_of(root) == before
    assert [p.name for p in tmp_path.iterdir()] == ["shapes"]


def test_shape_outlines():
    rng = np.random.default_rng(0)
    circle = shape_polygon(CLASSES.index("circle"), 40, rng)
    np.testing.assert_allclose(np.linalg.norm(circle, axis=1), 20)
    star = shape_polygon(CLASSES.index("star"), 40, rng)
    radii = np.linalg.norm(star, axis=1)
    assert len(star) == 10
    np.testing.assert_allclose(radii[::2], 20)
    assert (radii[1::2] >= 0.38 * 20 - 1e-9).all() and (radii[1::2] <= 0.5 * 20 + 1e-9).all()
    cross = shape_polygon(CLASSES.index("cross"), 40, rng)
    radii = np.sort(np.linalg.norm(cross, axis=1))  # 4 inner corners at a * sqrt(2), 8 arm ends at hypot(20, a)
    a = radii[0] / np.sqrt(2)
    assert len(cross) == 12 and 0.22 * 20 <= a <= 0.36 * 20
    np.testing.assert_allclose(radii[:4], a * np.sqrt(2))
    np.testing.assert_allclose(radii[4:], np.hypot(20, a))
    rect = shape_polygon(CLASSES.index("rectangle"), 40, rng)
    w, h = rect.max(0) - rect.min(0)
    assert max(w, h) == 40 and 16 <= min(w, h) <= 40


def test_render_image_boxes_cover_their_shapes():
    rng = np.random.default_rng(1)
    for _ in range(60):  # enough images for several overlapping pairs
        im, labels = render_image(rng, 256)
        assert im.shape == (256, 256, 3) and 1 <= len(labels) <= 6
        assert (labels[:, 1:] >= 0).all() and (labels[:, 1:] <= 256).all()
        w, h = labels[:, 3] - labels[:, 1], labels[:, 4] - labels[:, 2]
        assert (np.maximum(w, h) >= 0.5 * 14).all() and (np.maximum(w, h) <= 110 + 1e-9).all()
        # boxes cover at most 60% of any earlier box
        for j in range(1, len(labels)):
            prev = labels[:j, 1:]
            iw = (np.minimum(labels[j, 3], prev[:, 2]) - np.maximum(labels[j, 1], prev[:, 0])).clip(0)
            ih = (np.minimum(labels[j, 4], prev[:, 3]) - np.maximum(labels[j, 2], prev[:, 1])).clip(0)
            assert (iw * ih / ((prev[:, 2] - prev[:, 0]) * (prev[:, 3] - prev[:, 1])) <= 0.6).all()


def test_dataset_yaml():
    cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "data" / "shapes.yaml").read_text())
    assert cfg["path"] == "datasets/shapes" and cfg["synthetic"] == "shapes"
    assert cfg["train"] == "images/train" and cfg["val"] == "images/val"
    assert cfg["names"] == dict(enumerate(CLASSES))
