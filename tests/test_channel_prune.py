"""Structured channel pruning (utils/inference/channel_prune.py) and its checkpoints, exports and fine-tuning."""

from __future__ import annotations

import cv2
import pytest
import torch

import detect
import export
import train
import val
from models.yolo import DetectionModel
from utils.checkpoints import CheckpointError, build_from_checkpoint, load_model, read_checkpoint, save_checkpoint
from utils.errors import UsageError
from utils.inference.backends import load_backend
from utils.inference.channel_prune import (
    WIDTHS_KEY,
    _bn_scaled_convs,
    _compensate,
    _input_stats,
    calibration_batch,
    channel_prune,
)
from utils.inference.loader import load_inference_model

TINY = dict(imgsz=64, batch_size=4, workers=0, device="cpu", noautoanchor=True, noplots=True, exist_ok=True)


@pytest.fixture(scope="module")
def pruned_pt(yolov5n_pt, tmp_path_factory):
    """yolov5n with 30% of each layer's channels removed (l1), saved unfused in our format."""
    model = load_model(yolov5n_pt, fuse=False)
    channel_prune(model, 0.3, "l1")
    return save_checkpoint(model, tmp_path_factory.mktemp("cp") / "yolov5n_ch30.pt"), model


def test_widths_shrink_and_the_head_outputs_stay(pruned_pt, capsys):
    _, model = pruned_pt
    convs = dict(model.named_modules())
    assert convs["model.2.cv1.conv"].out_channels == 16  # 16 * 0.7 = 11.2: at least one multiple of 16 stays
    assert convs["model.1.conv"].out_channels == 16  # 32 * 0.7 = 22.4: the nearest multiple of 16
    assert convs["model.4.cv3.conv"].out_channels == 48  # 64 * 0.7 = 44.8
    assert convs["model.8.cv3.conv"].out_channels == 176  # 256 * 0.7 = 179.2
    assert [m.out_channels for m in model.detect.m] == [255, 255, 255]  # na * (5 + nc) untouched
    assert [m.in_channels for m in model.detect.m] == [48, 96, 176]  # its inputs follow the pruned necks
    assert sum(p.numel() for p in model.parameters()) == 1024573  # of 1872157 dense
    assert model.yaml[WIDTHS_KEY]["model.0.conv"] == [16, 3, 1]


def test_round_trip_with_weights_only_gives_identical_outputs(pruned_pt):
    path, model = pruned_pt
    ckpt = torch.load(path, map_location="cpu", weights_only=True)  # plain data, no code of ours needed
    assert ckpt["model_yaml"][WIDTHS_KEY]["model.24.m.0"] == [255, 48, 1]
    rebuilt = build_from_checkpoint(ckpt, path).eval()
    x = torch.rand(2, 3, 128, 160, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(rebuilt(x)[0], model.eval()(x)[0])
        fused = load_model(path)  # the strict loader, fused as val/detect run it
        assert torch.allclose(fused(x)[0], model(x)[0], atol=1e-3)


def test_a_checkpoint_whose_widths_disagree_is_one_error(pruned_pt, tmp_path):
    path, _ = pruned_pt
    ckpt = read_checkpoint(path)
    ckpt["model_yaml"][WIDTHS_KEY]["model.1.conv"] = [16, 8, 1]  # the next layer still takes 24 channels
    with pytest.raises(CheckpointError, match="cannot build the model its YAML describes .*expected input"):
        build_from_checkpoint(ckpt, path)
    ckpt = read_checkpoint(path)
    ckpt["state_dict"]["model.1.conv.weight"] = torch.zeros(16, 8, 3, 3)  # widths fine, weights of another model
    with pytest.raises(CheckpointError, match=r"tensor model\.1\.conv\.weight has shape \(16, 8, 3, 3\)"):
        build_from_checkpoint(ckpt, path)
    ckpt["model_yaml"][WIDTHS_KEY]["model.99.conv"] = [8, 8, 1]
    with pytest.raises(CheckpointError, match="no Conv2d named 'model.99.conv'"):
        build_from_checkpoint(ckpt, path)


def test_bad_options_are_one_line_errors():
    model = DetectionModel("yolov5n.yaml", nc=2)
    with pytest.raises(UsageError, match=r"--prune-channels 1\.5: expected a fraction"):
        channel_prune(model, 1.5)
    with pytest.raises(UsageError, match="--prune-method l3: expected one of l1, l2, bn-scale"):
        channel_prune(model, 0.3, "l3")


@pytest.mark.parametrize("method,global_pruning", [("l2", False), ("bn-scale", True)])
def test_methods_and_global_ranking_prune_a_trainable_model(method, global_pruning):
    model = DetectionModel("yolov5n.yaml", nc=3).train()
    for m in model.modules():  # trained-looking BatchNorm scales (a fresh model's are all 1: no ranking)
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.weight, 0.1, 1.0)
    n0 = sum(p.numel() for p in model.parameters())
    channel_prune(model, 0.4, method, global_pruning)
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) < 0.6 * n0
    out = model(torch.zeros(1, 3, 64, 64))  # training forward: raw maps per level
    assert [tuple(o.shape) for o in out] == [(1, 3, 8, 8, 8), (1, 3, 4, 4, 8), (1, 3, 2, 2, 8)]


def test_a_removed_constant_channel_is_compensated_exactly(yolov5n_pt, coco128):
    """Channels of layer 5 whose filters are zero output a constant (SiLU of the BatchNorm bias); removing them
    with their mean folded into the 1x1 convolutions that read them (layer 6's BatchNorm running means) leaves the
    outputs unchanged, without compensation they change."""
    import torch_pruning as tp

    x = calibration_batch(str(coco128 / "images" / "train2017"), 64, n=4)
    assert x.shape == (4, 3, 64, 64) and 0 <= x.min() and x.max() <= 1
    outs = []
    for compensate in (True, False):
        model = load_model(yolov5n_pt, fuse=False)
        conv = model.model[5].conv
        with torch.no_grad():
            conv.weight[:4] = 0
            ref = model(x)[0]
        stats = _input_stats(model, x)
        for p in model.parameters():
            p.requires_grad_(True)
        model.detect._grid_cache = {}
        graph = tp.DependencyGraph().build_dependency(
            model, example_inputs=torch.zeros(1, 3, 64, 64), output_transform=lambda o: o[0]
        )  # fmt: skip
        group = graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=[0, 1, 2, 3])
        if compensate:
            _compensate(group, graph, stats, dict(_bn_scaled_convs(model)), scaled=False)
        group.prune()
        model.detect._grid_cache = {}
        with torch.no_grad():
            outs.append((model(x)[0] - ref).abs().max().item())
    assert conv.out_channels == 124
    assert outs[0] < 1e-3 < 0.1 < outs[1]


def test_activation_ranking_keeps_more_of_the_model_than_weight_norms(yolov5n_pt, coco128):
    """10% of each layer's channels: ranked by activation variance (with mean compensation) the scores of the
    dense model's detections move less than ranked by l1 weight norms (0.22 vs 0.29 here; coco128 mAP50-95 at 320
    0.093 vs 0.006)."""
    x = calibration_batch(str(coco128 / "images" / "train2017"), 128, n=8)

    def scores(model):
        with torch.no_grad():
            y = model(x)[0]
        return (y[..., 4:5] * y[..., 5:]).amax(-1)

    ref = scores(load_model(yolov5n_pt, fuse=False))
    top = ref > 0.1
    err = {}
    for method in ("l1", "activation"):
        model = load_model(yolov5n_pt, fuse=False)
        channel_prune(model, 0.1, method, calibration=x)
        err[method] = (scores(model) - ref)[top].abs().mean().item()
    assert top.sum() > 100 and err["activation"] < 0.9 * err["l1"]


def test_ensemble_and_tta_take_a_pruned_member(pruned_pt, yolov5n_pt):
    path, _ = pruned_pt
    model = load_inference_model([str(path), str(yolov5n_pt)], torch.device("cpu"), augment=True, imgsz=320)
    with torch.no_grad():
        y = model(torch.rand(1, 3, 320, 256))
    y = y[0] if isinstance(y, tuple) else y
    assert y.shape[0] == 1 and y.shape[-1] == 85 and torch.isfinite(y).all()


def test_exported_pt_and_onnx_agree_on_coco(yolov5n_pt, coco8, tmp_path, capsys):
    """export.py --prune-channels writes a trainable pruned .pt and a smaller ONNX file; both score the same."""
    files = export.run(weights=str(yolov5n_pt), include=["pt", "onnx"], prune_channels=0.3, imgsz=320,
                       save_dir=tmp_path)  # fmt: skip
    assert files["pt"].name == "yolov5n_ch30.pt"
    ckpt = torch.load(files["pt"], map_location="cpu", weights_only=True)
    assert any(k.endswith(".bn.running_var") for k in ckpt["state_dict"])  # BatchNorms kept: fine-tunable
    assert files["onnx"].stat().st_size < 0.55 * 7.6e6  # dense yolov5n ONNX: 7.6 MB
    images = sorted((coco8.parent / "images" / "train").glob("*.jpg"))[:2]
    x = torch.stack([torch.from_numpy(cv2.resize(cv2.imread(str(f)), (320, 256))[:, :, ::-1].copy()) for f in images])
    x = x.permute(0, 3, 1, 2).float() / 255
    pt, onnx = (load_backend(str(files[k]), torch.device("cpu")) for k in ("pt", "onnx"))
    with torch.no_grad():
        y_pt, y_onnx = pt(x), onnx(x)
    assert y_pt.shape == y_onnx.shape == (2, 3 * (32 * 40 + 16 * 20 + 8 * 10), 85)
    assert (y_pt - y_onnx).abs().max() < 1e-3 * (1 + y_pt.abs().max())  # boxes in pixels, scores 0-1
    maps = []
    for w in (files["pt"], files["onnx"]):
        result, _, _ = val.run(data=str(coco8), weights=[str(w)], imgsz=320, batch_size=4, workers=0,
                               project=tmp_path, name="v", exist_ok=True, noplots=True)  # fmt: skip
        maps.append(result.map)
    assert abs(maps[0] - maps[1]) < 0.002  # (30% of channels gone without fine-tuning: mAP is near 0 here)


def test_fine_tuning_keeps_the_pruned_widths(yolov5n_pt, coco8, tmp_path, capsys):
    save_dir = train.run(data=str(coco8), weights=str(yolov5n_pt), epochs=1, prune_channels=0.3, project=tmp_path,
                         name="ft", **TINY)  # fmt: skip
    assert "Channel pruning (activation, per layer 0.3): 1872157 -> 1024573 parameters" in capsys.readouterr().out
    ckpt = torch.load(save_dir / "weights" / "last.pt", map_location="cpu", weights_only=True)
    widths = ckpt["model_yaml"][WIDTHS_KEY]
    assert widths["model.3.conv"] == [48, 16, 1]
    assert ckpt["state_dict"]["model.3.conv.weight"].shape == (48, 16, 3, 3)  # the EMA weights
    again = train.run(data=str(coco8), weights=str(save_dir / "weights" / "last.pt"), epochs=1, project=tmp_path,
                      name="ft2", **TINY)  # fmt: skip
    assert "Transferred 349/349 items from last.pt" in capsys.readouterr().out
    assert sum(p.numel() for p in load_model(again / "weights" / "best.pt").parameters()) == 1021149  # fused


class _Stop(Exception):
    pass


@pytest.mark.parametrize("script", [val, detect])
def test_flags_reach_the_loader(script, monkeypatch):
    seen = {}

    def loader(weights, device, opts):
        seen["opts"] = opts
        raise _Stop

    monkeypatch.setattr(script, "load_inference_model", loader)
    opt = script.parse_opt(["--weights", "a.pt", "--prune-channels", "0.3", "--prune-method", "l2", "--prune-global"])
    with pytest.raises(_Stop):
        script.run(**vars(opt))
    o = seen["opts"]
    assert (o.prune_channels, o.prune_method, o.prune_global, o.prune) == (0.3, "l2", True, 0.0)


def test_benchmarks_prune_channels_runs_the_sweep(monkeypatch, tmp_path):
    import benchmarks
    import utils.prune_sweep

    calls = {}
    monkeypatch.setattr(utils.prune_sweep, "run_channel_sweep", lambda *a, **kw: calls.update(args=a, kw=kw) or [])
    argv = ["--weights", "w.pt", "--prune-channels", "0.2", "0.4", "--epochs", "2", "--project", str(tmp_path)]
    assert benchmarks.run(**vars(benchmarks.parse_opt(argv))) == []
    weights, data, ratios = calls["args"][:3]
    assert (weights, ratios, calls["kw"]["epochs"], calls["kw"]["unstructured"]) == (
        "w.pt",
        [0.2, 0.4],
        2,
        [0.1, 0.2, 0.3],
    )
    assert calls["kw"]["val_fn"].__module__ == "val" and calls["kw"]["finetune_imgsz"] == 320


def test_resume_keeps_the_pruned_widths_and_does_not_prune_again(coco8, tmp_path, capsys):
    def interrupt(epoch, batch):
        if epoch == 1 and batch == 0:
            raise KeyboardInterrupt

    kw = dict(data=str(coco8), weights="", cfg="yolov5n.yaml", epochs=2, prune_channels=0.5, project=tmp_path,
              name="r", **TINY)  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        train.run(**kw, callbacks={"on_train_batch_end": [interrupt]})
    last = tmp_path / "r" / "weights" / "last.pt"
    ck = torch.load(last, map_location="cpu", weights_only=True)
    assert ck["train_state_dict"]["model.8.cv3.conv.weight"].shape[0] == 128  # 256 * 0.5
    capsys.readouterr()
    train.run(resume=str(last))
    out = capsys.readouterr().out
    assert "Resuming training from" in out and "Channel pruning" not in out  # rebuilt at its widths, not re-pruned
    assert load_model(last).model[8].cv3.conv.out_channels == 128


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_ddp_two_cpu_processes_prune_alike_and_fine_tune(yolov5n_pt, coco8, tmp_path):
    """torchrun, 2 CPU processes (gloo): every rank prunes the same channels from the same calibration images, DDP
    trains the pruned widths, and rank 0's checkpoint rebuilds at them."""
    import os
    import subprocess
    import sys

    from utils.files import REPO_ROOT

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "train.py",
           "--data", str(coco8), "--weights", str(yolov5n_pt), "--prune-channels", "0.3", "--img", "64",
           "--epochs", "1", "--batch-size", "4", "--workers", "0", "--device", "cpu", "--noplots", "--noautoanchor",
           "--project", str(tmp_path), "--name", "ddp"]  # fmt: skip
    p = subprocess.run(cmd, cwd=REPO_ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    ckpt = torch.load(tmp_path / "ddp" / "weights" / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["model_yaml"][WIDTHS_KEY]["model.3.conv"] == [48, 16, 1]
    assert sum(p.numel() for p in load_model(tmp_path / "ddp" / "weights" / "last.pt").parameters()) == 1021149
