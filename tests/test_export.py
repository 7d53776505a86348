"""Tests for export.py and utils/export/formats.py: the format table, metadata, checks, pruned .pt, ONNX NMS, ensembles."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import yaml

import export
from models.yolo import DetectionModel
from utils.checkpoints import load_model, save_checkpoint
from utils.export.formats import (
    FORMATS,
    ExportError,
    ExportOptions,
    check_export,
    export_metadata,
    format_row,
    load_export_model,
    output_path,
)
from utils.inference.prune import conv_sparsity


@pytest.fixture(scope="module")
def random_pt(tmp_path_factory) -> Path:
    """A randomly initialised yolov5n in our checkpoint format (BN statistics perturbed so fusing matters)."""
    torch.manual_seed(0)
    model = DetectionModel("yolov5n.yaml").eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    file = tmp_path_factory.mktemp("weights") / "rand.pt"
    save_checkpoint(model, file)
    return file


@pytest.fixture(scope="module")
def exported(random_pt, tmp_path_factory) -> dict[str, Path]:
    """``random_pt`` exported once to pt, TorchScript, ONNX and OpenVINO at 64x96 (height x width)."""
    out = tmp_path_factory.mktemp("exported")
    return export.run(
        weights=str(random_pt), include=["pt", "torchscript", "onnx", "openvino"], imgsz=[64, 96], save_dir=out
    )


def test_format_table_rows_are_unique_and_complete():
    flags = [r.flag for r in FORMATS]
    assert flags == ["pt", "torchscript", "onnx", "openvino", "engine", "coreml", "tflite"]
    assert len({r.suffix for r in FORMATS}) == len(FORMATS) and all(callable(r.function) for r in FORMATS)
    assert format_row("ONNX").name == "ONNX"
    with pytest.raises(ExportError, match="--include foo: unknown format; choose from pt, torchscript, onnx"):
        format_row("foo")
    pt = format_row("pt")
    assert output_path(pt, Path("w/yolov5n"), source="w/yolov5n.pt") == Path("w/yolov5n_fused.pt")
    assert output_path(format_row("openvino"), Path("w/yolov5n")) == Path("w/yolov5n_openvino_model")


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.load is deprecated upstream
def test_exports_carry_metadata_and_match_pytorch(exported):
    done = exported
    assert set(done) == {"pt", "torchscript", "onnx", "openvino"}
    meta = {p.key: json.loads(p.value) for p in onnx.load(str(done["onnx"])).metadata_props}
    assert meta["task"] == "detect" and meta["stride"] == 32 and meta["strides"] == [8.0, 16.0, 32.0]
    # ONNX and OpenVINO export dynamic shapes by default (val/detect's rectangular batches give PyTorch's numbers)
    assert meta["imgsz"] == [64, 96] and meta["batch"] is None and meta["dynamic"] is True
    assert len(meta["names"]) == 80 and meta["names"]["0"] == "0"
    extra = {"config.txt": ""}
    torch.jit.load(str(done["torchscript"]), _extra_files=extra)
    assert json.loads(extra["config.txt"])["imgsz"] == [64, 96]
    ov_meta = yaml.safe_load((done["openvino"] / "metadata.yaml").read_text())
    assert ov_meta["names"][79] == "79" and ov_meta["strides"] == [8.0, 16.0, 32.0] and ov_meta["dynamic"] is True
    assert (done["openvino"] / "rand.xml").is_file() and (done["openvino"] / "rand.bin").is_file()


def test_missing_package_fails_loudly_but_exports_the_rest(random_pt, tmp_path, capsys):
    if importlib.util.find_spec("litert_torch") is not None:
        pytest.skip("litert-torch is installed here: the TFLite row would run")
    with pytest.raises(ExportError, match=r"1 of 2 format\(s\): TFLite \(needs litert-torch"):
        export.run(weights=str(random_pt), include=["tflite", "onnx"], imgsz=[64], save_dir=tmp_path)
    assert "TFLite: export failure ❌ needs litert-torch (pip install litert-torch)" in capsys.readouterr().out
    assert (tmp_path / "rand.onnx").is_file()
    with pytest.raises(SystemExit) as e:  # the CLI exits non-zero
        export.main(export.parse_opt(["--weights", str(random_pt), "--include", "tflite", "--save-dir", str(tmp_path)]))
    assert e.value.code == 1


def test_usage_errors(random_pt, tmp_path):
    with pytest.raises(export.UsageError, match="--imgsz 70 70: must be multiples of the model stride 32"):
        export.run(weights=str(random_pt), include=["onnx"], imgsz=[70], save_dir=tmp_path)
    with pytest.raises(export.UsageError, match="--half: fp16"):
        export.run(weights=str(random_pt), include=["onnx"], imgsz=[64], half=True, device="cpu", save_dir=tmp_path)
    with pytest.raises(export.UsageError, match="--nms applies to ONNX"):
        export.run(weights=str(random_pt), include=["torchscript"], nms=True, save_dir=tmp_path)


def test_pruned_pt_is_smaller_and_reloads_to_the_pruned_model(random_pt, exported, tmp_path, capsys):
    dense = exported["pt"]
    pruned = export.run(weights=str(random_pt), include=["pt"], prune=0.3, imgsz=[64], save_dir=tmp_path)["pt"]
    assert pruned.name == "rand_pruned30.pt" and dense.name == "rand.pt"
    assert "PyTorch: dense fp16 checkpoint" in capsys.readouterr().out
    assert pruned.stat().st_size < 0.9 * dense.stat().st_size  # 1 bit mask + 2 bytes per kept weight vs 2 bytes
    raw = torch.load(pruned, weights_only=True)
    assert raw["encoding"] == "bitmask+fp16" and raw["pruned"] == 0.3 and raw["sparse_state_dict"]

    reloaded = load_model(pruned)
    assert conv_sparsity(reloaded) == pytest.approx(0.3, abs=0.002)
    in_memory = load_export_model(str(random_pt), torch.device("cpu"), prune=0.3)
    with torch.no_grad():
        for p in in_memory.parameters():
            p.copy_(p.half().float())  # the file stores fp16 values: compare like with like
        x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(reloaded(x)[0], in_memory(x), atol=1e-4, rtol=1e-4)


def test_the_check_catches_an_export_that_differs(random_pt, exported):
    model = load_export_model(str(random_pt), torch.device("cpu"))
    opts = ExportOptions(imgsz=(64, 96))
    assert check_export(format_row("onnx"), exported["onnx"], model, opts, torch.device("cpu")) < 1e-2
    with torch.no_grad():
        model.detect.m[0].bias += 0.5  # the exported file no longer matches this model
    with pytest.raises(ExportError, match="output differs from PyTorch by"):
        check_export(format_row("onnx"), exported["onnx"], model, opts, torch.device("cpu"))


def test_dynamic_simplified_onnx_runs_other_shapes_and_batches(random_pt, tmp_path):
    from utils.inference.backends import load_backend

    file = export.run(
        weights=str(random_pt), include=["onnx"], imgsz=[64], dynamic=True, simplify=True, save_dir=tmp_path
    )["onnx"]
    assert {p.key for p in onnx.load(str(file)).metadata_props} >= {"names", "stride", "imgsz", "task"}
    backend = load_backend(file, torch.device("cpu"))
    assert backend.dynamic and backend.supports_rect and backend.batch is None
    model = load_export_model(str(random_pt), torch.device("cpu"))
    x = torch.rand(3, 3, 96, 128, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(backend(x), model(x), atol=2e-3, rtol=1e-4)


NMS_CHECK = """
import sys, numpy as np, onnxruntime as ort
s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
x = np.load(sys.argv[2])
np.save(sys.argv[3], s.run(None, {"images": x})[0])
np.save(sys.argv[4], s.run(None, {"images": x, "conf_thres": np.array([0.5], np.float32),
                                  "max_det": np.array([1], np.int64)})[0])
print(sorted(m for m in sys.modules if m.split(".")[0] in ("utils", "models", "torch")))
"""


def test_nms_onnx_returns_final_boxes_in_onnxruntime_alone(yolov5n_pt, coco128, tmp_path):
    import cv2

    from utils.data.augment import letterbox
    from utils.nms import non_max_suppression

    file = export.run(
        weights=str(yolov5n_pt), include=["onnx"], imgsz=[320], batch_size=2, nms=True, save_dir=tmp_path
    )["onnx"]
    ims = []
    for name in ("000000000009.jpg", "000000000025.jpg"):  # bowls and broccoli; giraffes
        im = cv2.imread(str(coco128 / "images" / "train2017" / name))
        ims.append(letterbox(im, 320, auto=False)[0][:, :, ::-1].transpose(2, 0, 1) / 255)
    x = np.ascontiguousarray(np.stack(ims), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    outs = [tmp_path / "dets.npy", tmp_path / "dets_strict.npy"]
    proc = subprocess.run(
        [sys.executable, "-c", NMS_CHECK, str(file), str(tmp_path / "x.npy"), *map(str, outs)],
        cwd=tmp_path,  # outside the repository: nothing of the project is importable
        capture_output=True,
        text=True,
        check=True,
    )
    assert proc.stdout.strip().splitlines()[-1] == "[]"  # the check imported no project (or torch) module
    dets, strict = np.load(outs[0]), np.load(outs[1])
    model = load_export_model(str(yolov5n_pt), torch.device("cpu"))
    with torch.no_grad():
        expect = non_max_suppression(model(torch.from_numpy(x)), 0.25, 0.45)
    assert dets.shape[1] == 7 and [int((dets[:, 0] == i).sum()) for i in range(2)] == [len(e) for e in expect]
    assert min(len(e) for e in expect) >= 1
    for i, e in enumerate(expect):
        np.testing.assert_allclose(dets[dets[:, 0] == i, 1:], e.numpy(), atol=0.05)
    # runtime overrides: conf 0.5 and one detection per image, the most confident one
    assert strict[:, 0].tolist() == [0.0, 1.0]
    np.testing.assert_allclose(strict[:, 1:], np.stack([e[0].numpy() for e in expect]), atol=0.05)


def test_ensemble_exports_as_one_file_and_wbf_is_refused(random_pt, tmp_path):
    from utils.inference.backends import load_backend

    file = export.run(weights=[str(random_pt)] * 2, include=["onnx"], imgsz=[64], save_dir=tmp_path)["onnx"]
    assert file.name == "rand_ensemble.onnx"
    backend = load_backend(file, torch.device("cpu"))
    model = load_export_model(str(random_pt), torch.device("cpu"))
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y, single = backend(x), model(x)
    assert y.shape[1] == 2 * single.shape[1]  # 'nms' mode: both members' candidates
    torch.testing.assert_close(y[:, single.shape[1] :], single, atol=2e-3, rtol=1e-4)
    assert backend.nl is None  # no TTA tail clipping on concatenated members
    # the metadata comes from the Ensemble itself, whoever exports it (export.py or benchmarks.py)
    meta = export_metadata(load_export_model([str(random_pt)] * 2, torch.device("cpu")), ExportOptions())
    assert meta["ensemble"] == [str(random_pt)] * 2 and meta["ensemble_mode"] == "nms"
    assert meta["stride"] == 32 and meta["strides"] == [32.0]
    with pytest.raises(ExportError, match="--ensemble-mode wbf .* cannot be exported"):
        export.run(weights=[str(random_pt)] * 2, include=["onnx"], ensemble_mode="wbf", save_dir=tmp_path)
    with pytest.raises(ExportError, match="PyTorch .*an Ensemble cannot be saved as one checkpoint"):
        export.run(weights=[str(random_pt)] * 2, include=["pt"], imgsz=[64], save_dir=tmp_path)


def device_constants(graph: torch._C.Graph) -> list:
    """Device values baked into a TorchScript graph (a file traced on cuda:0 would be pinned to cuda:0)."""
    nodes = graph.nodes()
    return [n.output().toIValue() for n in nodes if n.kind() == "prim::Constant" and n.outputsSize() == 1
            and n.output().type().kind() == "DeviceObjType"]  # fmt: skip


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.load is deprecated upstream
def test_torchscript_holds_no_device_constant_and_runs_after_loading_elsewhere(random_pt, exported):
    """The grids came from torch.arange(device=...), which the trace recorded as a constant ``cpu``."""
    module = torch.jit.load(str(exported["torchscript"]), map_location="cpu")
    assert device_constants(module.inlined_graph) == []
    model = load_export_model(str(random_pt), torch.device("cpu"))
    x = torch.rand(2, 3, 96, 64, generator=torch.Generator().manual_seed(2))  # another batch and shape
    with torch.no_grad():
        torch.testing.assert_close(module(x), model(x), atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("nms", [False, True])
def test_fp16_onnx_passes_the_full_checker_and_runs_in_onnxruntime(random_pt, tmp_path, nms):
    """fp16 grids went through ONNX ``Range``, which has no float16: ORT refused the file (INVALID_GRAPH).

    Built on the CPU (export.py asks for CUDA for --half; the graph is the same). With ``nms`` the export check
    used to feed fp32 images into the fp16 input.
    """
    import onnxruntime as ort

    from utils.export.formats import export_formats

    cpu = torch.device("cpu")
    model = load_export_model(str(random_pt), cpu)
    opts = ExportOptions(imgsz=(64, 96), half=True, dynamic=True, nms=nms, source=str(random_pt))
    file = export_formats(model, ["onnx"], tmp_path / "half", opts, cpu)["onnx"]  # includes the check vs PyTorch
    proto = onnx.load(str(file))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    session = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    x = torch.rand(1, 3, 96, 128, generator=torch.Generator().manual_seed(3))
    y = session.run(None, {"images": x.half().numpy()})[0]
    if nms:
        assert y.shape[1] == 7 and y.dtype == np.float32
    else:
        with torch.no_grad():
            ref = model(x)
        assert y.dtype == np.float16 and y.shape == tuple(ref.shape)
        assert np.abs(y.astype(np.float32) - ref.numpy()).max() < 5e-3 * (1 + float(ref.abs().max()))


def test_tensorrt_networks_use_explicit_batch_before_version_10():
    """TensorRT 7/8's ONNX parser refuses the implicit-batch network that ``create_network(0)`` makes there."""
    from types import SimpleNamespace

    from utils.export.formats import trt_network_flags

    flags = SimpleNamespace(EXPLICIT_BATCH=0)  # the enum value TensorRT 8 gives it
    assert trt_network_flags(SimpleNamespace(__version__="8.6.1", NetworkDefinitionCreationFlag=flags)) == 1
    assert trt_network_flags(SimpleNamespace(__version__="7.2.3.4", NetworkDefinitionCreationFlag=flags)) == 1
    assert trt_network_flags(SimpleNamespace(__version__="10.3.0")) == 0  # explicit batch is the only mode


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.load is deprecated upstream
def test_mean_mode_ensemble_traces(random_pt, tmp_path):
    """Under tracing the members' output shapes are tensors, so the layout check saw 'different' layouts and
    refused every --ensemble-mode mean/max export."""
    done = export.run(
        weights=[str(random_pt)] * 2,
        include=["torchscript", "onnx"],
        ensemble_mode="mean",
        imgsz=[64],
        save_dir=tmp_path,
    )  # fmt: skip  (each file is checked against PyTorch)
    module = torch.jit.load(str(done["torchscript"]))
    assert device_constants(module.inlined_graph) == []
    single = load_export_model(str(random_pt), torch.device("cpu"))
    x = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(module(x), single(x), atol=1e-3, rtol=1e-4)  # the mean of two equal members
