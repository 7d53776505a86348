import numpy as np
import pytest
import torch

from utils.boxes import box_iou, clip_boxes, scale_boxes_to_original, xywh2xyxy, xywhn2xyxy, xyxy2xywh, xyxy2xywhn


def test_conversions_round_trip_known_values():
    xyxy = torch.tensor([[10.0, 20.0, 50.0, 100.0]])
    xywh = xyxy2xywh(xyxy)
    assert xywh.tolist() == [[30.0, 60.0, 40.0, 80.0]]
    assert torch.equal(xywh2xyxy(xywh), xyxy)
    n = xyxy2xywhn(xyxy, w=100, h=200)
    assert n[0].tolist() == pytest.approx([0.3, 0.3, 0.4, 0.4])
    assert np.allclose(xywhn2xyxy(n, w=100, h=200, padw=5, padh=7).numpy(), [[15, 27, 55, 107]])


def test_numpy_inputs_stay_numpy_and_are_not_modified():
    a = np.array([[0.0, 0.0, 4.0, 2.0]])
    b = xyxy2xywh(a)
    assert isinstance(b, np.ndarray) and b.tolist() == [[2.0, 1.0, 4.0, 2.0]]
    assert a.tolist() == [[0.0, 0.0, 4.0, 2.0]]


def test_iou_hand_computed():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[5.0, 0.0, 15.0, 10.0], [0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    iou = box_iou(a, b)
    assert iou.shape == (1, 3)
    assert iou[0].tolist() == pytest.approx([50 / 150, 1.0, 0.0])


def test_clip_and_scale_back_to_original():
    boxes = torch.tensor([[-5.0, 10.0, 700.0, 500.0]])
    assert clip_boxes(boxes.clone(), (480, 640)).tolist() == [[0.0, 10.0, 640.0, 480.0]]
    # 1280x960 image letterboxed into 640x640: gain 0.5, 80 px padding top and bottom
    b = torch.tensor([[100.0, 180.0, 200.0, 280.0]])
    scale_boxes_to_original((640, 640), b, (960, 1280))
    assert b.tolist() == [[200.0, 200.0, 400.0, 400.0]]
    b = torch.tensor([[100.0, 180.0, 200.0, 280.0]])
    scale_boxes_to_original((640, 640), b, (960, 1280), ratio_pad=((0.5, 0.5), (0.0, 80.0)))
    assert b.tolist() == [[200.0, 200.0, 400.0, 400.0]]


def test_iou_equals_torchvision_including_touching_empty_and_integer_boxes():
    """``box_iou`` is torchvision's formula written out (val.py then never imports torchvision's package)."""
    from torchvision.ops import box_iou as tv_box_iou

    gen = torch.Generator().manual_seed(0)
    a = torch.rand(60, 4, generator=gen) * 100
    b = torch.rand(40, 4, generator=gen) * 100
    a[:, 2:] += a[:, :2]
    b[:, 2:] += b[:, :2]
    a[:5, 2:] = a[:5, :2]  # zero-area boxes
    b[:3] = a[10:13]  # identical boxes
    b[3] = torch.tensor([a[20, 2], a[20, 1], a[20, 2] + 5, a[20, 3]])  # touching edge
    torch.testing.assert_close(box_iou(a, b), tv_box_iou(a, b), rtol=0, atol=0, equal_nan=True)
    ints = (a * 10).long()
    torch.testing.assert_close(box_iou(ints, ints[:7]), tv_box_iou(ints, ints[:7]), rtol=0, atol=0, equal_nan=True)
