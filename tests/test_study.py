"""Accuracy-vs-cost study: costs against published figures, Pareto front, power law, the study run and its files."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

import train
import val
from models.yolo import DetectionModel, model_flops
from utils.checkpoints import save_checkpoint
from utils.study import (
    StudyRow,
    ensemble_name,
    ensemble_verdicts,
    frontier_fit,
    measure_latency,
    model_cost,
    pareto_front,
    power_law_fit,
    run_study,
)

NAMES = ["circle", "rectangle", "triangle", "star", "cross"]


@pytest.mark.parametrize("cfg, params, gflops", [("yolov5n.yaml", 1867405, 4.5), ("yolov5s.yaml", 7225885, 16.5)])
def test_cost_matches_published_yolov5_figures(cfg, params, gflops):
    """YOLOv5's README / fused model summary: 1867405 and 7225885 parameters, 4.5 and 16.5 GFLOPs at 640."""
    model = DetectionModel(cfg)
    n, g = model_cost([model], 640)
    assert n == params
    assert abs(g - gflops) / gflops < 0.03
    assert model_flops(model, 640) > g  # unfused BatchNorms count too: why the study fuses first
    n2, g2 = model_cost([model, model], 640)  # an ensemble costs the sum of its members
    assert n2 == 2 * n and g2 == pytest.approx(2 * g)


def test_pareto_front():
    cost = [1.0, 2.0, 4.0, 8.0, 8.0, 0.5]
    score = [0.2, 0.3, 0.25, 0.45, 0.40, 0.1]
    assert pareto_front(cost, score) == [5, 0, 1, 3]


def test_power_law_fit_recovers_exponent():
    x = [1.0, 2.0, 4.0, 16.0]
    a, b = power_law_fit(x, [0.1 * v**0.5 for v in x])
    assert a == pytest.approx(0.1) and b == pytest.approx(0.5)
    assert all(math.isnan(v) for v in power_law_fit([2.0, 2.0], [0.1, 0.2]))  # one distinct cost: no slope
    assert all(math.isnan(v) for v in power_law_fit([1.0, 2.0], [0.0, 0.2]))  # log(0) points are left out


def _row(name: str, kind: str, gflops: float, m: float) -> StudyRow:
    return StudyRow(name, kind, params=int(gflops * 1e6), gflops=gflops, cpu_ms=gflops, map=m)


def test_frontier_and_verdicts():
    # singles on mAP = 0.2 * GFLOPs^b with b = log(1.5) / log(4); 'slow' is dominated and left out of the fit
    b = math.log(1.5) / math.log(4)
    rows = [
        _row("n", "model", 1.0, 0.2),
        _row("s", "model", 4.0, 0.3),
        _row("slow", "model", 8.0, 0.25),
        _row("m", "model", 16.0, 0.45),
        _row("2xn", "ensemble", 2.0, 0.31),
    ]
    a, b_fit, used = frontier_fit(rows)
    assert used == ["n", "s", "m"] and a == pytest.approx(0.2) and b_fit == pytest.approx(b)
    (line,) = ensemble_verdicts(rows)
    pred = 0.2 * 2.0**b  # 0.2449
    assert f"frontier predicts {pred:.3f} at equal GFLOPs (+{0.31 - pred:.3f}, above the frontier)" in line
    assert "beats s (4.00 GFLOPs, mAP50-95 0.300)" in line


def test_cpu_latency_is_measured_in_the_layout_val_and_detect_run():
    """channels_last model and input on the CPU, as the PyTorch backend runs them (NCHW: ~1.2x slower there)."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.MaxPool2d(5, 1, 2))
    layouts = []
    net[1].register_forward_pre_hook(lambda m, a: layouts.append(a[0].is_contiguous(memory_format=torch.channels_last)))
    assert measure_latency(net, 32, torch.device("cpu"), runs=3, warmup=1) > 0
    assert layouts == [True] * 4
    w = net[0].weight  # 8x3x3x3: channels_last strides differ from NCHW's
    assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    # any other device (CUDA) the same way, as the backend runs there: shown on "meta", which needs no GPU
    meta, inputs = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3)).to("meta"), []
    meta[0].register_forward_pre_hook(lambda m, a: inputs.append(a[0].is_contiguous(memory_format=torch.channels_last)))
    measure_latency(meta, 32, torch.device("meta"), runs=2, warmup=1)
    assert inputs == [True] * 3 and not meta[0].weight.is_contiguous()


def test_ensemble_name():
    assert ensemble_name(["yolov5n", "yolov5n-seed1"]) == "2xyolov5n"
    assert ensemble_name(["yolov5n", "resnet18"]) == "yolov5n+resnet18"


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    from utils.data.shapes import generate_shapes_dataset

    root = generate_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", n_train=2, n_val=2, imgsz=64)
    file = root / "data.yaml"
    file.write_text(yaml.safe_dump({"path": str(root), "train": "images/train", "val": "images/val", "names": NAMES}))
    return file


def test_run_study_with_injected_training(tmp_path, tiny_data):
    """Two configs and a 2x ensemble: repeats are trained with another seed; files and figures come out."""
    calls = []

    def fake_train(**kw) -> Path:
        calls.append(kw)
        torch.manual_seed(kw.get("seed", 0))
        run = Path(kw["project"]) / kw["name"]
        save_checkpoint(DetectionModel(kw["cfg"], nc=len(NAMES)), run / "weights" / "best.pt")
        (run / "results.csv").write_text(
            "epoch,train/box_loss,train/obj_loss,metrics/mAP_0.5,metrics/mAP_0.5:0.95\n0,0.1,0.05,0.2,0.1\n"
            "1,0.08,0.04,0.3,0.15\n"
        )
        return run

    maps = {"yolov5n": 0.20, "yolov5n-seed1": 0.19, "yolov5s": 0.30, "2xyolov5n": 0.27}

    def fake_val(**kw):
        name = kw["name"]
        assert kw["imgsz"] == 64 and kw["noplots"] and len(kw["weights"]) == (2 if name.startswith("2x") else 1)
        return SimpleNamespace(mp=0.5, mr=0.4, map50=2 * maps[name], map=maps[name]), None, None

    save_dir = run_study(
        cfgs=["yolov5n.yaml", "yolov5s.yaml"], ensembles=["yolov5n,yolov5n"], data=str(tiny_data), imgsz=64,
        epochs=2, batch_size=2, device="cpu", project=tmp_path, name="study", workers=0, latency_runs=2,
        train_fn=fake_train, val_fn=fake_val,
    )  # fmt: skip
    assert [(c["name"], c.get("seed", 0), c["epochs"], c["weights"]) for c in calls] == [
        ("yolov5n", 0, 2, ""),
        ("yolov5s", 0, 2, ""),
        ("yolov5n-seed1", 1, 2, ""),
    ]
    with open(save_dir / "study.csv") as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["yolov5n", "yolov5s", "yolov5n-seed1", "2xyolov5n"]
    n, e = rows["yolov5n"], rows["2xyolov5n"]
    assert e["kind"] == "ensemble" and len(e["members"].split(";")) == 2
    assert int(e["params"]) == 2 * int(n["params"]) and float(e["gflops"]) == pytest.approx(2 * float(n["gflops"]))
    assert float(n["map"]) == 0.2 and float(n["train_s"]) > 0 and float(n["cpu_ms"]) > 0
    assert math.isnan(float(n["cuda_ms"]))  # --device cpu: no CUDA timing
    for f in ("frontier.png", "training_curves.png", "summary.txt"):
        assert (save_dir / f).stat().st_size > 0
    summary = (save_dir / "summary.txt").read_text()
    a, b, _ = frontier_fit([_row(k, "model", float(rows[k]["gflops"]), maps[k]) for k in ("yolov5n", "yolov5s")])
    assert f"gflops^{b:.3f} (fit on yolov5n, yolov5s)" in summary  # the seed-1 twin is dominated by yolov5n
    assert "2xyolov5n:" in summary and "does not beat yolov5s" in summary  # 0.27 < 0.30


def test_run_study_checkpoints_with_val(tmp_path, tiny_data):
    """A training run's best.pt through the real val.run, its results.csv plotted; a repeated one is no ensemble."""
    torch.manual_seed(0)
    w = save_checkpoint(DetectionModel("yolov5n.yaml", nc=len(NAMES)), tmp_path / "exp7" / "weights" / "best.pt")
    (tmp_path / "exp7" / "results.csv").write_text("epoch,train/box_loss,metrics/mAP_0.5\n0,0.1,0.0\n1,0.09,0.01\n")
    save_dir = run_study(
        weights=[str(w)], data=str(tiny_data), imgsz=64, batch_size=2, device="cpu", project=tmp_path,
        name="ckpt", workers=0, latency_runs=1, train_fn=train.run, val_fn=val.run,
    )  # fmt: skip
    with open(save_dir / "study.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert row["name"] == "exp7" and 0.0 <= float(row["map"]) <= float(row["map50"]) <= 1.0
    assert row["results_csv"] == str(tmp_path / "exp7" / "results.csv") and math.isnan(float(row["train_s"]))
    assert (save_dir / "training_curves.png").is_file()
    with pytest.raises(ValueError, match="repeats exp7: identical weights make no ensemble"):
        run_study(weights=[str(w)], ensembles=["exp7,exp7"], data=str(tiny_data), device="cpu", project=tmp_path,
                  train_fn=train.run, val_fn=val.run)  # fmt: skip


def test_study_reuses_the_training_validation_and_checks_ensembles_first(tmp_path, tiny_data):
    val_calls = []

    def fake_train(**kw) -> Path:
        run = Path(kw["project"]) / kw["name"]
        save_checkpoint(DetectionModel(kw["cfg"], nc=len(NAMES)), run / "weights" / "best.pt")
        for fn in kw["callbacks"]["on_train_end"]:  # what train.run reports after validating best.pt
            fn(save_dir=run, results=(0.5, 0.4, 0.3, 0.2, 0.0, 0.0, 0.0))
        return run

    def fake_val(**kw):
        val_calls.append(kw["name"])
        return SimpleNamespace(mp=0.1, mr=0.1, map50=0.1, map=0.1), None, None

    kw = dict(data=str(tiny_data), imgsz=64, epochs=1, batch_size=2, device="cpu", project=tmp_path, workers=0,
              latency_runs=1, train_fn=fake_train, val_fn=fake_val)  # fmt: skip
    with pytest.raises(ValueError, match=r"--ensembles yolov5x: neither a label of --cfgs/--weights"):
        run_study(cfgs=["yolov5n.yaml"], ensembles=["yolov5n,yolov5x"], name="typo", **kw)
    assert not (tmp_path / "typo" / "train").exists()  # refused before any training
    save_dir = run_study(cfgs=["yolov5n.yaml"], name="reuse", **kw)
    with open(save_dir / "study.csv") as f:
        row = next(csv.DictReader(f))
    assert val_calls == [] and float(row["map"]) == 0.2 and float(row["map50"]) == 0.3
