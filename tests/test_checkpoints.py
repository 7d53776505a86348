import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from models.yolo import DetectionModel
from utils import checkpoints
from utils.checkpoints import CheckpointError, load_model, read_checkpoint, save_atomic, save_checkpoint

REPO = Path(__file__).resolve().parents[1]


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_official_checkpoint_reads_names_stride_and_tensors(yolov5n_pt):
    ck = read_checkpoint(yolov5n_pt)
    assert ck["names"][0] == "person" and ck["names"][79] == "toothbrush"
    assert ck["stride"] == [8.0, 16.0, 32.0]
    assert ck["model_yaml"]["width_multiple"] == 0.25
    assert ck["state_dict"]["model.24.anchors"].shape == (3, 3, 2)
    assert set(ck["bn_eps"].values()) == {0.001}


def test_converted_checkpoint_is_bit_identical_and_weights_only(yolov5n_pt, coco128, tmp_path):
    import cv2

    from utils.data.augment import letterbox

    im = cv2.imread(str(sorted((coco128 / "images" / "train2017").glob("*.jpg"))[0]))
    x = torch.from_numpy(letterbox(im, 640)[0].transpose(2, 0, 1)[::-1].copy()).float()[None] / 255
    a = load_model(yolov5n_pt, fuse=False)
    path = save_checkpoint(a, tmp_path / "ours.pt", epoch=-1)
    raw = torch.load(path, weights_only=True)  # plain tensors + metadata
    assert raw["format"] == checkpoints.FORMAT and raw["names"][0] == "person"
    b = load_model(path, fuse=False)
    with torch.no_grad():
        assert torch.equal(a(x)[0], b(x)[0])
        assert torch.equal(load_model(yolov5n_pt)(x)[0], load_model(path)(x)[0])  # fused too


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"model": _Evil(marker)}, evil)
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(evil)
    msg = str(e.value)
    assert "\n" not in msg and str(evil) in msg and "system" in msg and "refusing" in msg
    assert not marker.exists()


def test_truncated_and_non_checkpoint_files_get_one_line_errors(yolov5n_pt, tmp_path):
    data = yolov5n_pt.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.pt") as e:
        read_checkpoint(cut)
    assert "\n" not in str(e.value)
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        read_checkpoint(text)
    other = tmp_path / "dict.pt"
    torch.save({"a": torch.zeros(1)}, other)
    with pytest.raises(CheckpointError, match="not a YOLOv5 checkpoint"):
        read_checkpoint(other)


def test_damaged_member_in_zip_is_one_line(yolov5n_pt, tmp_path):
    bad = tmp_path / "bad.pt"
    with zipfile.ZipFile(yolov5n_pt) as zin, zipfile.ZipFile(bad, "w") as zout:
        for item in zin.infolist():
            payload = zin.read(item)
            if item.filename.endswith("data.pkl"):
                payload = payload[:100]
            zout.writestr(item, payload)
    with pytest.raises(CheckpointError, match="bad.pt"):
        read_checkpoint(bad)


def test_official_checkpoint_loads_from_any_directory(yolov5n_pt, tmp_path):
    code = (
        "import sys; sys.path.insert(0, %r); from utils.checkpoints import load_model; "
        "m = load_model(%r); print(len(m.names))"
    ) % (str(REPO), str(yolov5n_pt))
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("80")


def test_atomic_save_keeps_previous_file_on_crash(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_atomic({"epoch": 1}, path)

    def crash(obj, fh, **kw):
        fh.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(RuntimeError):
        save_atomic({"epoch": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp files left


def test_missing_weights_offline_is_one_line(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("YOLO_OFFLINE", raising=False)  # CI sets it; this test fakes the network itself

    def refuse(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(checkpoints.urllib.request, "urlopen", refuse)
    with pytest.raises(CheckpointError, match=r"yolov5s.pt: file not found and could not be downloaded from https://"):
        checkpoints.attempt_download("yolov5s.pt")
    assert not (tmp_path / "yolov5s.pt").exists() and not (tmp_path / ".yolov5s.pt.part").exists()
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="downloads are disabled"):
        checkpoints.attempt_download("yolov5m.pt")
    with pytest.raises(CheckpointError, match="mine.pt: file not found"):
        checkpoints.attempt_download("mine.pt")


def test_shape_mismatch_is_clear(tmp_path):
    m = DetectionModel("yolov5n.yaml", nc=3)
    ck = checkpoints.checkpoint_dict(m)
    ck["state_dict"]["model.0.conv.weight"] = torch.zeros(1)
    torch.save(ck, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="model.0.conv.weight has shape"):
        load_model(tmp_path / "x.pt")
