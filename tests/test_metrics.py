"""Known-answer tests for utils/metrics.py; every expected number is worked out by hand in the comments."""

import numpy as np
import pytest
import torch

from utils.metrics import APResult, ConfusionMatrix, ap_per_class, compute_ap, fitness, match_predictions, smooth

IOUV = torch.linspace(0.5, 0.95, 10)


def _det(*rows: tuple) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 6)


def _lab(*rows: tuple) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 5)


# ---------------------------------------------------------------- compute_ap
# The 101-point grid samples recall 1.0 where the padded curve has precision 0, so the last trapezoid
# contributes half of 0.01 * p: a perfect detector scores 0.995, as upstream's does.
@pytest.mark.parametrize(
    "recall, precision, expected",
    [
        ([0.5, 1.0], [1.0, 1.0], 0.995),  # perfect: 0.99 * 1 + 0.01 * (1 + 0) / 2
        ([1.0, 1.0], [1.0, 0.5], 0.995),  # TP then FP, 1 label: the envelope stays at 1 up to recall 1
        ([0.0, 1.0], [0.0, 0.5], 0.4975),  # FP then TP, 1 label: 0.5 everywhere but the last point -> 0.5 - 0.0025
        # TP, FP, TP with 2 labels: envelope 1 on [0, 0.5), 2/3 on [0.5, 1), 0 at 1
        # -> 0.01 * (50 * 1 + 50 * 2/3 - (1 + 0) / 2) = 0.828333...
        ([0.5, 0.5, 1.0], [1.0, 0.5, 2 / 3], 0.01 * (50 + 50 * 2 / 3 - 0.5)),
        ([0.0], [0.0], 0.0),  # only a false positive
    ],
)
def test_compute_ap_known_curves(recall, precision, expected):
    ap, mpre, mrec = compute_ap(np.array(recall), np.array(precision))
    assert ap == pytest.approx(expected, abs=1e-12)
    assert len(mpre) == len(mrec) == len(recall) + 2
    assert mrec[0] == 0 and mrec[-1] == 1 and mpre[-1] == 0
    assert np.all(np.diff(mpre) <= 0)  # monotone envelope


def test_compute_ap_envelope_values():
    _, mpre, _ = compute_ap(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3]))
    np.testing.assert_allclose(mpre, [1, 1, 2 / 3, 2 / 3, 0])


def test_smooth_spike_and_flat_curve():  # the plots' use of it
    y = np.array([0, 0, 0, 3, 0, 0, 0], dtype=float)
    np.testing.assert_allclose(smooth(y, 0.3), [0, 0, 1, 1, 1, 0, 0])  # window 3
    flat = np.full(1000, 0.4)
    np.testing.assert_allclose(smooth(flat, 0.05), flat)


def test_smooth_box_filter():
    y = np.zeros(20)
    y[10] = 1.0
    s = smooth(y, 0.1)  # width round(20 * 0.2) // 2 + 1 = 3
    assert s.shape == y.shape
    np.testing.assert_allclose(s[9:12], [1 / 3] * 3)
    assert s.sum() == pytest.approx(1.0)
    # width round(5 * 0.8) // 2 + 1 = 3; edges padded with copies: (0 + 0 + 1) / 3 and (3 + 4 + 4) / 3
    np.testing.assert_allclose(smooth(np.arange(5.0), 0.4)[[0, -1]], [1 / 3, 11 / 3])


# ---------------------------------------------------------------- match_predictions
def test_match_iou_boundary():
    labels = _lab((0, 0, 0, 10, 10))
    dets = _det((0, 0, 10, 5, 0.9, 0))  # IoU exactly 50 / 100 = 0.5
    correct = match_predictions(dets, labels, IOUV)
    assert correct.dtype == torch.bool and correct.shape == (1, 10)
    assert correct[0].tolist() == [True] + [False] * 9  # >= 0.5 counts, 0.55 does not


def test_match_class_mismatch():
    labels = _lab((1, 0, 0, 10, 10))
    dets = _det((0, 0, 10, 10, 0.9, 0))  # perfect box, wrong class
    assert not match_predictions(dets, labels, IOUV).any()


def test_match_two_detections_one_label_lowest_index_wins():
    labels = _lab((0, 0, 0, 10, 10))
    # det 0 (more confident) has IoU 0.84, det 1 IoU 1.0: at each threshold det 0 wins while it qualifies
    dets = _det((0, 0, 10, 8.4, 0.9, 0), (0, 0, 10, 10, 0.8, 0))
    correct = match_predictions(dets, labels, IOUV)
    assert correct[0].tolist() == [True] * 7 + [False] * 3  # thresholds 0.50 .. 0.80
    assert correct[1].tolist() == [False] * 7 + [True] * 3  # thresholds 0.85 .. 0.95, det 0 no longer qualifies


def test_match_one_detection_two_labels_takes_highest_iou():
    # label A [0,0,10,6], label B [0,1,10,10]; det 0 covers both (IoU 0.6 with A, 0.9 with B) and must take B,
    # leaving A to det 1 (IoU 50/60 with A, 40/100 = 0.4 with B)
    labels = _lab((0, 0, 0, 10, 6), (0, 0, 1, 10, 10))
    dets = _det((0, 0, 10, 10, 0.9, 0), (0, 0, 10, 5, 0.8, 0))
    correct = match_predictions(dets, labels, torch.tensor([0.5, 0.75]))
    assert correct.tolist() == [[True, True], [True, True]]


def test_match_no_fallback_to_second_best_label():
    # Upstream quirk kept for parity: det 1's best label (A) goes to det 0, and det 1 does not fall back to B
    # even though IoU(det 1, B) = 85 / 115 = 0.74 clears 0.5.
    labels = _lab((0, 0, 0, 10, 10), (0, 0, 2, 10, 12))
    dets = _det((0, 0, 10, 10, 0.9, 0), (0, 0.5, 10, 10.5, 0.8, 0))  # det 1: IoU 95/105 with A
    assert match_predictions(dets, labels, torch.tensor([0.5])).tolist() == [[True], [False]]


def test_match_empty_inputs():
    assert match_predictions(_det(), _lab((0, 0, 0, 1, 1)), IOUV).shape == (0, 10)
    out = match_predictions(_det((0, 0, 1, 1, 0.5, 0), (0, 0, 2, 2, 0.4, 0)), _lab(), IOUV)
    assert out.shape == (2, 10) and not out.any()


def _match_reference(dets: torch.Tensor, labels: torch.Tensor, thr: float) -> list[bool]:
    """The resolution rule spelled out with loops: best-IoU label per detection, then lowest index per label."""
    iou = box_iou_loop(labels[:, 1:], dets[:, :4])
    best = {}  # detection -> (iou, label)
    for d in range(len(dets)):
        for m in range(len(labels)):
            if iou[m][d] >= thr and labels[m, 0] == dets[d, 5] and iou[m][d] > best.get(d, (-1, -1))[0]:
                best[d] = (iou[m][d], m)
    winners = {}
    for d in sorted(best):
        winners.setdefault(best[d][1], d)
    return [d in winners.values() for d in range(len(dets))]


def box_iou_loop(a: torch.Tensor, b: torch.Tensor) -> list[list[float]]:
    def one(p, q):
        iw = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
        ih = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
        inter = iw * ih
        return inter / ((p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter)

    return [[one(p.tolist(), q.tolist()) for q in b] for p in a]


def test_match_agrees_with_loop_reference():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        n, m = int(torch.randint(1, 12, (1,), generator=g)), int(torch.randint(1, 8, (1,), generator=g))
        xy = torch.rand(n + m, 2, generator=g) * 8  # crowded, so labels are contested
        wh = torch.rand(n + m, 2, generator=g) * 10 + 10
        boxes = torch.cat((xy, xy + wh), 1)
        cls = torch.randint(0, 2, (n + m, 1), generator=g).float()
        conf = torch.rand(n, 1, generator=g).sort(0, descending=True).values
        dets, labels = torch.cat((boxes[:n], conf, cls[:n]), 1), torch.cat((cls[n:], boxes[n:]), 1)
        correct = match_predictions(dets, labels, torch.tensor([0.3, 0.5]))
        for j, thr in enumerate((0.3, 0.5)):
            assert correct[:, j].tolist() == _match_reference(dets, labels, thr)


# ---------------------------------------------------------------- ap_per_class
def _synthetic() -> APResult:
    # class 0, 2 labels: conf 0.9 TP, 0.8 FP, 0.7 TP -> AP50 0.828333 (see compute_ap case); at the second
    # threshold TP, FP, FP -> recall 0.5 then flat: envelope 1 on [0, 0.5], then falls linearly from 1/3 at
    # recall 0.5 to 0 at recall 1.
    # class 1, 1 label: conf 0.6 TP at IoU 0.5, FP at the second threshold -> AP 0.995 and 0.0.
    # class 2 has no labels: its prediction (conf 0.95) is ignored, as upstream ignores it.
    tp = np.array([[1, 1], [0, 0], [1, 0], [1, 0], [0, 0]], dtype=bool)
    conf = np.array([0.9, 0.8, 0.7, 0.6, 0.95])[[1, 2, 0, 3, 4]]  # shuffled: ap_per_class must sort
    tp = tp[[1, 2, 0, 3, 4]]
    pred_cls = np.array([0, 0, 0, 1, 2])[[1, 2, 0, 3, 4]]
    return ap_per_class(tp, conf, pred_cls, np.array([1, 0, 0]))


def test_ap_per_class_synthetic_map50():
    res = _synthetic()
    ap0_50 = 0.01 * (50 + 50 * 2 / 3 - 0.5)
    assert res.classes.tolist() == [0, 1]
    np.testing.assert_allclose(res.ap[:, 0], [ap0_50, 0.995])
    # class 0 at threshold 2: the padded recall repeats 0.5 and np.interp takes the last repeat (1/3) there, so
    # 0.01 * (50 * 1 + sum over k=50..100 of (2/3)(1 - k/100) - (1 + 0) / 2) = 0.01 * (50 + 8.5 - 0.5) = 0.58
    np.testing.assert_allclose(res.ap[:, 1], [0.58, 0.0])
    assert res.map50 == pytest.approx((ap0_50 + 0.995) / 2)  # 0.911667
    assert res.map == pytest.approx(res.ap.mean())


def test_ap_per_class_synthetic_operating_point():
    res = _synthetic()
    # Mean F1 peaks (0.9) on the plateau conf < 0.6 where class 0 has P 2/3, R 1 and class 1 has P 1, R 1.
    np.testing.assert_allclose(res.p, [2 / 3, 1.0], atol=1e-9)
    np.testing.assert_allclose(res.r, [1.0, 1.0], atol=1e-9)
    np.testing.assert_allclose(res.f1, [0.8, 1.0], atol=1e-9)
    assert res.tp.tolist() == [2, 1] and res.fp.tolist() == [1, 0]  # fp = round(2 / (2/3) - 2) = 1
    assert res.mean_results() == pytest.approx((5 / 6, 1.0, res.map50, res.map))
    assert res.class_result(1) == pytest.approx((1.0, 1.0, 0.995, 0.4975))
    for curve in (res.pr_curve, res.p_curve, res.r_curve, res.f1_curve):
        assert curve.shape == (2, 1000)
    assert res.px.shape == (1000,)
    # recall curve of class 0 as a function of confidence: 0 above 0.9, 0.5 on [0.8, 0.9], 1 below 0.7
    assert res.r_curve[0, np.searchsorted(res.px, 0.95)] == 0
    assert res.r_curve[0, np.searchsorted(res.px, 0.85)] == pytest.approx(0.5)
    assert res.r_curve[0, 100] == pytest.approx(1.0)
    maps = res.class_maps(4)
    np.testing.assert_allclose(maps, [res.ap[0].mean(), res.ap[1].mean(), res.map, res.map])


def test_ap_per_class_single_perfect_detection():
    res = ap_per_class(np.ones((1, 10), bool), np.array([0.9]), np.array([3]), np.array([3]))
    assert res.classes.tolist() == [3]
    np.testing.assert_allclose(res.ap, 0.995)
    assert (res.p[0], res.r[0], res.tp[0], res.fp[0]) == pytest.approx((1, 1, 1, 0))


def test_ap_per_class_class_without_predictions_is_zero():
    res = ap_per_class(np.ones((1, 1), bool), np.array([0.9]), np.array([0]), np.array([0, 1]))
    np.testing.assert_allclose(res.ap[:, 0], [0.995, 0.0])
    assert res.map50 == pytest.approx(0.4975)
    assert not res.pr_curve[1].any()


def test_ap_per_class_no_labels():
    res = ap_per_class(np.ones((2, 10), bool), np.array([0.9, 0.5]), np.array([0, 1]), np.array([]))
    assert res.ap.shape == (0, 10)
    assert res.mean_results() == (0.0, 0.0, 0.0, 0.0)


# ---------------------------------------------------------------- fitness
def test_fitness():
    x = np.array([[0.5, 0.5, 0.6, 0.4], [0.9, 0.9, 1.0, 1.0]])
    np.testing.assert_allclose(fitness(x), [0.06 + 0.36, 1.0])
    assert float(fitness(np.array([1.0, 1.0, 0.5, 0.3, 7.0]))) == pytest.approx(0.05 + 0.27)  # extra columns ignored


# ---------------------------------------------------------------- ConfusionMatrix
def test_confusion_matrix_counts():
    cm = ConfusionMatrix(nc=3)
    labels = _lab((0, 0, 0, 10, 10), (1, 20, 20, 30, 30), (2, 50, 50, 60, 60))
    dets = _det(
        (0, 0, 10, 10, 0.9, 0),  # correct class 0
        (20, 20, 30, 30, 0.8, 2),  # label 1 predicted as class 2
        (100, 100, 110, 110, 0.7, 1),  # background false positive of class 1
        (50, 50, 60, 60, 0.1, 2),  # below conf 0.25: dropped, so label 2 is missed
    )
    cm.process_batch(dets, labels)
    expected = np.zeros((4, 4))
    expected[0, 0] = expected[2, 1] = expected[3, 2] = expected[1, 3] = 1
    np.testing.assert_array_equal(cm.matrix, expected)
    tp, fp = cm.tp_fp()
    assert tp.tolist() == [1, 0, 0] and fp.tolist() == [0, 1, 1]


def test_confusion_matrix_none_detections():
    cm = ConfusionMatrix(nc=2)
    cm.process_batch(None, _lab((1, 0, 0, 1, 1), (1, 2, 2, 3, 3), (0, 5, 5, 6, 6)))
    cm.process_batch(None, torch.tensor([0.0]))  # a bare class vector is accepted too
    assert cm.matrix[2].tolist() == [2, 2, 0] and cm.matrix[:2].sum() == 0


def test_confusion_matrix_label_keeps_highest_iou_detection():
    # Unlike match_predictions, the matrix re-ranks by IoU before the per-label step: det 1 (IoU 1.0) wins over
    # the more confident det 0 (IoU 0.6), which becomes a background false positive of its class.
    cm = ConfusionMatrix(nc=2)
    cm.process_batch(_det((0, 0, 10, 6, 0.9, 1), (0, 0, 10, 10, 0.8, 0)), _lab((0, 0, 0, 10, 10)))
    expected = np.zeros((3, 3))
    expected[0, 0] = expected[1, 2] = 1
    np.testing.assert_array_equal(cm.matrix, expected)


def test_confusion_matrix_iou_threshold_is_strict():
    cm = ConfusionMatrix(nc=1, iou_thres=0.5)
    cm.process_batch(_det((0, 0, 10, 5, 0.9, 0)), _lab((0, 0, 0, 10, 10)))  # IoU exactly 0.5: not a match
    np.testing.assert_array_equal(cm.matrix, [[0, 1], [1, 0]])
