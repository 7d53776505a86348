import subprocess
import sys

import pytest
import torch

from utils.files import REPO_ROOT
from utils.nms import non_max_suppression


def _cand(boxes_xywh, obj, cls_probs):
    """One image's decoded candidates Tensor[1, N, 5 + nc]."""
    return torch.cat((torch.tensor(boxes_xywh), torch.tensor(obj)[:, None], torch.tensor(cls_probs)), 1)[None]


def test_suppresses_overlap_of_same_class_only():
    p = _cand(
        [[50, 50, 20, 20], [51, 50, 20, 20], [51, 50, 20, 20]], [0.9, 0.8, 0.7], [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]
    )
    out = non_max_suppression(p, 0.25, 0.45)[0]
    assert out.shape == (2, 6)
    assert out[:, 5].tolist() == [0.0, 1.0]
    assert out[:, 4].tolist() == pytest.approx([0.9, 0.7])
    assert out[0, :4].tolist() == [40.0, 40.0, 60.0, 60.0]
    agnostic = non_max_suppression(p, 0.25, 0.45, agnostic=True)[0]
    assert agnostic.shape[0] == 1


def test_conf_threshold_uses_obj_times_class():
    p = _cand([[50, 50, 20, 20]], [0.5], [[0.4, 0.6]])  # scores 0.2 and 0.3
    assert non_max_suppression(p, 0.25, 0.45)[0][:, 5].tolist() == [1.0]
    multi = non_max_suppression(p, 0.1, 0.45, multi_label=True)[0]
    assert sorted(multi[:, 5].tolist()) == [0.0, 1.0]


def test_class_filter_and_max_det():
    boxes = [[10 + 30 * i, 10, 20, 20] for i in range(10)]
    p = _cand(boxes, [0.9] * 10, [[1.0, 0.0] if i % 2 else [0.0, 1.0] for i in range(10)])
    assert non_max_suppression(p, 0.25, 0.45, classes=[1])[0].shape[0] == 5
    assert non_max_suppression(p, 0.25, 0.45, max_det=3)[0].shape[0] == 3


def test_every_image_is_processed_even_with_many_candidates():
    torch.manual_seed(0)
    n = 20000
    xy = torch.rand(4, n, 2) * 600
    wh = torch.rand(4, n, 2) * 100 + 5
    p = torch.cat((xy, wh, torch.rand(4, n, 1), torch.rand(4, n, 80)), 2)
    out = non_max_suppression(p, 0.001, 0.6, multi_label=True)
    assert len(out) == 4 and all(o.shape[0] == 300 for o in out)


@pytest.mark.parametrize("agnostic", [False, True])
@pytest.mark.parametrize("spread, size", [(600.0, 60.0), (40.0, 4.0)])  # scattered / a pile (the prefix must grow)
def test_prefix_nms_keeps_what_full_nms_keeps(agnostic, spread, size):
    """NMS runs on the most confident prefix first and widens it only while it keeps fewer than max_det: the
    detections must be those of one torchvision NMS over all candidates."""
    from torchvision.ops import batched_nms

    gen = torch.Generator().manual_seed(1)
    n = 6000
    xy = torch.rand(1, n, 2, generator=gen) * spread
    wh = torch.rand(1, n, 2, generator=gen) * size + (5 if size > 10 else 40)
    p = torch.cat((xy, wh, torch.rand(1, n, 1, generator=gen), torch.rand(1, n, 3, generator=gen)), 2)
    out = non_max_suppression(p, 0.001, 0.5, multi_label=True, agnostic=agnostic)[0]
    x = p[0]
    scores = x[:, 5:] * x[:, 4:5]
    i, j = (scores > 0.001).nonzero().T
    box = torch.cat((x[:, :2] - x[:, 2:4] / 2, x[:, :2] + x[:, 2:4] / 2), 1)[i]
    conf, cls = scores[i, j], j.float()
    keep = batched_nms(box, conf, torch.zeros_like(cls) if agnostic else cls, 0.5)[:300]
    assert out.shape[0] == keep.numel()
    assert out[:, 4].tolist() == conf[keep].tolist()
    assert torch.equal(out[:, :4], box[keep]) and torch.equal(out[:, 5], cls[keep])


def test_bad_thresholds_are_clear_errors():
    with pytest.raises(ValueError, match="--conf-thres"):
        non_max_suppression(torch.zeros(1, 1, 7), 1.5, 0.45)


def test_fp16_predictions_give_fp32_detections_for_every_image():
    """CUDA --half: detections stayed fp16 (0.5-4 px steps once scaled to large originals) while empty images got
    fp32 zeros."""
    gen = torch.Generator().manual_seed(0)
    pred = torch.rand(2, 200, 8, generator=gen)
    pred[..., :2] *= 3000  # centres across a 3000-px input: fp16 steps are 2 px there
    pred[..., 2:4] = pred[..., 2:4] * 200 + 10
    pred[1, :, 4] = 0.0  # the second image has no candidate
    half = pred.half()
    out = non_max_suppression(half, 0.3, 0.5)
    assert [o.dtype for o in out] == [torch.float32, torch.float32] and len(out[0]) > 10 and len(out[1]) == 0
    torch.testing.assert_close(out[0], non_max_suppression(half.float(), 0.3, 0.5)[0], atol=0, rtol=0)


def test_val_and_detect_use_torchvisions_kernel_without_importing_its_package():
    """``import torchvision`` costs 2.1 s (its ops import torch._dynamo); the NMS kernel is loaded from its library,
    and the result is that of ``torchvision.ops.nms``."""
    code = (
        "import sys, torch; import val, detect; from utils.nms import _nms_kernel; nms = _nms_kernel(); "
        "assert 'torchvision' not in sys.modules, 'torchvision imported'; "
        "b = torch.rand(500, 4, generator=torch.Generator().manual_seed(0)) * 100; b[:, 2:] += b[:, :2]; "
        "s = torch.rand(500, generator=torch.Generator().manual_seed(1)); keep = nms(b, s, 0.5); "
        "import torchvision.ops; assert torch.equal(keep, torchvision.ops.nms(b, s, 0.5)); print(len(keep))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert 50 < int(out.stdout.split()[-1]) < 500


def test_classes_stay_apart_when_boxes_reach_past_the_top_left_corner():
    """Shifting class c by c x (max coordinate + 1) lets a box with negative coordinates land on the previous
    class's boxes; the shift is one span of all coordinates."""
    p = _cand([[650, 650, 100, 100], [-49.5, -49.5, 101, 101]], [0.9, 0.8], [[1.0, 0.0], [0.0, 1.0]])
    out = non_max_suppression(p, 0.25, 0.45)[0]
    assert out.shape[0] == 2 and sorted(out[:, 5].tolist()) == [0.0, 1.0]


def test_large_prefixes_run_per_class_with_the_single_call_result():
    """From PER_CLASS_NMS candidates NMS runs class by class (an untrained model's validation: 1.9 -> 0.9 s): the
    kept indices, their order included, are those of the single offset call, also with tied (bf16-like) scores, and
    a prefix below the threshold (the single-call path) keeps exactly the survivors among it."""
    from utils import nms as nms_module

    gen = torch.Generator().manual_seed(3)
    n = 5000
    xy = torch.rand(n, 2, generator=gen) * 200
    box = torch.cat((xy, xy + torch.rand(n, 2, generator=gen) * 40 + 4), 1)
    conf = (torch.rand(n, generator=gen) * 64).floor() / 64  # 64 distinct values: many ties
    cls = torch.randint(0, 5, (n, 1), generator=gen).float()
    order = conf.argsort(descending=True)
    det = torch.cat((box, conf[:, None], cls), 1)[order]
    assert n >= nms_module.PER_CLASS_NMS
    per_class = nms_module._class_aware_nms(det, 0.5, agnostic=False)
    single = nms_module._class_aware_nms(det[: nms_module.PER_CLASS_NMS - 1], 0.5, agnostic=False)
    assert 500 < per_class.numel() < n
    assert torch.equal(per_class[: single.numel()], single)  # greedy NMS on a prefix keeps the prefix's survivors
    reference = nms_module._nms_kernel()(det[:, :4].double() + det[:, 5:6].double() * 1024, det[:, 4].double(), 0.5)
    assert torch.equal(per_class, reference)
