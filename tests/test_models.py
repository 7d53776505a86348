from pathlib import Path

import pytest
import torch

from models.yolo import DetectionModel, model_flops, model_summary, parse_model

CFGS = sorted((Path(__file__).resolve().parents[1] / "models").glob("yolov5*.yaml"))
# Published parameter counts of the unfused models (80 classes)
PARAMS = {"yolov5n": 1872157, "yolov5s": 7235389, "yolov5m": 21190557, "yolov5l": 46563709, "yolov5x": 86749405}


@pytest.mark.parametrize("cfg", CFGS, ids=[c.stem for c in CFGS])
def test_every_yaml_builds_with_right_output_shapes(cfg):
    m = DetectionModel(cfg, nc=3).eval()
    p6 = cfg.stem.endswith("6")
    assert m.stride.tolist() == ([8.0, 16.0, 32.0, 64.0] if p6 else [8.0, 16.0, 32.0])
    s = 128 if p6 else 64
    with torch.no_grad():
        decoded, raw = m(torch.zeros(1, 3, s, s))
    cells = sum((s // int(st)) ** 2 for st in m.stride)
    assert decoded.shape == (1, 3 * cells, 8)
    assert [tuple(r.shape) for r in raw] == [(1, 3, s // int(st), s // int(st), 8) for st in m.stride]
    if cfg.stem in PARAMS:
        assert sum(p.numel() for p in DetectionModel(cfg).parameters()) == PARAMS[cfg.stem]


def test_names_match_official_state_dict_keys():
    keys = DetectionModel("yolov5n.yaml").state_dict().keys()
    assert {"model.0.conv.weight", "model.24.m.0.weight", "model.24.anchors", "model.2.m.0.cv1.bn.running_var"} <= set(
        keys
    )


def test_summary_line_and_fused_flops():
    m = DetectionModel("yolov5n.yaml")
    line = model_summary(m)
    assert line.startswith("YOLOv5n summary: 270 layers, 1872157 parameters, 1872157 gradients, 4.")
    fused = m.eval().fuse(verbose=False)
    # published: 4.5 and 16.5 GFLOPs at 640
    assert model_flops(fused, 640) == pytest.approx(4.5, rel=0.03)
    assert model_flops(DetectionModel("yolov5s.yaml").eval().fuse(verbose=False), 640) == pytest.approx(16.5, rel=0.03)


def test_fusion_keeps_outputs():
    torch.manual_seed(0)
    m = DetectionModel("yolov5n.yaml").eval()
    for mod in m.modules():  # non-trivial BN statistics
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.1, 0.1)
            mod.running_var.uniform_(0.5, 1.5)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        a = m(x)[0]
        b = m.fuse(verbose=False)(x)[0]
    assert torch.allclose(a, b, atol=1e-3)


def test_unknown_layer_lists_known_ones():
    d = {
        "nc": 1,
        "anchors": [[10, 13, 16, 30, 33, 23]],
        "backbone": [[-1, 1, "Conv", [16, 3, 2]]],
        "head": [[-1, 1, "NotALayer", [1]]],
    }
    with pytest.raises(ValueError, match=r"unknown layer type 'NotALayer'; known types: Conv, Bottleneck"):
        parse_model(d, ch=[3])


def test_yaml_strings_are_never_evaluated():
    d = {
        "nc": 1,
        "anchors": [[10, 13, 16, 30, 33, 23]],
        "backbone": [[-1, 1, "Conv", ["__import__('os').system('echo pwned')", 3, 2]]],
        "head": [],
    }
    with pytest.raises(ValueError, match="unknown argument"):
        parse_model(d, ch=[3])


def test_missing_cfg_is_clear():
    with pytest.raises(FileNotFoundError, match="yolov9z.yaml"):
        DetectionModel("yolov9z.yaml")
