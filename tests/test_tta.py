import cv2
import pytest
import torch

from utils.checkpoints import load_model
from utils.data.augment import letterbox
from utils.errors import UsageError
from utils.inference.tta import TTA, scale_image
from utils.nms import non_max_suppression


def _image(coco128):
    im = cv2.imread(str(sorted((coco128 / "images" / "train2017").glob("*.jpg"))[1]))
    im = letterbox(im, 320, auto=False)[0]
    return torch.from_numpy(im.transpose(2, 0, 1)[::-1].copy()).float()[None] / 255


def test_left_right_flip_pass_gives_mirrored_boxes(yolov5n_pt, coco128):
    model = load_model(yolov5n_pt)
    x = _image(coco128)
    with torch.no_grad():
        via_tta = non_max_suppression(TTA(model, scales=[1.0], flips=["lr"], nl=None)(x), 0.25, 0.45)[0]
        flipped = non_max_suppression(model(x.flip(3)), 0.25, 0.45)[0]
    assert len(via_tta) >= 2
    mirrored = flipped.clone()
    mirrored[:, 0], mirrored[:, 2] = 320 - flipped[:, 2], 320 - flipped[:, 0]
    assert torch.allclose(via_tta[:, :4], mirrored[:, :4], atol=1.0)
    assert torch.equal(via_tta[:, 5], flipped[:, 5])


def test_default_tta_maps_boxes_back_and_clips_tails(yolov5n_pt, coco128):
    model = load_model(yolov5n_pt)
    x = _image(coco128)
    tta = TTA(model)
    assert tta.scales == (1.0, 0.83, 0.67) and tta.flips == ("none", "lr", "none")
    with torch.no_grad():
        out, _ = tta(x)
        plain = non_max_suppression(model(x), 0.25, 0.45)[0]
        aug = non_max_suppression(out, 0.25, 0.45)[0]
    n1 = 3 * (40 * 40 + 20 * 20 + 10 * 10)
    n2 = 3 * sum((-(-int(320 * 0.83) // 32) * 32 // s) ** 2 for s in (8, 16, 32))
    n3 = 3 * sum((-(-int(320 * 0.67) // 32) * 32 // s) ** 2 for s in (8, 16, 32))
    assert out.shape[1] == (n1 - n1 // 21) + n2 + (n3 - n3 // 21)
    assert float(aug[:, :4].max()) <= 320.5
    # the most confident object is found at the same place with and without TTA
    from utils.boxes import box_iou

    assert float(box_iou(aug[:1, :4], plain[:1, :4])) > 0.7


def test_scale_image_pads_to_stride():
    y = scale_image(torch.zeros(1, 3, 320, 256), 0.83, 32)
    assert y.shape == (1, 3, 288, 224) and float(y[0, 0, -1, -1]) == pytest.approx(0.447)


def test_bad_tta_flags_are_clear():
    with pytest.raises(UsageError, match="--tta-flips"):
        TTA(lambda x: x, scales=[1, 0.5], flips=["lr"])
    with pytest.raises(UsageError, match="expected none, lr or ud"):
        TTA(lambda x: x, scales=[1], flips=["diag"])
