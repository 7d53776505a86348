"""Tests for benchmarks.py: the format table on a tiny dataset, the CSV, --hard-fail, --prune sweep, --study."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

import benchmarks
from utils.devices import cpu_has_native_bf16
from utils.errors import UsageError
from utils.inference.backends import load_backend

PT_ROWS = ["PyTorch", "PyTorch bf16"] if cpu_has_native_bf16() else ["PyTorch"]  # fp32 and bf16 rows on AMX CPUs


@pytest.fixture()
def coco4(coco128, tmp_path) -> Path:
    """4 coco128 images with labels in a writable folder, and its data YAML (80 COCO names)."""
    import yaml
    from conftest import REPO, copy_coco_subset, write_data_yaml

    names = yaml.safe_load((REPO / "data" / "coco128.yaml").read_text())["names"]
    return write_data_yaml(copy_coco_subset(coco128, tmp_path / "coco4", 4), names)


def test_table_csv_and_prune_sweep_at_img64(yolov5n_pt, coco4, tmp_path, capsys):
    rows = benchmarks.run(
        weights=[str(yolov5n_pt)],
        data=str(coco4),
        imgsz=64,
        batch_size=4,  # exports with a static batch of 4: one validation batch
        include=["torchscript", "onnx", "tflite"],
        prune=[0.3],
        workers=0,
        device="cpu",
        project=tmp_path / "runs",
        hard_fail=0.0,  # skipped formats are not failures
    )
    by_format = {r["Format"]: r for r in rows}
    assert list(by_format) == [*PT_ROWS, "TorchScript", "ONNX", "TFLite", "PyTorch pruned 0.3"]
    for name in (*PT_ROWS, "TorchScript", "ONNX", "PyTorch pruned 0.3"):
        assert by_format[name]["Status"] == "✅" and by_format[name]["Inference time (ms/im)"] > 0, name
    if by_format["TFLite"]["Status"] != "✅":
        assert by_format["TFLite"]["Status"].startswith("skipped: needs litert-torch")
    # TorchScript keeps dynamic shapes (same rectangular batches) and identical outputs: identical mAP
    assert by_format["TorchScript"]["mAP50-95"] == by_format["PyTorch"]["mAP50-95"] > 0.05
    assert by_format["ONNX"]["mAP50-95"] > 0.05  # fixed 64x64: square letterbox, slightly different figures
    assert by_format["PyTorch"]["Size (MB)"] == round(yolov5n_pt.stat().st_size / 1e6, 2)
    if "PyTorch bf16" in by_format:  # same weights, bf16 compute: close to fp32's figure
        assert by_format["PyTorch bf16"]["mAP50-95"] == pytest.approx(by_format["PyTorch"]["mAP50-95"], abs=0.03)
    assert 7.0 < by_format["ONNX"]["Size (MB)"] < 8.5  # 1.87 M fp32 parameters
    assert by_format["PyTorch pruned 0.3"]["Size (MB)"] < 0.8 * by_format["PyTorch"]["Size (MB)"]
    out = capsys.readouterr().out
    assert "Format              Size (MB)  mAP50-95  Inference time (ms/im)  Status" in out
    csv_file = tmp_path / "runs" / "exp" / "benchmarks.csv"
    with open(csv_file, newline="", encoding="utf-8") as fh:
        saved = list(csv.DictReader(fh))
    assert [r["Format"] for r in saved] == list(by_format) and saved[len(PT_ROWS) + 1]["Size (MB)"] == str(
        by_format["ONNX"]["Size (MB)"]
    )

    with pytest.raises(benchmarks.BenchmarkError, match=r"ONNX \(mAP50-95 .* < 0.99\)"):
        benchmarks._hard_fail(rows, 0.99)


def test_hard_fail_on_errors_and_cli_exit_code(monkeypatch, capsys):
    rows = [benchmarks._row("ONNX", 7.5, status="❌ export: ValueError: boom"), benchmarks._row("TFLite", None)]
    rows[1]["Status"] = "skipped: needs litert-torch"
    with pytest.raises(benchmarks.BenchmarkError, match=r"--hard-fail: ONNX \(❌ export: ValueError: boom\)$"):
        benchmarks._hard_fail(rows, 0.0)
    zero = {**benchmarks._row("OpenVINO", 7.7), "mAP50-95": 0.0}  # a broken export scoring nothing fails the floor
    with pytest.raises(benchmarks.BenchmarkError, match=r"--hard-fail: OpenVINO \(mAP50-95 0.0 < 0.3\)$"):
        benchmarks._hard_fail([zero], 0.3)

    def failing_run(**kwargs):
        raise benchmarks.BenchmarkError("--hard-fail: ONNX (❌ export)")

    monkeypatch.setattr(benchmarks, "run", failing_run)
    with pytest.raises(SystemExit) as e:
        benchmarks.main(benchmarks.parse_opt(["--weights", "x.pt", "--hard-fail", "0.3"]))
    assert e.value.code == 1 and "benchmarks.py: error: --hard-fail: ONNX" in capsys.readouterr().err


def test_ensemble_of_two_weights(yolov5n_pt, coco4, tmp_path):
    rows = benchmarks.run(
        weights=[str(yolov5n_pt)] * 2,
        data=str(coco4),
        imgsz=64,
        batch_size=4,
        include=["onnx"],
        workers=0,
        device="cpu",
        project=tmp_path,
        hard_fail=0.0,
    )
    file = tmp_path / "exp" / "yolov5n_ensemble.onnx"
    assert [r["Status"] for r in rows] == ["✅"] * (len(PT_ROWS) + 1) and file.is_file()
    with torch.no_grad():  # both members' candidates: 2 x 3 anchors x (8x8 + 4x4 + 2x2) cells at 64x64
        assert load_backend(file, torch.device("cpu"))(torch.zeros(4, 3, 64, 64)).shape == (4, 504, 85)


def test_study_options_reach_run_study(monkeypatch, tmp_path):
    import utils.study

    calls = {}

    def run_study(**kwargs):
        calls.update(kwargs)
        return tmp_path

    monkeypatch.setattr(utils.study, "run_study", run_study)
    argv = ["--study", "--cfgs", "yolov5n.yaml", "yolov5s.yaml", "--ensembles", "yolov5n,yolov5n", "--epochs", "3"]
    opt = benchmarks.parse_opt([*argv, "--img", "160", "--optimizer", "AdamW", "--nbs", "16"])
    assert benchmarks.run(**vars(opt)) == tmp_path
    assert calls["cfgs"] == ["yolov5n.yaml", "yolov5s.yaml"] and calls["ensembles"] == ["yolov5n,yolov5n"]
    assert calls["epochs"] == 3 and calls["imgsz"] == 160 and calls["weights"] == []
    assert calls["batch_size"] == 16  # --batch-size unset: 16 for training, not the export benchmark's 1
    assert calls["train_kwargs"] == {"optimizer": "AdamW", "nbs": 16}
    import train
    import val

    assert calls["train_fn"] is train.run and calls["val_fn"] is val.run  # utils/study.py imports no entry script


def test_unknown_format_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="--include foo: unknown format"):
        benchmarks.run(weights=["x.pt"], include=["foo"], project=Path(tmp_path))


def test_rows_without_a_runtime_are_not_failures_and_cpu_half_exports_fp32(monkeypatch, tmp_path, capsys):
    """A format with no inference backend (TensorRT) was validated anyway: always ❌, and --hard-fail exited 1.
    --half on the CPU exported fp16 TorchScript/ONNX graphs there; OpenVINO's fp16 weight compression is fine."""
    from types import SimpleNamespace

    import utils.export.formats as formats

    def write_file(model, im, file, opts):
        file.write_bytes(b"x" * 1000)
        return file

    fake = formats.ExportFormat("FakeRT", "fakert", ".fakert", write_file, checked=False)
    monkeypatch.setattr(formats, "FORMATS", (*formats.FORMATS, fake))
    exported, validated = [], []

    def spy_export(model, flags, stem, opts, device):
        exported.append((flags[0], opts.half))
        row = formats.format_row(flags[0])
        return {flags[0]: write_file(model, None, formats.output_path(row, stem), opts)}

    def fake_val(weights, **kwargs):
        validated.append(Path(weights[0]).name)
        return SimpleNamespace(map=0.3, speed_ms=(1.0, 2.0, 3.0)), None, None

    monkeypatch.setattr(benchmarks, "export_formats", spy_export)
    monkeypatch.setattr(benchmarks, "load_export_model", lambda *a, **k: object())
    monkeypatch.setattr(benchmarks.validate, "run", fake_val)
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"w")
    rows = benchmarks.run(weights=[str(weights)], include=["torchscript", "fakert", "openvino"], device="cpu",
                          half=True, project=tmp_path / "runs", hard_fail=0.0)  # fmt: skip
    status = {r["Format"]: r["Status"] for r in rows}
    assert status["FakeRT"] == "⚠️ exported, not validated (no FakeRT backend)" and status["TorchScript"] == "✅"
    assert [r["Size (MB)"] for r in rows if r["Format"] == "FakeRT"] == [0.0]  # 1000 bytes, rounded to 2 places
    # the FakeRT file was never run; on a bf16 CPU the .pt is validated in fp32 and bf16
    assert validated == ["w.pt"] * len(PT_ROWS) + ["w.torchscript", "w_openvino_model"]
    assert exported == [("torchscript", False), ("fakert", True), ("openvino", True)]
    assert "--half: fp16 torchscript/onnx/engine exports need CUDA; exporting them in fp32 on cpu" in (
        capsys.readouterr().out
    )
