"""Tests for utils/inference/backends.py and exported weights in utils/inference/loader.py, val.py and detect.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import detect
import export
import val
from utils.data.augment import letterbox
from utils.errors import UsageError
from utils.inference.backends import (
    BackendError,
    OnnxBackend,
    OpenVINOBackend,
    PyTorchBackend,
    TorchScriptBackend,
    backend_class,
    decode_metadata,
    load_backend,
)
from utils.inference.loader import InferenceOptions, load_inference_model
from utils.nms import non_max_suppression

CPU = torch.device("cpu")
IMAGES = ("000000000009.jpg", "000000000025.jpg", "000000000030.jpg")


@pytest.fixture(scope="module")
def onnx_files(yolov5n_pt, tmp_path_factory) -> dict[str, Path]:
    """yolov5n as a fixed 64x64 batch-1 ONNX (--no-dynamic), a default (dynamic) ONNX and a fixed 64x64 OpenVINO."""
    out = tmp_path_factory.mktemp("exports")
    kw = dict(weights=str(yolov5n_pt), imgsz=[64])
    fixed = export.run(include=["onnx", "openvino"], dynamic=False, save_dir=out / "fixed", **kw)
    dynamic = export.run(include=["onnx"], save_dir=out / "dyn", **kw)
    return {"fixed": fixed["onnx"], "openvino": fixed["openvino"], "dynamic": dynamic["onnx"]}


def test_decode_metadata_reads_ours_and_upstream_literals():
    ours = decode_metadata({"names": '{"0": "person", "1": "bicycle"}', "stride": "32", "imgsz": "[640, 480]"})
    assert ours == {"names": {0: "person", 1: "bicycle"}, "stride": 32, "imgsz": [640, 480]}
    upstream = decode_metadata({"names": "{0: 'person', 1: 'bicycle'}", "stride": "32", "author": "someone"})
    assert upstream == {"names": {0: "person", 1: "bicycle"}, "stride": 32, "author": "someone"}
    assert decode_metadata({"names": '["a", "b"]'})["names"] == {0: "a", 1: "b"}


def test_backend_table_by_suffix():
    assert backend_class("w/yolov5n.pt") is PyTorchBackend
    assert backend_class("w/yolov5n.torchscript") is TorchScriptBackend
    assert backend_class("w/YOLOV5N.ONNX") is OnnxBackend
    assert backend_class("w/yolov5n_openvino_model/") is OpenVINOBackend
    assert backend_class("w/yolov5n_openvino_model/yolov5n.xml") is OpenVINOBackend
    with pytest.raises(BackendError, match=r"yolov5n.engine: no inference backend .* \*\.onnx, \*_openvino_model/"):
        backend_class("yolov5n.engine")


def test_fixed_shape_backends_take_any_batch_but_only_their_size(onnx_files, yolov5n_pt):
    model = PyTorchBackend(yolov5n_pt, CPU)
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x)
    for key in ("fixed", "openvino"):
        backend = load_backend(onnx_files[key], CPU)
        assert backend.batch == 1 and not backend.supports_rect and backend.imgsz == (64, 64)
        assert backend.names[0] == "person" and backend.stride.tolist() == [8.0, 16.0, 32.0]
        torch.testing.assert_close(backend(x), ref, atol=5e-3, rtol=1e-4)  # three batch-1 runs
        with pytest.raises(BackendError, match="fixed input 64x64 but got 64x96; use --imgsz 64"):
            backend(torch.zeros(1, 3, 64, 96))


def test_load_inference_model_refuses_what_exports_cannot_do(onnx_files, yolov5n_pt):
    fixed = str(onnx_files["fixed"])
    with pytest.raises(UsageError, match=r"--augment: .*yolov5n.onnx has a fixed 64x64 input; re-export it with"):
        load_inference_model(fixed, CPU, augment=True, imgsz=64)
    with pytest.raises(UsageError, match="--imgsz 320: .* was exported with a fixed 64x64 input; use --imgsz 64"):
        load_inference_model([str(yolov5n_pt), fixed], CPU, imgsz=320)
    with pytest.raises(UsageError, match="--prune: .* is an exported model; prune at export"):
        load_inference_model(fixed, CPU, prune=0.3, imgsz=64)
    model = load_inference_model([str(yolov5n_pt), fixed], CPU, imgsz=64)
    assert not model.supports_rect and model.fixed_imgsz == (64, 64) and model.names[79] == "toothbrush"


def test_tta_with_a_dynamic_export_matches_pytorch(onnx_files, yolov5n_pt):
    x = torch.rand(1, 3, 128, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = load_inference_model(str(yolov5n_pt), CPU, augment=True, imgsz=128)(x)[0]
        got = load_inference_model(str(onnx_files["dynamic"]), CPU, augment=True, imgsz=128)(x)[0]
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, atol=5e-3, rtol=1e-4)


def _letterboxed(coco128: Path, size: int, auto: bool) -> torch.Tensor:
    ims = [cv2.imread(str(coco128 / "images" / "train2017" / n)) for n in IMAGES]
    return [torch.from_numpy(letterbox(im, size, auto=auto)[0][:, :, ::-1].copy()).permute(2, 0, 1) for im in ims]


def test_onnx_gives_the_pytorch_boxes_val_style(onnx_files, yolov5n_pt, coco128):
    """Acceptance 3, as val.py and detect.py call it: load_inference_model + non_max_suppression, within 1 px."""
    pt = load_inference_model(str(yolov5n_pt), CPU, imgsz=320)
    onx = load_inference_model(str(onnx_files["dynamic"]), CPU, imgsz=320)
    for im in _letterboxed(coco128, 320, auto=True):  # rectangular inputs (e.g. 320x256)
        x = im[None].float() / 255
        with torch.no_grad():
            a = non_max_suppression(pt(x), 0.25, 0.45)[0]
            b = non_max_suppression(onx(x), 0.25, 0.45)[0]
        assert len(a) == len(b) >= 1
        assert (a[:, 5] == b[:, 5]).all() and (a[:, :4] - b[:, :4]).abs().max() <= 1.0
        assert (a[:, 4] - b[:, 4]).abs().max() < 1e-3


def _read_boxes(label_dir: Path, name: str, shape: tuple[int, int]) -> np.ndarray:
    """detect.py --save-txt --save-conf rows (cls, xywhn, conf) -> ndarray[n, 6] (cls, xyxy pixels, conf)."""
    rows = np.loadtxt(label_dir / f"{Path(name).stem}.txt", ndmin=2)
    h, w = shape
    xy, wh = rows[:, 1:3] * (w, h), rows[:, 3:5] * (w, h)
    return np.concatenate((rows[:, :1], xy - wh / 2, xy + wh / 2, rows[:, 5:6]), 1)


def test_detect_run_onnx_same_boxes_as_pt(onnx_files, yolov5n_pt, coco128, tmp_path):
    """Acceptance 3 through detect.run on a folder: .onnx boxes equal the .pt boxes within 1 px."""
    src = tmp_path / "images"
    src.mkdir()
    for n in IMAGES:
        shutil.copy(coco128 / "images" / "train2017" / n, src / n)
    dirs = {}
    for key, w in (("pt", yolov5n_pt), ("onnx", onnx_files["dynamic"])):
        dirs[key] = detect.run(
            weights=[str(w)], source=str(src), imgsz=320, save_txt=True, save_conf=True, nosave=True,
            project=tmp_path / "runs", name=key, device="cpu",
        )  # fmt: skip
    for n in IMAGES:
        shape = cv2.imread(str(src / n)).shape[:2]
        a, b = (_read_boxes(d / "labels", n, shape) for d in (dirs["pt"], dirs["onnx"]))
        assert a.shape == b.shape and len(a) >= 1
        assert (a[:, 0] == b[:, 0]).all() and np.abs(a[:, 1:5] - b[:, 1:5]).max() <= 1.0


def test_val_static_batch1_export_at_any_batch_size(onnx_files, coco8, tmp_path):
    """A fixed batch-1 export validates at --batch-size 4 (image by image) with the batch-1 figures."""
    kw = dict(data=str(coco8), imgsz=64, noplots=True, workers=0, project=tmp_path, device="cpu")
    r1 = val.run(weights=[str(onnx_files["fixed"])], batch_size=1, **kw)[0]
    r4 = val.run(weights=[str(onnx_files["fixed"])], batch_size=4, **kw)[0]
    assert r1.seen == r4.seen == 8 and r1.map > 0.05
    assert (r1.mp, r1.mr, r1.map50, r1.map) == pytest.approx((r4.mp, r4.mr, r4.map50, r4.map), abs=1e-6)


def test_val_mixed_format_ensemble(onnx_files, yolov5n_pt, coco8, tmp_path):
    """Acceptance 6: a .pt + .onnx ensemble of the same network validates like the network alone."""
    kw = dict(data=str(coco8), imgsz=64, batch_size=4, noplots=True, workers=0, project=tmp_path, device="cpu")
    single = val.run(weights=[str(yolov5n_pt)], **kw)[0]
    mixed = val.run(weights=[str(yolov5n_pt), str(onnx_files["dynamic"])], **kw)[0]
    assert mixed.map == pytest.approx(single.map, abs=0.01) and mixed.map50 == pytest.approx(single.map50, abs=0.01)


def test_cpu_half_runs_every_pytorch_member_in_bf16_with_fp32_boxes(yolov5n_pt, coco128, monkeypatch):
    """Ensemble + TTA under --half: bf16 convolutions, but boxes decoded in fp32 (bf16 would move them by pixels)."""
    monkeypatch.setattr("utils.inference.loader.cpu_has_native_bf16", lambda: True)
    cpu = torch.device("cpu")
    kw = dict(augment=True, imgsz=320)
    ref = load_inference_model([str(yolov5n_pt)] * 2, cpu, **kw)
    bf16 = load_inference_model([str(yolov5n_pt)] * 2, cpu, half=True, **kw)
    assert (
        not bf16.half_precision
        and [m.autocast_dtype for m in bf16.modules() if isinstance(m, PyTorchBackend)] == [torch.bfloat16] * 2
    )
    im = letterbox(cv2.imread(str(next((coco128 / "images" / "train2017").glob("*.jpg")))), 320, auto=False)[0]
    x = torch.from_numpy(np.ascontiguousarray(im[..., ::-1].transpose(2, 0, 1)))[None].float() / 255
    with torch.inference_mode():
        y_ref, y_bf16 = (y[0] if isinstance(y, tuple) else y for y in (ref(x), bf16(x)))
    assert y_bf16.dtype == torch.float32
    d_ref, d_bf16 = (non_max_suppression(y, 0.25, 0.45)[0] for y in (y_ref, y_bf16))
    assert len(d_ref) and len(d_ref) == len(d_bf16)
    box_err = (d_ref[:, :4] - d_bf16[:, :4]).abs()
    assert box_err.mean() < 0.3 and box_err.max() < 3.2  # pixels at 320; decoded in bf16 they moved 5+ px
    assert (d_ref[:, 4] - d_bf16[:, 4]).abs().max() < 0.05


def test_large_batches_run_in_chunks_with_the_same_candidates(yolov5n_pt, monkeypatch):
    """val.py's batch 32 runs as model calls of at most ``chunk_pixels`` on the CPU; results equal one call per
    image."""
    model = load_inference_model(str(yolov5n_pt), torch.device("cpu"), imgsz=64)
    calls = []
    monkeypatch.setattr(model, "chunk_pixels", 4 * 64 * 96 + 100)
    assert model.chunk_size(640, 640, torch.device("cpu")) == 1 and model.chunk_size(64, 96, torch.device("meta")) == 8
    real = model.net.forward
    monkeypatch.setattr(model.net, "forward", lambda x: calls.append(len(x)) or real(x))
    x = torch.rand(10, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        y = model(x)
        single = torch.cat([real(x[i : i + 1]) for i in range(10)])
    assert calls == [4, 4, 2] and y.shape == single.shape == (10, 378, 85)
    torch.testing.assert_close(y, single, atol=1e-4, rtol=1e-4)


def test_inference_options_from_flat_keywords():
    opts = InferenceOptions.from_kwargs(augment=True, ensemble_mode="wbf", prune=0.3, imgsz=320)
    assert (opts.augment, opts.ensemble_mode, opts.prune, opts.imgsz, opts.half) == (True, "wbf", 0.3, 320, False)
    with pytest.raises(TypeError, match=r"\['tta_scale'\]"):
        InferenceOptions.from_kwargs(tta_scale=[1.0])  # a typo is named, never ignored


def test_exported_only_models_run_torch_on_one_thread(onnx_files, yolov5n_pt):
    """ONNX Runtime / OpenVINO get the cores; torch's pre/post-processing uses one thread meanwhile, then it is back."""
    cpu, n = torch.device("cpu"), torch.get_num_threads()
    exported = load_inference_model([str(onnx_files["dynamic"]), str(onnx_files["openvino"])], cpu, imgsz=64)
    mixed = load_inference_model([str(onnx_files["dynamic"]), str(yolov5n_pt)], cpu, imgsz=64)
    with exported.runtime_threads():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == n
    with mixed.runtime_threads():
        assert torch.get_num_threads() == n
