import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from utils.train.autoanchor import (
    anchor_metrics,
    check_anchor_order,
    check_anchors,
    kmean_anchors,
    label_wh_at_imgsz,
)

COCO128 = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "coco128"
COCO_ANCHORS = torch.tensor(
    [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]], dtype=torch.float32
).view(3, 3, 2)
STRIDES = torch.tensor([8.0, 16.0, 32.0])


def test_label_wh_at_imgsz_exact_without_jitter():
    shapes = np.array([[640, 480], [100, 200]])
    labels = [np.array([[0, 0.5, 0.5, 0.5, 0.5]]), np.array([[1, 0.5, 0.5, 0.25, 0.5], [2, 0.1, 0.1, 0.1, 0.1]])]
    wh = label_wh_at_imgsz(shapes, labels, 320, augment_scale=None)
    # image 0 -> 320x240, image 1 -> 160x320
    np.testing.assert_allclose(wh, [[160, 120], [40, 160], [16, 32]])


def test_label_wh_at_imgsz_jitter_is_per_image_and_seeded():
    shapes = np.array([[640, 480], [100, 200]])
    labels = [np.array([[0, 0.5, 0.5, 0.5, 0.5]]), np.array([[1, 0.5, 0.5, 0.25, 0.5], [2, 0.1, 0.1, 0.1, 0.1]])]
    exact = label_wh_at_imgsz(shapes, labels, 320, augment_scale=None)
    jit = label_wh_at_imgsz(shapes, labels, 320)
    scale = jit / exact
    assert ((scale > 0.9) & (scale < 1.1)).all()
    assert scale[0, 0] == pytest.approx(scale[0, 1])  # same factor for w and h
    assert scale[1, 0] == pytest.approx(scale[2, 1])  # same factor for every label of an image
    assert scale[0, 0] != pytest.approx(scale[1, 0])
    np.testing.assert_array_equal(jit, label_wh_at_imgsz(shapes, labels, 320))  # rng=None is repeatable
    other = label_wh_at_imgsz(shapes, labels, 320, rng=np.random.default_rng(5))
    assert not np.allclose(other, jit)


def test_label_wh_at_imgsz_empty_images():
    wh = label_wh_at_imgsz(np.array([[10, 10], [20, 20]]), [np.zeros((0, 5)), np.zeros((0, 5))], 640)
    assert wh.shape == (0, 2)


def test_anchor_metrics_known_answers():
    anchors = torch.tensor([[10.0, 10.0], [20.0, 20.0]])
    assert anchor_metrics(anchors, torch.tensor([[10.0, 10.0]]), 4.0) == (1.0, 2.0)  # ratios 1 and 0.5
    assert anchor_metrics(anchors, torch.tensor([[200.0, 200.0]]), 4.0) == (0.0, 0.0)  # 10x the largest
    assert anchor_metrics(anchors, torch.tensor([[10.0, 10.0], [200.0, 200.0]]), 4.0) == (0.5, 1.0)
    # the worst side decides: 10x50 is 5x too tall for the 10x10 anchor and 2.5x for 20x20
    assert anchor_metrics(anchors, torch.tensor([[10.0, 50.0]]), 4.0) == (1.0, 1.0)
    # exactly thr times larger is not a fit (strict >)
    assert anchor_metrics(anchors, torch.tensor([[80.0, 80.0]]), 4.0) == (0.0, 0.0)
    wh10x = COCO_ANCHORS.view(-1, 2).max(0).values * 10
    assert anchor_metrics(COCO_ANCHORS.view(-1, 2), wh10x[None], 4.0)[0] == 0.0


def _clusters(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    centres = np.array([[20.0, 30.0], [80.0, 60.0], [200.0, 300.0]])
    rng = np.random.default_rng(seed)
    wh = np.concatenate([c * rng.normal(1.0, 0.03, size=(100, 2)) for c in centres])
    return centres, wh


def test_kmean_anchors_recovers_clusters_and_is_deterministic():
    centres, wh = _clusters()
    k = kmean_anchors(wh, n=3, img_size=640, gen=50, seed=0, verbose=False)
    assert k.shape == (3, 2) and k.dtype == np.float32
    np.testing.assert_allclose(k, centres, rtol=0.1)  # sorted by area like the centres
    np.testing.assert_array_equal(k, kmean_anchors(wh, n=3, img_size=640, gen=50, seed=0, verbose=False))


def test_kmean_anchors_too_few_labels_falls_back(capsys):
    k = kmean_anchors(np.array([[30.0, 40.0], [100.0, 50.0]]), n=3, img_size=640, gen=20, verbose=False)
    assert "switching strategies from kmeans to random init" in capsys.readouterr().out
    assert k.shape == (3, 2) and (k >= 2.0).all()
    area = k.prod(1)
    assert (np.diff(area) >= 0).all()


def test_kmean_anchors_warns_and_drops_tiny(capsys):
    _, wh = _clusters()
    wh = np.concatenate([wh, [[1.0, 1.0], [2.5, 1.0]]])
    kmean_anchors(wh, n=3, gen=5, verbose=False)
    out = capsys.readouterr().out
    assert "Extremely small objects found: 2 of 302 labels are <3 pixels in size" in out
    assert "on 301 points" in out  # only the 1x1 box (both sides < 2 px) is dropped


def test_check_anchor_order():
    flipped = COCO_ANCHORS.flip(0)
    fixed = check_anchor_order(flipped, STRIDES)
    assert torch.equal(fixed, COCO_ANCHORS)
    assert torch.equal(flipped, COCO_ANCHORS.flip(0))  # input untouched
    assert torch.equal(check_anchor_order(COCO_ANCHORS, STRIDES), COCO_ANCHORS)


def _coco128_wh(imgsz: int) -> np.ndarray:
    shapes, labels = [], []
    for im_path in sorted((COCO128 / "images" / "train2017").glob("*.jpg")):
        h, w = cv2.imread(str(im_path)).shape[:2]
        shapes.append((w, h))
        lb_path = COCO128 / "labels" / "train2017" / f"{im_path.stem}.txt"
        lb = np.loadtxt(lb_path, ndmin=2) if lb_path.exists() else np.zeros((0, 5))
        labels.append(lb.reshape(-1, 5))
    return label_wh_at_imgsz(np.array(shapes), labels, imgsz)


@pytest.mark.skipif(not COCO128.is_dir(), reason=f"coco128 not found at {COCO128}")
def test_check_anchors_coco_defaults_fit_coco128(capsys):
    wh = _coco128_wh(640)
    assert wh.shape == (929, 2)
    assert check_anchors(COCO_ANCHORS, STRIDES, wh, thr=4.0, imgsz=640) is None
    out = capsys.readouterr().out
    m = re.search(r"AutoAnchor: (\d+\.\d\d) anchors/target, (\d\.\d{3}) Best Possible Recall \(BPR\)\. ", out)
    assert m, out
    assert 4.0 < float(m.group(1)) < 4.6 and float(m.group(2)) > 0.98
    assert "Current anchors are a good fit to dataset ✅" in out


def test_check_anchors_improves_poor_fit(capsys):
    wh = np.random.default_rng(1).normal([600.0, 20.0], [20.0, 2.0], size=(200, 2))
    old_bpr, _ = anchor_metrics(COCO_ANCHORS.view(-1, 2), torch.tensor(wh), 4.0)
    assert old_bpr == 0.0
    new = check_anchors(COCO_ANCHORS, STRIDES, wh, thr=4.0, imgsz=640, gen=30)
    out = capsys.readouterr().out
    assert "Anchors are a poor fit to dataset ⚠️, attempting to improve..." in out
    assert "Done ✅" in out
    assert new is not None and new.shape == (3, 3, 2) and new.dtype == torch.float32
    assert anchor_metrics(new.view(-1, 2), torch.tensor(wh), 4.0)[0] == 1.0
    area = new.view(-1, 2).prod(1)
    assert (area.diff() >= 0).all()  # small to large, smallest on the stride-8 level
    assert ((new[..., 0] > 450) & (new[..., 0] < 750) & (new[..., 1] > 14) & (new[..., 1] < 28)).all()
