import pytest
import torch

import val
from models.ensemble import Ensemble, EnsembleError
from utils.checkpoints import load_model, read_checkpoint, save_atomic


def test_duplicated_member_changes_nothing(yolov5n_pt, coco128, tmp_path, capsys):
    kw = dict(data="coco128", imgsz=320, batch_size=32, project=tmp_path, noplots=True, workers=2)
    single, _, _ = val.run(weights=[str(yolov5n_pt)], **kw)
    both, _, _ = val.run(weights=[str(yolov5n_pt), str(yolov5n_pt)], verbose=True, **kw)
    out = capsys.readouterr().out
    assert "Ensemble created with" in out and "3734810 parameters" in out  # 2 x 1,867,405 fused
    assert "Ensemble inference per image: yolov5n.pt" in out
    assert (both.mp, both.mr, both.map50, both.map) == (single.mp, single.mr, single.map50, single.map)
    assert single.map50 > 0.3


def test_members_with_different_class_names_are_refused(yolov5n_pt, tmp_path):
    ck = read_checkpoint(yolov5n_pt)
    ck["names"] = {**ck["names"], 0: "pedestrian"}
    other = save_atomic(ck, tmp_path / "renamed.pt")
    with pytest.raises(EnsembleError) as e:
        val.run(data="coco128", weights=[str(yolov5n_pt), str(other)], imgsz=64, project=tmp_path, noplots=True)
    msg = str(e.value)
    assert "\n" not in msg and "disagree on class names" in msg and "'pedestrian'" in msg and "'person'" in msg


@pytest.mark.parametrize("mode", ["mean", "max", "wbf"])
def test_merge_modes_on_identical_members_keep_the_boxes(yolov5n_pt, mode):
    from utils.nms import non_max_suppression

    m = load_model(yolov5n_pt)
    ens = Ensemble([m, m], mode=mode, paths=["a.pt", "b.pt"])
    torch.manual_seed(0)
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        ref = non_max_suppression(m(x), 0.01, 0.6)[0]
        got = non_max_suppression(ens(x), 0.01, 0.6)[0]
    if mode == "wbf":  # fusion of two identical box sets is the same set (WBF keeps per-member NMS boxes)
        assert got.shape[0] == ref.shape[0]
        assert torch.allclose(got[:, :4].sort(0).values, ref[:, :4].sort(0).values, atol=0.05)
    else:
        assert torch.equal(got, ref)


def test_mean_mode_refuses_different_layouts(yolov5n_pt):
    from models.yolo import DetectionModel

    p6 = DetectionModel("yolov5n6.yaml").eval()
    p6.names = load_model(yolov5n_pt).names
    ens = Ensemble([load_model(yolov5n_pt), p6], mode="mean")
    assert float(ens.stride.max()) == 64.0
    with pytest.raises(EnsembleError, match="identical output layouts"), torch.no_grad():
        ens(torch.zeros(1, 3, 128, 128))
    ens.mode = "nms"
    with torch.no_grad():
        assert ens(torch.zeros(1, 3, 128, 128)).shape[1] == 3 * (256 + 64 + 16) + 3 * (256 + 64 + 16 + 4)


def test_duplicated_member_changes_nothing_under_tta(yolov5n_pt):
    """TTA runs inside each member: the tails it drops are the member's own, so 2x the same model = 1x under TTA."""
    from utils.inference.loader import load_inference_model
    from utils.nms import non_max_suppression

    torch.manual_seed(0)
    x = torch.rand(2, 3, 160, 224)
    dets = []
    for weights in ([str(yolov5n_pt)], [str(yolov5n_pt), str(yolov5n_pt)]):
        model = load_inference_model(weights, torch.device("cpu"), augment=True, imgsz=224)
        with torch.no_grad():
            y = model(x)
        dets.append(non_max_suppression(y[0] if isinstance(y, tuple) else y, 0.01, 0.6))
    assert sum(len(d) for d in dets[0]) > 0
    for one, two in zip(*dets):
        assert torch.equal(one, two)
