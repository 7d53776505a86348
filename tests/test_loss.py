import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.train.loss import FocalLoss, YoloLoss, bbox_ciou, scale_loss_gains, smooth_bce_targets

HYP = {"box": 0.05, "obj": 1.0, "cls": 0.5, "cls_pw": 1.0, "obj_pw": 1.0, "anchor_t": 4.0, "fl_gamma": 0.0}
STRIDES = torch.tensor([8.0, 16.0, 32.0])
ANCHORS_PX = torch.tensor(
    [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]], dtype=torch.float32
).view(3, 3, 2)
ANCHORS = ANCHORS_PX / STRIDES.view(-1, 1, 1)  # stride units, as the head stores them
NC = 3
IMG = 64


def make_preds(seed: int = 0, fill: float | None = None, requires_grad: bool = False) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    preds = []
    for s in STRIDES.int().tolist():
        shape = (2, 3, IMG // s, IMG // s, NC + 5)
        p = torch.full(shape, fill) if fill is not None else torch.randn(shape, generator=g)
        preds.append(p.requires_grad_(requires_grad))
    return preds


def ciou_by_hand(b1: tuple, b2: tuple) -> float:
    """CIoU of two xyxy boxes written out from the paper (Zheng et al. 2020), with YOLOv5's eps placement."""
    eps = 1e-7
    iw = max(0.0, min(b1[2], b2[2]) - max(b1[0], b2[0]))
    ih = max(0.0, min(b1[3], b2[3]) - max(b1[1], b2[1]))
    w1, h1, w2, h2 = b1[2] - b1[0], b1[3] - b1[1], b2[2] - b2[0], b2[3] - b2[1]
    inter = iw * ih
    iou = inter / (w1 * h1 + w2 * h2 - inter + eps)
    cw = max(b1[2], b2[2]) - min(b1[0], b2[0])
    ch = max(b1[3], b2[3]) - min(b1[1], b2[1])
    rho2 = ((b1[0] + b1[2] - b2[0] - b2[2]) ** 2 + (b1[1] + b1[3] - b2[1] - b2[3]) ** 2) / 4
    v = 4 / math.pi**2 * (math.atan(w2 / h2) - math.atan(w1 / h1)) ** 2
    alpha = v / (v - iou + 1 + eps)
    return iou - rho2 / (cw**2 + ch**2 + eps) - alpha * v


def xyxy_to_xywh(b: tuple) -> list[float]:
    return [(b[0] + b[2]) / 2, (b[1] + b[3]) / 2, b[2] - b[0], b[3] - b[1]]


@pytest.mark.parametrize(
    "b1, b2, expected",
    [
        ((0, 0, 2, 2), (0, 0, 2, 2), 1.0),  # identical
        ((0, 0, 2, 2), (1, 0, 3, 2), 1 / 3 - 1 / 13),  # same shape, shifted: IoU 2/6, rho^2 1, c^2 9 + 4
        ((0, 0, 2, 2), (0, 0, 4, 2), None),  # different aspect: exercises the v term
        ((0, 0, 1, 1), (3, 3, 4, 5), None),  # disjoint
    ],
)
def test_bbox_ciou_known_answers(b1, b2, expected):
    got = bbox_ciou(torch.tensor([xyxy_to_xywh(b1)]), torch.tensor([xyxy_to_xywh(b2)]))
    ref = ciou_by_hand(b1, b2)
    assert got.shape == (1,)
    assert got.item() == pytest.approx(ref, abs=1e-6)
    if expected is not None:
        assert got.item() == pytest.approx(expected, abs=1e-6)


def test_bbox_ciou_aspect_value():
    # IoU 0.5, rho^2 = 1, c^2 = 20, v = 4/pi^2 (atan 2 - atan 1)^2, alpha = v / (0.5 + v)
    v = 4 / math.pi**2 * (math.atan(2) - math.atan(1)) ** 2
    expected = 0.5 - 1 / 20 - v * v / (0.5 + v)
    got = bbox_ciou(torch.tensor([[1.0, 1.0, 2.0, 2.0]]), torch.tensor([[2.0, 1.0, 4.0, 2.0]]))
    assert got.item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.446752, abs=1e-6)


def test_bbox_ciou_of_a_box_without_size_is_finite():
    """A width/height logit far below zero makes the head's (2 sigmoid)^2 underflow to a box of no size:
    torchvision's CIoU alone gives atan(0/0) = NaN there, which reached every weight through the gradients."""
    pred = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 2.0, 0.0], [1.0, 1.0, 2.0, 2.0]], requires_grad=True)
    target = torch.tensor([[1.0, 1.0, 2.0, 2.0]] * 3)
    got = bbox_ciou(pred, target)
    got.sum().backward()
    assert torch.isfinite(got).all() and torch.isfinite(pred.grad).all()
    # no size: IoU 0, same centre, v = 4/pi^2 (pi/4)^2 = 1/4, alpha = v / (1 + v): CIoU = -v^2/(1+v) = -0.05
    assert got[0].item() == pytest.approx(-0.05, abs=1e-4)
    assert got[2].item() == pytest.approx(1.0, abs=1e-6)  # sizes above the floor are untouched

    logits = make_preds(requires_grad=True)
    with torch.no_grad():
        for p in logits:
            p[..., 2:4] = -200.0  # every predicted box collapses to a point
    loss, _ = YoloLoss(HYP, ANCHORS, STRIDES, NC)(logits, torch.tensor([[1, 2, 0.3, 0.45, 0.25, 0.25]]))
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in logits)


def test_scale_loss_gains():
    out = scale_loss_gains(HYP, nl=4, nc=20, imgsz=320)
    assert out["box"] == pytest.approx(0.05 * 0.75)
    assert out["cls"] == pytest.approx(0.5 * 20 / 80 * 0.75)
    assert out["obj"] == pytest.approx(1.0 * 0.25 * 0.75)
    assert out["anchor_t"] == 4.0
    assert HYP["box"] == 0.05  # input not modified
    same = scale_loss_gains(HYP, nl=3, nc=80, imgsz=640)
    assert (same["box"], same["cls"], same["obj"]) == (0.05, 0.5, 1.0)


def test_empty_targets_only_objectness():
    loss_fn = YoloLoss(HYP, ANCHORS, STRIDES, NC)
    loss, items = loss_fn(make_preds(fill=0.0), torch.zeros((0, 6)))
    assert items.shape == (3,)
    assert items[0].item() == 0.0 and items[2].item() == 0.0
    # Every objectness logit 0 against target 0: BCE = ln 2 per level, weighted 4.0 + 1.0 + 0.4.
    assert items[1].item() == pytest.approx(math.log(2) * 5.4, rel=1e-6)
    assert loss.item() == pytest.approx(2 * math.log(2) * 5.4, rel=1e-6)  # times batch size 2

    _, items = loss_fn(make_preds(seed=1), torch.zeros((0, 6)))
    assert items[0].item() == 0.0 and items[2].item() == 0.0 and items[1].item() > 0


def test_one_target_box_and_cls_positive_with_finite_grads():
    loss_fn = YoloLoss(HYP, ANCHORS, STRIDES, NC)
    preds = make_preds(requires_grad=True)
    targets = torch.tensor([[1, 2, 0.3, 0.45, 0.25, 0.25]])
    loss, items = loss_fn(preds, targets)
    assert items[0] > 0 and items[1] > 0 and items[2] > 0
    assert loss.item() == pytest.approx(2 * items.sum().item(), rel=1e-6)
    loss.backward()
    for p in preds:
        assert torch.isfinite(p.grad).all()
    assert preds[0].grad.abs().sum() > 0


def test_build_targets_three_cells_per_matched_anchor():
    loss_fn = YoloLoss(HYP, ANCHORS, STRIDES, NC)
    preds = make_preds()
    # Centre (2.4, 3.6) on the 8x8 P3 grid: x in the low half of its cell -> left neighbour, y in the high half
    # -> the cell below. 0.8 x 0.8 grid units only matches P3 anchor 0 (1.25 x 1.625); ratio > 4 elsewhere.
    targets = torch.tensor([[1, 2, 0.3, 0.45, 0.1, 0.1]])
    tcls, tbox, indices, anch = loss_fn.build_targets(preds, targets)
    assert [len(i[0]) for i in indices] == [3, 0, 0]
    b, a, gj, gi = indices[0]
    assert b.tolist() == [1, 1, 1] and a.tolist() == [0, 0, 0] and tcls[0].tolist() == [2, 2, 2]
    assert list(zip(gj.tolist(), gi.tolist())) == [(3, 2), (3, 1), (4, 2)]  # own, left, down
    expected_box = torch.tensor([[0.4, 0.6, 0.8, 0.8], [1.4, 0.6, 0.8, 0.8], [0.4, -0.4, 0.8, 0.8]])
    assert torch.allclose(tbox[0], expected_box, atol=1e-5)
    assert torch.allclose(anch[0], ANCHORS[0, 0].expand(3, 2))

    # 16 px box: all 3 P3 anchors and 2 P4 anchors match, 3 cells each.
    targets = torch.tensor([[0, 0, 0.3, 0.45, 0.25, 0.25]])
    _, _, indices, _ = loss_fn.build_targets(preds, targets)
    assert [len(i[0]) for i in indices] == [9, 6, 0]
    assert sorted(indices[1][1].tolist()) == [0, 0, 0, 1, 1, 1]

    # Within one cell of the left border there is no left neighbour: own cell + the one below only.
    targets = torch.tensor([[0, 0, 0.05, 0.45, 0.1, 0.1]])
    _, _, indices, _ = loss_fn.build_targets(preds, targets)
    assert list(zip(indices[0][2].tolist(), indices[0][3].tolist())) == [(3, 0), (4, 0)]


def _logit(x: torch.Tensor) -> torch.Tensor:
    return torch.log(x / (1 - x))


def test_perfect_box_prediction_gives_zero_box_loss():
    loss_fn = YoloLoss(HYP, ANCHORS, STRIDES, NC)
    preds = make_preds(fill=0.0)
    targets = torch.tensor([[1, 2, 0.3, 0.45, 0.1, 0.1]])
    _, tbox, indices, anch = loss_fn.build_targets(preds, targets)
    b, a, gj, gi = indices[0]
    # Invert the head decoding at each assigned cell: xy = 2s - 0.5, wh = (2s)^2 * anchor.
    preds[0][b, a, gj, gi, 0:2] = _logit((tbox[0][:, :2] + 0.5) / 2)
    preds[0][b, a, gj, gi, 2:4] = _logit((tbox[0][:, 2:] / anch[0]).sqrt() / 2)
    _, items = loss_fn(preds, targets)
    assert items[0].item() == pytest.approx(0.0, abs=1e-5)
    # Objectness: three cells with target 1 (CIoU 1) out of 2*3*8*8 on P3, logits all 0 -> still ln 2 each.
    assert items[1].item() == pytest.approx(math.log(2) * 5.4, rel=1e-6)


@pytest.mark.parametrize("eps, cp, cn", [(0.0, 1.0, 0.0), (0.1, 0.95, 0.05)])
def test_label_smoothing_class_targets(eps, cp, cn):
    assert smooth_bce_targets(eps) == pytest.approx((cp, cn))
    hyp = dict(HYP, label_smoothing=eps)
    loss_fn = YoloLoss(hyp, ANCHORS, STRIDES, NC)
    preds = make_preds(fill=2.0)
    _, items = loss_fn(preds, torch.tensor([[1, 2, 0.3, 0.45, 0.1, 0.1]]))
    # BCE(x, t) = softplus(x) - t x, averaged over the nc columns (one cp, the rest cn) of the P3 matches.
    expected = F.softplus(torch.tensor(2.0)).item() - 2.0 * (cp + (NC - 1) * cn) / NC
    assert items[2].item() == pytest.approx(hyp["cls"] * expected, rel=1e-6)


def test_single_class_has_no_class_loss():
    loss_fn = YoloLoss(HYP, ANCHORS, STRIDES, nc=1)
    preds = [torch.randn(2, 3, IMG // s, IMG // s, 6) for s in (8, 16, 32)]
    _, items = loss_fn(preds, torch.tensor([[0, 0, 0.3, 0.45, 0.25, 0.25]]))
    assert items[2].item() == 0.0 and items[0].item() > 0


def test_focal_loss_known_answer():
    fl = FocalLoss(nn.BCEWithLogitsLoss(), gamma=1.5, alpha=0.25)
    # logit 0, target 1: BCE ln 2, p_t 0.5, alpha_t 0.25, (1 - p_t)^1.5
    assert fl(torch.zeros(4), torch.ones(4)).item() == pytest.approx(math.log(2) * 0.25 * 0.5**1.5, rel=1e-6)
    # target 0: alpha_t 0.75
    assert fl(torch.zeros(4), torch.zeros(4)).item() == pytest.approx(math.log(2) * 0.75 * 0.5**1.5, rel=1e-6)
    loss_fn = YoloLoss(dict(HYP, fl_gamma=1.5), ANCHORS, STRIDES, NC)
    _, items = loss_fn(make_preds(fill=0.0), torch.zeros((0, 6)))
    assert items[1].item() == pytest.approx(math.log(2) * 0.75 * 0.5**1.5 * 5.4, rel=1e-6)


def test_autobalance_normalises_to_stride_16():
    loss_fn = YoloLoss(HYP, ANCHORS, STRIDES, NC, autobalance=True)
    loss_fn(make_preds(), torch.tensor([[0, 0, 0.3, 0.45, 0.25, 0.25]]))
    assert loss_fn.balance[1] == 1.0
    assert loss_fn.balance != [4.0, 1.0, 0.4]
    assert YoloLoss(HYP, ANCHORS, STRIDES, NC).balance == [4.0, 1.0, 0.4]
    four = torch.cat((ANCHORS, ANCHORS[-1:] / 2))
    assert YoloLoss(HYP, four, torch.tensor([8.0, 16, 32, 64]), NC).balance == [4.0, 1.0, 0.25, 0.06]


def test_autocast_computes_in_float32():
    loss_fn = YoloLoss(HYP, ANCHORS, STRIDES, NC)
    targets = torch.tensor([[1, 2, 0.3, 0.45, 0.25, 0.25]])
    half = [p.bfloat16() for p in make_preds()]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, items = loss_fn(half, targets)
    ref_loss, ref_items = loss_fn([p.float() for p in half], targets)
    assert loss.dtype == torch.float32 and items.dtype == torch.float32
    assert torch.allclose(items, ref_items, rtol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    loss_fn = YoloLoss(HYP, ANCHORS, STRIDES, NC)
    targets = torch.tensor([[1, 2, 0.3, 0.45, 0.25, 0.25], [0, 1, 0.7, 0.2, 0.5, 0.3]])
    preds = make_preds()
    _, cpu_items = loss_fn(preds, targets)
    _, gpu_items = loss_fn([p.cuda() for p in preds], targets.cuda())
    assert torch.allclose(gpu_items.cpu(), cpu_items, rtol=1e-4)
