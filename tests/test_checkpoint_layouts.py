"""Every checkpoint layout a YOLOv5 user may bring, built here as upstream's pickles would be (classes pickled under
upstream's module/class names, numpy values, path objects, mid-training keys), loaded and run through detect.py
against a plain-model reference; and every kind of file we refuse, each one line and exit 2."""

from __future__ import annotations

import argparse
import copy
import pathlib
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import detect
from models.common import Conv
from models.yolo import DetectionModel, load_model_yaml
from utils.checkpoints import CheckpointError, load_model, read_checkpoint, save_checkpoint
from utils.options import run_cli


@pytest.fixture()
def upstream_name(monkeypatch):
    """``make(module, name, base)``: a subclass of ``base`` that pickles as ``module.name`` (the module is created in
    ``sys.modules`` when it does not exist), for the test's duration only."""

    def make(module: str, name: str, base: type = object) -> type:
        cls = type(name, (base,), {"__module__": module, "__qualname__": name})
        parts = module.split(".")
        for k in range(1, len(parts) + 1):
            mod = ".".join(parts[:k])
            if mod not in sys.modules:
                monkeypatch.setitem(sys.modules, mod, types.ModuleType(mod))
        monkeypatch.setattr(sys.modules[module], name, cls, raising=False)
        return cls

    return make


def _as(obj: torch.nn.Module, cls: type) -> torch.nn.Module:
    obj = copy.deepcopy(obj)
    obj.__class__ = cls
    return obj


def _yolov5n(yolov5n_pt: Path) -> DetectionModel:
    """Our model holding the official yolov5n weights (fp16-exact values), BatchNorm unfused, eval mode."""
    return load_model(yolov5n_pt, fuse=False).float()


def _boost(model: DetectionModel) -> DetectionModel:
    """Random-weight models: fp16-exact weights and confident objectness/classes so that detect.py finds boxes."""
    torch.manual_seed(0)
    model = model.half().float().eval()
    with torch.no_grad():
        for conv in model.detect.m:
            conv.bias.view(model.detect.na, -1)[:, 4:] += 6.0
    return model


def _focus_spp(v6: DetectionModel) -> DetectionModel:
    """The v5.0-era Focus + SPP form of a v6 model: same function (a 6x6/2 conv is a space-to-depth + 3x3 conv, SPPF
    is SPP(5, 9, 13)), so the official weights carry over exactly."""
    d = copy.deepcopy(v6.yaml)
    d["backbone"][0] = [-1, 1, "Focus", [64, 3]]
    d["backbone"][-1] = [-1, 1, "SPP", [1024, [5, 9, 13]]]
    m = DetectionModel(d, nc=d["nc"])
    sd = {
        k.replace("model.0.", "model.0.conv.", 1) if k.startswith("model.0.") else k: v
        for k, v in v6.state_dict().items()
    }
    w = v6.model[0].conv.weight  # Tensor[c2, 3, 6, 6]
    # Focus order of the 4 sub-images: (dy, dx) = (0, 0), (1, 0), (0, 1), (1, 1)
    sd["model.0.conv.conv.weight"] = torch.cat(
        [w[:, :, dy::2, dx::2] for dy, dx in ((0, 0), (1, 0), (0, 1), (1, 1))], 1
    )
    m.load_state_dict(sd)
    m.names, m.stride = v6.names, v6.stride
    return m.eval()


def _v5_detect_buffers(model: DetectionModel) -> None:
    """Detect as pickled before v6.0: an ``anchor_grid`` buffer, and stale cached grids of other input sizes."""
    det = model.detect
    det.register_buffer("anchor_grid", (det.anchors * det.stride.view(-1, 1, 1)).view(det.nl, 1, -1, 1, 1, 2))
    det.grid = [torch.zeros(1, det.na, 7, 9, 2) for _ in range(det.nl)]


def _two_level(v6: DetectionModel) -> DetectionModel:
    """yolov5n with a P3/P4 head only (the official weights of those two levels)."""
    d = copy.deepcopy(v6.yaml)
    d["anchors"] = d["anchors"][:2]
    d["head"][-1] = [[17, 20], 1, "Detect", ["nc", "anchors"]]
    m = DetectionModel(d, nc=d["nc"])
    sd = v6.state_dict()
    sd = {k: v for k, v in sd.items() if not k.startswith("model.24.m.2")}
    sd["model.24.anchors"] = sd["model.24.anchors"][:2]
    m.load_state_dict(sd)
    m.names = v6.names
    return m.eval()


def _small(cfg: str, **changes) -> dict:
    d = load_model_yaml(cfg)
    d.update(depth_multiple=0.33, width_multiple=0.25, **changes)
    return d


EXPERIMENTAL = {
    "nc": 3,
    "depth_multiple": 0.33,
    "width_multiple": 0.25,
    "anchors": [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119]],
    "backbone": [
        [-1, 1, "Conv", [64, 6, 2, 2]],
        [-1, 1, "DWConv", [128, 3, 2]],
        [-1, 3, "C3x", [128]],
        [-1, 1, "GhostConv", [256, 3, 2]],  # 3 P3/8
        [-1, 2, "C3Ghost", [256]],
        [-1, 1, "Conv", [512, 3, 2]],  # 5 P4/16
        [-1, 1, "C3TR", [512]],
        [-1, 1, "CrossConv", [512, 3, 1, 1, 1.0, True]],
        [-1, 1, "MixConv2d", [512, [1, 3]]],
        [-1, 1, "BottleneckCSP", [512]],
        [-1, 1, "C3SPP", [512, [5, 9]]],  # 10
    ],
    "head": [
        [-1, 1, "DWConvTranspose2d", [512, 2, 2]],  # 11 P3/8
        [[-1, 4], 1, "Concat", [1]],
        [-1, 1, "Contract", [2]],  # 13 P4/16
        [-1, 1, "Expand", [2]],  # 14 P3/8
        [-1, 1, "Conv", [256, 1, 1]],
        [-1, 1, "GhostBottleneck", [256, 3, 1]],  # 16 P3/8
        [-1, 1, "nn.MaxPool2d", [2, 2]],
        [[-1, 10], 1, "Concat", [1]],
        [-1, 1, "nn.BatchNorm2d", [None]],  # 19 P4/16
        [[16, 19], 1, "Detect", ["nc", "anchors"]],
    ],
}


def _layouts(yolov5n_pt: Path, make) -> dict[str, tuple[dict, DetectionModel]]:
    """name -> (checkpoint dict to torch.save, plain reference model) for every layout of the issue."""
    Model = make("models.yolo", "Model", DetectionModel)
    Upstream = DetectionModel  # ours is models.yolo.DetectionModel too: pickled under upstream's v6.2+ name
    Windows = make("pathlib", "WindowsPath")
    Windows.__reduce__ = lambda self: (type(self), ("C:\\", "Users", "me", "runs", "train", "exp3"))
    v6 = _yolov5n(yolov5n_pt)
    coco_names = [v6.names[i] for i in range(80)]
    out = {}

    m = _as(v6, Upstream).half()  # v7.0 release / strip_optimizer: fp16, names dict, opt as a plain dict
    m.names = dict(v6.names)
    opt = {"weights": "yolov5n.pt", "save_dir": pathlib.PosixPath("runs/train/exp"), "hyp": {"lr0": 0.01}}
    out["v7-stripped-fp16"] = (
        {
            "epoch": -1,
            "best_fitness": None,
            "model": m,
            "ema": None,
            "updates": None,
            "optimizer": None,
            "opt": opt,
            "git": {"tag": "v7.0-549"},
            "date": "2025-01-01",
        },
        v6,
    )

    m = _as(v6, Model)  # v6.x last.pt mid-training: fp32 model + fp16 EMA, optimizer, numpy fitness, Namespace opt
    m.names = coco_names
    sgd = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
    for p in m.parameters():
        p.grad = torch.zeros_like(p)
    sgd.step()  # zero gradients: momentum buffers exist, weights unchanged
    m.zero_grad(set_to_none=True)
    ns = argparse.Namespace(weights=pathlib.PurePosixPath("yolov5n.pt"), save_dir=Windows(), epochs=300)
    out["v6-last-mid-training"] = (
        {
            "epoch": 41,
            "best_fitness": np.array([0.3512]),
            "model": m,
            "ema": _as(v6, Model).half(),
            "updates": 9999,
            "optimizer": sgd.state_dict(),
            "opt": ns,
            "results": np.float32(0.5),
            "date": "2022-03-01",
        },
        v6,
    )

    ref = _focus_spp(v6)  # v5.0-era: Focus + SPP, anchor_grid buffer, stale grids, names list, no names at all later
    m = _as(ref, Model).half()
    _v5_detect_buffers(m)
    m.names = coco_names
    out["v5-focus-spp"] = (
        {
            "epoch": -1,
            "best_fitness": np.float64(0.3),
            "training_results": "...",
            "model": m,
            "optimizer": None,
            "wandb_id": None,
        },
        ref,
    )

    ref = copy.deepcopy(v6)  # LeakyReLU in every Conv, but no activation key in the YAML: upstream's process-wide
    for mod in ref.modules():  # Conv.default_act set by an earlier model; only the pickled modules say so
        if isinstance(mod, Conv) and isinstance(mod.act, torch.nn.SiLU):
            mod.act = torch.nn.LeakyReLU(0.1)
    ref = _boost(ref)
    m = _as(ref, Model)  # fp32: the boosted biases are not fp16 values
    m.names = coco_names
    out["leaky-acts-without-yaml-key"] = {"epoch": -1, "model": m}, ref

    ref = _two_level(v6)
    out["2-level-head"] = {"epoch": -1, "model": _as(ref, Upstream).half()}, ref

    for name, d in {
        "4-level-p2-head": _small("yolov5-p2.yaml", nc=2),
        "p6-4-level": _small("yolov5n6.yaml", nc=2),
        "leakyrelu": _small("yolov5s-LeakyReLU.yaml", nc=2),
        "experimental-layers": EXPERIMENTAL,
    }.items():
        ref = _boost(DetectionModel(d))
        m = _as(ref, Model)
        _v5_detect_buffers(m)
        m.names = None  # very old files: no names; class0, class1... are used
        out[name] = {"epoch": 3, "model": m}, ref
    return out


def _detect_labels(weights: list[Path], source: Path, project: Path, name: str, imgsz: int) -> dict[str, str]:
    save_dir = detect.run(
        weights=[str(w) for w in weights],
        source=str(source),
        imgsz=imgsz,
        project=project,
        name=name,
        save_txt=True,
        save_conf=True,
        nosave=True,
        device="cpu",
    )
    return {p.name: p.read_text() for p in sorted((save_dir / "labels").glob("*.txt"))}


def test_every_layout_loads_and_detects_like_the_plain_model(yolov5n_pt, coco8, upstream_name, tmp_path, capsys):
    source = tmp_path / "images"
    source.mkdir()
    for im in sorted((coco8.parent / "images" / "train").glob("*.jpg"))[:1]:  # 2 bowls, 1 dining table
        (source / im.name).symlink_to(im)
    x = torch.rand(1, 3, 128, 192)  # multiples of 64 for the P6 model
    seen = {}
    for name, (ckpt, ref) in _layouts(yolov5n_pt, upstream_name).items():
        path = tmp_path / f"{name}.pt"
        torch.save(ckpt, path)
        loaded = load_model(path, fuse=False)
        with torch.no_grad():
            a, b = ref.eval()(x)[0], loaded(x)[0]
        assert a.shape == b.shape and torch.allclose(a, b, atol=2e-3, rtol=1e-4), name
        if ckpt["model"].names is None:
            assert loaded.names == {i: f"class{i}" for i in range(ref.detect.nc)}
        else:
            assert len(loaded.names) == 80 and loaded.names[0] == "person" and loaded.names[79] == "toothbrush"
        reference = save_checkpoint(ref, tmp_path / f"{name}-plain.pt")
        imgsz = 256 if "p6" in name else 192
        got = _detect_labels([path], source, tmp_path, name, imgsz)
        want = _detect_labels([reference], source, tmp_path, f"{name}-plain", imgsz)
        assert got == want and sum(len(t.splitlines()) for t in got.values()) > 0, name
        seen[name] = path
    # an ensemble of two such files against the ensemble of their plain references
    got = _detect_labels([seen["v6-last-mid-training"], seen["v5-focus-spp"]], source, tmp_path, "ens", 192)
    want = _detect_labels(
        [tmp_path / "v6-last-mid-training-plain.pt", tmp_path / "v5-focus-spp-plain.pt"],
        source,
        tmp_path,
        "ens-plain",
        192,
    )
    assert got == want and got
    ck = read_checkpoint(seen["v6-last-mid-training"])
    assert ck["best_fitness"] == pytest.approx(0.3512) and ck["epoch"] == 41
    assert len(seen) == 9
    m = load_model(seen["leaky-acts-without-yaml-key"], fuse=False)
    again = load_model(save_checkpoint(m, tmp_path / "resaved.pt"), fuse=False)  # our format keeps the activations
    assert isinstance(again.model[0].act, torch.nn.LeakyReLU) and again.model[0].act.negative_slope == 0.1
    with torch.no_grad():
        assert torch.equal(m(x)[0], again(x)[0])


def _refuse(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as e:
        run_cli("detect.py", lambda: detect.main(detect.parse_opt(argv)))
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1, err
    return err[0]


def _fake_net(make, module: str, model_cls: str, layers: dict[str, str]) -> torch.nn.Module:
    """A model object pickled as ``module.model_cls`` whose ``model`` Sequential holds layers of the given names."""
    net = make(module, model_cls, torch.nn.Module)()
    seq = torch.nn.Sequential()
    for layer_name, layer_module in layers.items():
        seq.append(make(layer_module, layer_name, torch.nn.Conv2d)(3, 4, 1))
    net.model = seq
    return net


def test_refusals_say_what_the_file_is(yolov5n_pt, upstream_name, tmp_path, capsys):
    v8 = _fake_net(
        upstream_name,
        "ultralytics.nn.tasks",
        "DetectionModel",
        {"Conv": "ultralytics.nn.modules.conv", "C2f": "ultralytics.nn.modules.block"},
    )
    v8.args = types.SimpleNamespace(task="detect")
    v8.yaml = {"backbone": [[-1, 1, "Conv", [64, 3, 2]]], "head": [[-1, 1, "C2f", [64]]]}
    cls = _fake_net(upstream_name, "models.yolo", "ClassificationModel", {"Classify": "models.common"})
    seg = _fake_net(upstream_name, "models.yolo", "SegmentationModel", {"Segment": "models.yolo"})
    for net in (cls, seg):  # a backbone layer of ours first: the pickle names models.common.Conv as upstream's does
        net.model.insert(0, Conv(3, 4))
    fork = DetectionModel("yolov5n.yaml", nc=2)
    fork.yaml["backbone"][2] = [-1, 1, "CBAM", [128]]
    fork.model[2] = upstream_name("models.common", "CBAM", torch.nn.Identity)()
    fork.model[7] = upstream_name("models.attention", "SEBlock", torch.nn.Identity)()
    files = {
        "v8.pt": ({"model": v8, "version": "8.3.40", "train_args": {"task": "detect"}}, "Ultralytics YOLOv8/YOLO11"),
        "cls.pt": ({"model": cls, "epoch": -1}, "YOLOv5 classification checkpoint"),
        "seg.pt": ({"model": seg, "epoch": -1}, "YOLOv5 segmentation checkpoint"),
        "fork.pt": (
            {"model": fork},
            "YOLOv5 fork with layers this toolkit does not know: CBAM (layer 2), SEBlock (layer 7)",
        ),
        "bare.pt": (DetectionModel("yolov5n.yaml", nc=2).state_dict(), "tensors such as 'model.0.conv.weight'), not"),
    }
    for name, (obj, expected) in files.items():
        torch.save(obj, tmp_path / name)
        line = _refuse(
            ["--weights", str(tmp_path / name), "--source", str(tmp_path), "--project", str(tmp_path)], capsys
        )
        assert line.startswith(f"detect.py: error: {tmp_path / name}: ") and expected in line, line
        assert "malicious" not in line
    (tmp_path / "cut.pt").write_bytes(yolov5n_pt.read_bytes()[:100000])
    line = _refuse(["--weights", str(tmp_path / "cut.pt"), "--source", str(tmp_path)], capsys)
    assert "truncated or damaged zip archive" in line and "malicious" not in line
    (tmp_path / "notes.pt").write_text("not a model")
    assert "not a zip archive" in _refuse(["--weights", str(tmp_path / "notes.pt"), "--source", str(tmp_path)], capsys)


class _Payload:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@pytest.mark.parametrize("fn,args", [(eval, ("1+1",)), (exec, ("x=1",)), (getattr, ("abc", "upper"))])
def test_callables_are_refused_as_possibly_malicious(fn, args, tmp_path):
    import subprocess

    for payload, called in (
        (_Payload(fn, *args), fn.__name__),
        (_Payload(subprocess.Popen, ["true"]), "subprocess.Popen"),
    ):
        torch.save({"model": payload, "best_fitness": np.array([1.0])}, tmp_path / "evil.pt")
        with pytest.raises(CheckpointError) as e:
            read_checkpoint(tmp_path / "evil.pt")
        msg = str(e.value)
        assert msg.startswith(f"{tmp_path / 'evil.pt'}: refusing to load: the pickle asks to call '") and called in msg
        assert msg.endswith("which is not checkpoint data (the file may be malicious)") and "\n" not in msg
