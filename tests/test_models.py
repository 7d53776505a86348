from pathlib import Path

import pytest
import torch

from models.common import Contract, Conv, Expand, MixConv2d, _mixconv_split
from models.yolo import DetectionModel, model_flops, model_summary, parse_activation, parse_model
from utils.errors import UserError

# Upstream's 23 model YAMLs (REFERENCE.md): folder, parameters (80 classes, unfused), GFLOPs at 640, max stride
ZOO = {
    "yolov3-spp": ("hub", 62998749, 157.5, 32),
    "yolov3-tiny": ("hub", 8852366, 13.3, 32),
    "yolov3": ("hub", 61949149, 156.6, 32),
    "yolov5-bifpn": ("hub", 46825853, 110.4, 32),
    "yolov5-fpn": ("hub", 41117565, 100.3, 32),
    "yolov5-p2": ("hub", 47493372, 126.3, 32),
    "yolov5-p34": ("hub", 5331518, 15.1, 16),
    "yolov5-p6": ("hub", 76770172, 111.8, 64),
    "yolov5-p7": ("hub", 144281723, 116.5, 128),
    "yolov5-panet": ("hub", 46563709, 109.6, 32),
    "yolov5l6": ("hub", 76770172, 111.8, 64),
    "yolov5m6": ("hub", 35731932, 50.3, 64),
    "yolov5n6": ("hub", 3246940, 4.7, 64),
    "yolov5s-LeakyReLU": ("hub", 7235389, 16.6, 32),
    "yolov5s-ghost": ("hub", 3897605, 8.9, 32),
    "yolov5s-transformer": ("hub", 7235645, 16.6, 32),
    "yolov5s6": ("hub", 12626620, 17.0, 64),
    "yolov5x6": ("hub", 140794780, 210.4, 64),
    "yolov5l": ("", 46563709, 109.6, 32),
    "yolov5m": ("", 21190557, 49.2, 32),
    "yolov5n": ("", 1872157, 4.6, 32),
    "yolov5s": ("", 7235389, 16.6, 32),
    "yolov5x": ("", 86749405, 206.3, 32),
}
MODELS = Path(__file__).resolve().parents[1] / "models"


def test_every_shipped_yaml_is_in_the_zoo_table():
    shipped = {p.stem for p in MODELS.glob("*.yaml")} | {p.stem for p in (MODELS / "hub").glob("*.yaml")}
    assert shipped == set(ZOO)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_config_parameters_gflops_stride_and_outputs(name):
    folder, params, gflops, stride = ZOO[name]
    cfg = MODELS / folder / f"{name}.yaml"
    m = DetectionModel(cfg)
    assert sum(p.numel() for p in m.parameters()) == params
    assert model_flops(m, 640) == pytest.approx(gflops, rel=0.01)
    strides = m.stride.tolist()
    assert max(strides) == stride and strides == sorted(strides) and len(strides) == m.detect.nl
    m.eval()
    s = 2 * stride
    with torch.no_grad():
        decoded, raw = m(torch.zeros(1, 3, s, s))
    assert [tuple(r.shape) for r in raw] == [(1, 3, s // int(st), s // int(st), 85) for st in strides]
    assert decoded.shape == (1, 3 * sum((s // int(st)) ** 2 for st in strides), 85)


def test_activation_key_replaces_silu_and_does_not_leak():
    m = DetectionModel("yolov5s-LeakyReLU.yaml", nc=3)
    acts = {type(mod.act) for mod in m.modules() if isinstance(mod, Conv)}
    assert acts == {torch.nn.LeakyReLU} and m.model[0].act.negative_slope == 0.1
    assert isinstance(DetectionModel("yolov5n.yaml", nc=3).model[0].act, torch.nn.SiLU)  # next model: SiLU again


@pytest.mark.parametrize(
    "spec", ["__import__('os').system('echo pwned')", "nn.Linear(3, 3)", "nn.LeakyReLU(x)", "nn.LeakyReLU(0.1"]
)
def test_bad_activation_is_one_line_and_never_evaluated(spec):
    with pytest.raises(UserError, match="activation") as e:
        parse_activation(spec)
    assert "\n" not in str(e.value)


def test_torch_layers_only_from_the_allow_list():
    d = {
        "nc": 1,
        "anchors": [[10, 13, 16, 30, 33, 23]],
        "backbone": [[-1, 1, "Conv", [16, 3, 2]], [-1, 1, "nn.ZeroPad2d", [[0, 1, 0, 1]]]],
        "head": [[-1, 1, "nn.BatchNorm2d", [None]], [-1, 1, "nn.Module", []]],
    }
    with pytest.raises(UserError, match="model layer 3: unknown layer type 'nn.Module'"):
        parse_model(d, ch=[3])
    d["head"].pop()
    layers, _ = parse_model(d, ch=[3])
    assert layers[2].num_features == 16 and layers[1](torch.zeros(1, 16, 4, 4)).shape == (1, 16, 5, 5)


def test_contract_expand_and_mixconv():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).view(2, 3, 4, 6)
    y = Contract(2)(x)
    assert y.shape == (2, 12, 2, 3) and torch.equal(y[:, :3], x[:, :, ::2, ::2]) and torch.equal(Expand(2)(y), x)
    assert _mixconv_split(64, (1, 3, 5), True) == [22, 21, 21]
    assert _mixconv_split(64, (1, 3, 5), False) == [56, 6, 2]  # about equal parameters: 56*1, 6*9, 2*25
    assert MixConv2d(16, 64, (1, 3, 5))(torch.rand(1, 16, 8, 8)).shape == (1, 64, 8, 8)


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


def test_unknown_layer_in_a_yaml_file_names_the_file(tmp_path):
    cfg = tmp_path / "mine.yaml"
    cfg.write_text("nc: 2\nanchors: 3\nbackbone:\n  - [-1, 1, Conv, [16, 3, 2]]\n  - [-1, 1, CBAM, [16]]\nhead: []\n")
    with pytest.raises(UserError, match=r"^mine\.yaml: model layer 1: unknown layer type 'CBAM'; known types: Conv"):
        DetectionModel(cfg)


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


def test_training_conv_hands_dense_gradients_to_its_activation(monkeypatch):
    """After a concat, each branch's gradient is a strided channel slice (channels_last); the CPU activation
    backward is several times slower on it, so Conv makes it dense first. Gradients are unchanged."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from models import common

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.strided = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket is torch.ops.aten.silu_backward:
                self.strided.append(not args[0].is_contiguous(memory_format=torch.channels_last))
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    m = common.C3(8, 16, n=1).train().to(memory_format=torch.channels_last)
    x = torch.randn(2, 8, 12, 12).contiguous(memory_format=torch.channels_last).requires_grad_()

    def grads(record):
        m.zero_grad()
        x.grad = None
        with record:
            m(x).square().sum().backward()
        return [x.grad] + [p.grad for p in m.parameters()]

    dense = grads(rec := Record())
    assert rec.strided == [False] * 5  # cv3, cv1 and cv2 of the bottleneck, cv2, cv1
    monkeypatch.setattr(common._DenseGradient, "apply", lambda t: t)  # the plain path
    plain = grads(rec := Record())
    assert any(rec.strided)  # what the dense path avoids
    for a, b in zip(dense, plain):
        torch.testing.assert_close(a, b)
