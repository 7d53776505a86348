"""torchvision backbones as YAML layers: layout, build, a training step, validation, checkpoints, fusing, weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

import models.backbones as backbones
import train
from models.backbones import BackboneError, Take, TorchvisionBackbone, feature_layout, pretrained_file
from models.yolo import DetectionModel
from utils.checkpoints import build_from_checkpoint, checkpoint_dict, read_checkpoint, save_atomic
from utils.train.loss import YoloLoss

REPO = Path(__file__).resolve().parents[1]
BACKBONE_YAMLS = sorted((REPO / "models" / "backbones").glob("*.yaml"))
HYP = {"box": 0.05, "obj": 1.0, "cls": 0.5, "cls_pw": 1.0, "obj_pw": 1.0, "anchor_t": 4.0, "fl_gamma": 0.0}
NC = 5


@pytest.fixture(scope="module")
def tiny_shapes(tmp_path_factory) -> Path:
    """4 train + 4 val synthetic 64 px images and their data YAML."""
    from utils.data.shapes import generate_shapes_dataset

    root = generate_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", n_train=4, n_val=4, imgsz=64)
    names = dict(enumerate(["circle", "rectangle", "triangle", "star", "cross"]))
    data = {"path": str(root), "train": "images/train", "val": "images/val", "names": names}
    (root / "data.yaml").write_text(yaml.safe_dump(data))
    return root / "data.yaml"


@pytest.fixture()
def no_downloads(monkeypatch, tmp_path):
    """An empty torch hub cache and any download attempt fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(backbones, "_reported_missing", set())
    return tmp_path / "torch_home"


@pytest.mark.parametrize(
    "arch, nodes, channels",
    [  # torchvision's stage layouts (the papers' tables): last block at strides 8, 16, 32
        ("mobilenet_v3_small", ("features.3", "features.8", "features.12"), (24, 48, 576)),
        ("mobilenet_v3_large", ("features.6", "features.12", "features.16"), (40, 112, 960)),
        ("mobilenet_v2", ("features.6", "features.13", "features.18"), (32, 96, 1280)),
        ("efficientnet_b0", ("features.3", "features.5", "features.8"), (40, 112, 1280)),
        ("resnet18", ("layer2", "layer3", "layer4"), (128, 256, 512)),
        ("regnet_y_400mf", ("trunk_output.block2", "trunk_output.block3", "trunk_output.block4"), (104, 208, 440)),
    ],
)
def test_feature_layout(arch, nodes, channels):
    assert feature_layout(arch) == (nodes, channels)


def test_yamls_shipped():
    names = {p.stem for p in BACKBONE_YAMLS}
    assert {"mobilenet_v3_small", "mobilenet_v3_large", "resnet18", "mobilenet_v2", "efficientnet_b0"} <= names


@pytest.mark.parametrize("cfg", BACKBONE_YAMLS, ids=lambda p: p.stem)
def test_yaml_builds_trains_a_step_and_validates(cfg, tiny_shapes, no_downloads):
    from utils.data.dataset_config import load_data_config
    from utils.data.datasets import create_dataloader
    from utils.evaluate import EvalOptions, evaluate

    torch.manual_seed(0)
    model = DetectionModel(cfg, nc=NC)
    assert model.stride.tolist() == [8.0, 16.0, 32.0]
    backbone = model.model[0]
    assert isinstance(backbone, TorchvisionBackbone) and not backbone.pretrained
    assert [type(m) for m in model.model[1:4]] == [Take] * 3
    assert model.model[-1].m[0].in_channels == 64  # YOLOv5n's P3 head width: 256 * 0.25

    model.train()
    preds = model(torch.rand(2, 3, 64, 64))
    assert [tuple(p.shape) for p in preds] == [(2, 3, 8, 8, 10), (2, 3, 4, 4, 10), (2, 3, 2, 2, 10)]
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.4, 0.3], [1, 3, 0.3, 0.6, 0.2, 0.2]])
    loss, items = YoloLoss(HYP, model.detect.anchors, model.stride, NC)(preds, targets)
    first = next(backbone.parameters())
    before = first.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss.backward()
    assert loss.item() > 0 and (items > 0).all()
    assert first.grad is not None and first.grad.abs().sum() > 0  # gradients reach the torchvision layers
    opt.step()
    assert not torch.equal(first.detach(), before)

    model.eval()
    x = torch.rand(1, 3, 64, 64)
    expected = model(x)[0]
    model.fuse(verbose=False)  # what val.py runs: every BatchNorm folded, same outputs
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    torch.testing.assert_close(model(x)[0], expected, rtol=1e-4, atol=1e-3)

    data = load_data_config(str(tiny_shapes))
    loader, _ = create_dataloader(data["val"], NC, 64, 4, 32, pad=0.5, rect=True, workers=0)
    with torch.inference_mode():
        result, _ = evaluate(model, loader, data["names"], torch.device("cpu"), EvalOptions(plots=False))
    assert result.seen == 4 and result.instances > 0 and 0.0 <= result.map <= result.map50 <= 1.0


def test_checkpoint_round_trip(tmp_path, no_downloads):
    torch.manual_seed(0)
    model = DetectionModel("mobilenet_v3_small.yaml", nc=NC)
    model.train()
    for _ in range(2):  # move the BN running statistics away from their initial values
        model(torch.rand(2, 3, 64, 64))
    with torch.no_grad():
        for p in model.model[0].parameters():
            p.add_(0.01 * torch.randn_like(p))
    keys = list(model.state_dict())
    assert "model.0.body.features.0.0.weight" in keys and "model.0.body.features.12.1.running_var" in keys
    assert not any("classifier" in k or k.endswith(".mean") or k.endswith(".std") for k in keys)

    path = save_atomic(checkpoint_dict(model), tmp_path / "bb.pt")
    ckpt = read_checkpoint(path)
    assert ckpt["model_yaml"]["backbone"][0] == [-1, 1, "TorchvisionBackbone", ["mobilenet_v3_small"]]
    rebuilt = build_from_checkpoint(ckpt, path).eval()
    assert list(rebuilt.state_dict()) == keys
    x = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(rebuilt(x)[0], model.eval()(x)[0], rtol=0, atol=0)


def test_pretrained_weights_only_from_disk(no_downloads, capsys):
    import torchvision

    arch = "mobilenet_v3_small"
    missing = TorchvisionBackbone(3, arch)
    assert not missing.pretrained
    out = capsys.readouterr().out
    assert f"pretrained {arch} weights not found at {pretrained_file(arch)}" in out and "from scratch" in out
    TorchvisionBackbone(3, arch)
    assert "not found" not in capsys.readouterr().out  # said once per architecture

    file = pretrained_file(arch)
    assert file.parent == no_downloads / "hub" / "checkpoints" and file.name == "mobilenet_v3_small-047dcff4.pth"
    torch.manual_seed(1)
    state = torchvision.models.mobilenet_v3_small().state_dict()
    file.parent.mkdir(parents=True)
    torch.save(state, file)
    loaded = TorchvisionBackbone(3, arch)
    assert loaded.pretrained
    for k, v in loaded.body.state_dict().items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0)
    assert not TorchvisionBackbone(3, arch, pretrained=False).pretrained


def test_backbone_keeps_torchvision_bn_copies_keep_mode_and_rebuilds_skip_imagenet(no_downloads, monkeypatch):
    import copy

    model = DetectionModel("resnet18.yaml", nc=NC).eval()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    in_body = {id(m) for m in model.model[0].modules()}
    assert {m.eps for m in bns if id(m) in in_body} == {1e-5}  # what ResNet18's ImageNet statistics assume
    assert {(m.eps, m.momentum) for m in bns if id(m) not in in_body} == {(1e-3, 0.03)}  # YOLOv5 neck and head
    assert not any(m.training for m in copy.deepcopy(model).modules())  # fx graph modules come back in train mode

    reads = []
    monkeypatch.setattr(backbones, "load_pretrained", lambda net, arch: reads.append(arch) or False)
    build_from_checkpoint(checkpoint_dict(model))
    assert reads == []  # the checkpoint supplies the backbone tensors
    DetectionModel("resnet18.yaml", nc=NC)
    assert reads == ["resnet18"]


def test_input_is_imagenet_normalised():
    """The backbone sees (x - mean) / std: a mean-grey image enters the first conv as zeros."""
    m = TorchvisionBackbone(3, "mobilenet_v3_small", pretrained=False).eval()
    seen = {}

    def keep_input(module, inputs, output):
        seen["x"] = inputs[0]

    m.body.get_submodule("features.0.0").register_forward_hook(keep_input)
    grey = torch.tensor(backbones.IMAGENET_MEAN).view(1, 3, 1, 1).expand(1, 3, 32, 32)
    m(grey)
    assert seen["x"].abs().max() < 1e-6


def _tiny_yaml(layers: list) -> dict:
    head = [[-1, 1, "Conv", [64, 1, 1]], [[-1, -1, -1], 1, "Detect", ["nc", "anchors"]]]
    return {"nc": 2, "anchors": [[10, 13], [30, 61], [116, 90]], "backbone": layers, "head": head}


def test_yaml_errors():
    with pytest.raises(BackboneError, match="unknown torchvision model 'resnet9'"):
        DetectionModel(_tiny_yaml([[-1, 1, "TorchvisionBackbone", ["resnet9"]], [0, 1, "Take", [2]]]))
    with pytest.raises(BackboneError, match="index 3 out of range for layer 0 with 3 outputs"):
        DetectionModel(_tiny_yaml([[-1, 1, "TorchvisionBackbone", ["resnet18"]], [0, 1, "Take", [3]]]))
    with pytest.raises(BackboneError, match="single multi-output layer"):
        DetectionModel(_tiny_yaml([[-1, 1, "Conv", [16, 3, 2]], [0, 1, "Take", [0]]]))
    with pytest.raises(BackboneError, match="no stride 8/16/32 stages"):
        DetectionModel(_tiny_yaml([[-1, 1, "TorchvisionBackbone", ["squeezenet1_0"]], [0, 1, "Take", [2]]]))
    # other layers still refuse unknown names: only TorchvisionBackbone takes plain strings
    with pytest.raises(ValueError, match="unknown argument 'mobilenet_v2'"):
        DetectionModel(_tiny_yaml([[-1, 1, "Conv", ["mobilenet_v2", 3, 2]]]))


def test_train_run_one_epoch(tiny_shapes, tmp_path, no_downloads):
    save_dir = train.run(
        data=str(tiny_shapes), cfg="mobilenet_v3_small.yaml", weights="", epochs=1, imgsz=64, batch_size=4,
        project=str(tmp_path), name="bb", exist_ok=True, noplots=True, noautoanchor=True, device="cpu", workers=0,
    )  # fmt: skip
    rows = (Path(save_dir) / "results.csv").read_text().splitlines()
    assert len(rows) == 2 and "metrics/mAP_0.5:0.95" in rows[0]
    model = build_from_checkpoint(read_checkpoint(Path(save_dir) / "weights" / "best.pt"))
    assert isinstance(model.model[0], TorchvisionBackbone) and model.yaml["nc"] == NC
