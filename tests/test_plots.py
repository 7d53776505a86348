"""Tests for utils/plots.py: known pixels, known crops, known image sizes, exact confusion normalisation."""

from __future__ import annotations

import os
import sys

import cv2
import numpy as np
import pytest
import torch

from utils.plots import (
    Annotator,
    colors,
    normalize_confusion,
    plot_confusion_matrix,
    plot_evolve,
    plot_images,
    plot_labels,
    plot_mc_curve,
    plot_pr_curve,
    plot_results,
    plot_training_curves,
    read_csv_columns,
    save_one_box,
)

RESULTS_HEADER = [
    "epoch", "train/box_loss", "train/obj_loss", "train/cls_loss", "metrics/precision", "metrics/recall",
    "metrics/mAP_0.5", "metrics/mAP_0.5:0.95", "val/box_loss", "val/obj_loss", "val/cls_loss",
    "x/lr0", "x/lr1", "x/lr2",
]  # fmt: skip


def _write_csv(path, header, rows):
    # YOLOv5 pads its CSV headers and values with spaces; the readers must strip them.
    lines = [",".join(f"{h:>20s}" for h in header)] + [",".join(f"{v:>20.5g}" for v in r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def _read(path):
    assert path.exists() and path.stat().st_size > 0
    im = cv2.imread(str(path))
    assert im is not None
    return im


def test_colors_cycle_and_order():
    palette = [colors(i) for i in range(20)]
    assert len(set(palette)) == 20
    assert colors(20) == colors(0) and colors(43) == colors(3)
    assert colors(5, bgr=True) == colors(5)[::-1]
    assert all(isinstance(v, int) and 0 <= v <= 255 for v in colors(7))


def test_annotator_draws_border_only_and_in_place():
    im = np.zeros((200, 300, 3), np.uint8)
    ann = Annotator(im)
    assert ann.lw == 2  # max(round((200 + 300 + 3) / 2 * 0.003), 2)
    ann.box_label((50, 60, 150, 160), "", color=(0, 0, 255))
    out = ann.result()
    assert np.shares_memory(out, im)  # contiguous input is drawn on without a copy
    assert tuple(out[60, 100]) == (0, 0, 255)  # top border
    assert tuple(out[110, 50]) == (0, 0, 255)  # left border
    assert tuple(out[110, 100]) == (0, 0, 0)  # box interior is not filled
    assert tuple(out[195, 290]) == (0, 0, 0)  # far away


def test_annotator_label_above_or_inside():
    above = Annotator(np.zeros((200, 300, 3), np.uint8))
    above.box_label((50, 60, 150, 160), "cat", color=(0, 255, 0))
    label_px = (above.result()[40:58, 50:80, 1] > 0).sum()
    assert label_px > 50  # label background sits above the box
    assert (above.result()[63:80, 53:80] == 0).all()  # not inside

    top = Annotator(np.zeros((200, 300, 3), np.uint8))
    top.box_label((50, 0, 150, 160), "cat", color=(0, 255, 0))
    assert (top.result()[3:12, 53:70, 1] > 0).sum() > 50  # at the top edge the label goes inside


def test_save_one_box_crop_and_no_overwrite(tmp_path):
    rng = np.random.default_rng(0)
    im = rng.integers(0, 255, (100, 200, 3), dtype=np.uint8)
    file = tmp_path / "crops" / "person" / "a.jpg"
    crop = save_one_box((10, 20, 50, 60), im, file=file, gain=1.0, pad=0)
    np.testing.assert_array_equal(crop, im[20:60, 10:50])
    assert file.exists()
    # Default gain 1.02 and pad 10: centre (30, 40), side 40 * 1.02 + 10 = 50.8 -> [4.6, 55.4] x [14.6, 65.4].
    crop = save_one_box(torch.tensor([10.0, 20.0, 50.0, 60.0]), im, file=file, bgr=False)
    np.testing.assert_array_equal(crop, im[14:65, 4:55, ::-1])
    assert (tmp_path / "crops" / "person" / "a2.jpg").exists()
    assert cv2.imread(str(file)).shape == (40, 40, 3)
    # Square crops take the long side; clipping keeps them inside the image.
    crop = save_one_box((180, 0, 200, 60), im, file=file, gain=1.0, pad=0, square=True)
    assert crop.shape == (60, 40, 3)  # x from 160 to 220 clipped to 200; y from 0 to 60
    assert (tmp_path / "crops" / "person" / "a3.jpg").exists()


def test_normalize_confusion_exact():
    m = np.array([[2, 0, 0], [1, 0, 0], [1, 4, 0]])
    np.testing.assert_array_equal(normalize_confusion(m), [[0.5, 0, 0], [0.25, 0, 0], [0.25, 1, 0]])
    big = np.random.default_rng(1).integers(1, 50, (81, 81))
    np.testing.assert_allclose(normalize_confusion(big).sum(0), np.ones(81), atol=1e-12)


def test_plot_confusion_matrix(tmp_path):
    m = np.array([[5, 1, 0, 1], [0, 3, 0, 0], [1, 0, 4, 2], [0, 1, 0, 0]])
    im = _read(plot_confusion_matrix(m, ["a", "b", "c"], tmp_path / "confusion_matrix.png"))
    assert im.shape == (2250, 3000, 3)  # 12 x 9 in at 250 dpi
    many = np.random.default_rng(2).integers(0, 5, (41, 41))  # no cell text above 30 classes
    assert _read(plot_confusion_matrix(many, [str(i) for i in range(40)], tmp_path / "cm40.png", normalize=False)).size


def test_pr_and_mc_curves(tmp_path):
    px = np.linspace(0, 1, 1000)
    pr = np.stack([1 - px**2, 1 - px, np.clip(1.2 - px, 0, 1)])
    ap = np.array([[0.66, 0.4], [0.5, 0.3], [0.7, 0.5]])
    names = {0: "person", 3: "car", 7: "truck"}
    im = _read(plot_pr_curve(px, pr, ap, tmp_path / "PR_curve.png", names, np.array([0, 3, 7])))
    assert im.shape == (1500, 2250, 3)  # 9 x 6 in at 250 dpi
    f1 = _read(plot_mc_curve(px, pr, tmp_path / "F1_curve.png", names, np.array([0, 3, 7]), ylabel="F1"))
    assert f1.shape == (1500, 2250, 3)
    # More than 20 classes: grey lines, no per-class legend.
    y = np.tile(1 - px, (25, 1))
    assert _read(plot_pr_curve(px, y, np.full((25, 10), 0.5), tmp_path / "pr25.png", None, np.arange(25))).size
    assert _read(plot_mc_curve(px, y, tmp_path / "P_curve.png", None, np.arange(25), ylabel="Precision")).size


def test_plot_images_grid_and_boxes(tmp_path):
    images = np.zeros((2, 3, 64, 80), np.uint8)
    targets = np.array(
        [
            [0, 0, 0.5, 0.5, 0.5, 0.5],  # normalised: xyxy (20, 16, 60, 48) in cell 0
            [1, 1, 40, 32, 40, 32],  # pixels: the same box in cell 1, 80 px to the right
        ]
    )
    path = plot_images(torch.from_numpy(images), torch.from_numpy(targets), ["a.jpg", "b.jpg"], tmp_path / "b.jpg")
    im = _read(path)
    assert path.name == "b.jpg" and im.shape == (128, 160, 3)  # 2 images -> 2 x 2 grid of 64 x 80
    left0, left1 = im[30:34, 19:22].reshape(-1, 3).max(0), im[30:34, 99:102].reshape(-1, 3).max(0)
    assert left0.argmax() == np.argmax(colors(0, bgr=True)) and left0.max() > 60  # class 0 colour on the edge
    assert left1.argmax() == np.argmax(colors(1, bgr=True)) and left1.max() > 60
    assert im[28:36, 36:44].max() < 30  # inside the box: the black image
    assert im[70:120, 10:150].min() > 230  # empty bottom row stays white


def test_plot_images_resizes_and_filters_low_conf(tmp_path):
    images = torch.zeros(2, 3, 64, 80)  # float 0-1
    preds = torch.tensor([[0, 2, 0.5, 0.5, 0.5, 0.5, 0.1]])  # conf 0.1 <= 0.25: not drawn
    im = _read(plot_images(images, preds, None, tmp_path / "p.jpg", names=["a", "b", "c"], max_size=100))
    assert im.shape == (80, 100, 3)  # scale 100 / 2 / 80 = 0.625 -> cells of 40 x 50
    assert im[3:37, 3:47].max() < 30  # no box in cell 0
    preds[0, 6] = 0.9
    im = _read(plot_images(images, preds, None, tmp_path / "p.jpg", names=["a", "b", "c"], max_size=100))
    assert im[3:37, 3:47].max() > 60


def test_plot_labels(tmp_path):
    rng = np.random.default_rng(3)
    labels = np.concatenate([rng.integers(0, 3, (60, 1)), rng.uniform(0.1, 0.5, (60, 4))], 1)
    path = plot_labels(labels, ["cat", "dog", "bird"], tmp_path)
    assert path == tmp_path / "labels.png"
    assert _read(path).shape == (1600, 1600, 3)  # 8 x 8 in at 200 dpi
    assert _read(plot_labels(np.zeros((0, 5)), None, tmp_path / "empty")).shape == (1600, 1600, 3)


def test_read_csv_columns_strips_headers(tmp_path):
    path = _write_csv(tmp_path / "results.csv", RESULTS_HEADER, [[0] + [0.5] * 13, [1] + [0.25] * 13])
    cols = read_csv_columns(path)
    assert list(cols) == RESULTS_HEADER
    np.testing.assert_array_equal(cols["metrics/mAP_0.5"], [0.5, 0.25])


@pytest.mark.parametrize("rows", [1, 3])
def test_plot_results(tmp_path, rows):
    data = [[e] + list(np.linspace(0.1, 1.3, 13) / (e + 1)) for e in range(rows)]
    (tmp_path / "exp").mkdir()
    path = plot_results(_write_csv(tmp_path / "exp" / "results.csv", RESULTS_HEADER, data))
    assert path == tmp_path / "exp" / "results.png"
    assert _read(path).shape == (1200, 2400, 3)  # 12 x 6 in at 200 dpi


def test_plot_evolve(tmp_path):
    header = RESULTS_HEADER[4:11] + ["lr0", "momentum", "fl_gamma"]
    rows = [[0.5, 0.4, m50, m50 * 0.6, 0.05, 0.03, 0.01, lr, 0.9, 0.0] for m50, lr in [(0.3, 0.01), (0.5, 0.02)]]
    path = plot_evolve(_write_csv(tmp_path / "evolve.csv", header, rows + [[0.5, 0.4, 0.4, 0.2] + [0.1] * 6]))
    assert path == tmp_path / "evolve.png"
    assert _read(path).shape == (960, 960, 3)  # 3 hyps -> 2 x 2 grid of 2.4 in at 200 dpi


def test_plot_training_curves(tmp_path):
    runs = {}
    for k, name in enumerate(["yolov5n", "yolov5s"]):
        (tmp_path / name).mkdir()
        rows = [[e] + [0.1 * (k + 1) * (e + 1)] * 13 for e in range(4)]
        runs[name] = _write_csv(tmp_path / name / "results.csv", RESULTS_HEADER, rows)
    im = _read(plot_training_curves(runs, tmp_path / "compare.png"))
    assert im.shape == (800, 2000, 3)  # 2 columns x 5 in wide, 4 in high, at 200 dpi
    with pytest.raises(KeyError, match="nope"):
        plot_training_curves(runs, tmp_path / "bad.png", columns=("nope",))


def test_no_pyplot_figures_left_open(tmp_path):
    import matplotlib.pyplot as plt

    before = set(plt.get_fignums())
    px = np.linspace(0, 1, 1000)
    plot_mc_curve(px, np.tile(px, (2, 1)), tmp_path / "R_curve.png", ["a", "b"], np.arange(2), ylabel="Recall")
    plot_confusion_matrix(np.eye(3), ["a", "b"], tmp_path / "cm.png")
    assert set(plt.get_fignums()) == before


def test_draw_in_parallel_writes_both_sides_and_redraws_what_a_failed_child_did_not(tmp_path, capsys):
    """val.py's confusion matrix and label mosaics draw in a forked process, the curves here."""
    from utils.plots import draw_in_parallel

    parent = os.getpid()
    where = tmp_path / "where.txt"

    def child_side():
        where.write_text("child" if os.getpid() != parent else "parent")

    def here_side():
        (tmp_path / "here.txt").write_text(str(os.getpid()))

    draw_in_parallel([child_side], [here_side])
    forks = sys.platform == "linux" and (os.cpu_count() or 1) > 1
    assert where.read_text() == ("child" if forks else "parent")
    assert (tmp_path / "here.txt").read_text() == str(parent)

    def dies_in_child():
        if os.getpid() != parent:
            os._exit(3)
        where.write_text("redrawn")

    draw_in_parallel([dies_in_child], [here_side])
    assert where.read_text() == "redrawn"
    if forks:
        assert "exited with code 3" in capsys.readouterr().out
