"""hubconf.py (torch.hub entry points), AutoShape and Detections."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import detect
from utils.checkpoints import CheckpointError
from utils.data.sources import SourceError
from utils.errors import UsageError
from utils.inference.detections import XYXY_COLUMNS

REPO = Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter whose working directory is outside the clone and whose sys.path never saw it.
HUB_SCRIPT = """
import json, sys, torch
from pathlib import Path
clone, weights, folder = sys.argv[1:4]
model = torch.hub.load(clone, "custom", path=weights, source="local", _verbose=False)
files = sorted(str(f) for f in Path(folder).glob("*.jpg"))
results = model(files, size=640)
table = results.pandas().xyxy[0]
print(json.dumps({"files": results.files, "xyxy": [x.tolist() for x in results.xyxy], "columns": list(table.columns),
                  "names": table["name"].tolist(), "sys_path_has_clone": any(Path(p or ".").resolve() == Path(clone)
                  for p in sys.path)}))
"""


def _detect_labels_as_xyxy(label_dir: Path, image: Path) -> np.ndarray:
    """detect.py --save-txt --save-conf lines (cls xywhn conf) -> ndarray[n, 6] (xyxy pixels, conf, cls)."""
    f = label_dir / f"{image.stem}.txt"
    if not f.exists():
        return np.zeros((0, 6))
    h, w = cv2.imread(str(image)).shape[:2]
    rows = np.loadtxt(f, ndmin=2)
    c, x, y, bw, bh, conf = rows.T
    return np.stack([(x - bw / 2) * w, (y - bh / 2) * h, (x + bw / 2) * w, (y + bh / 2) * h, conf, c], 1)


def test_hub_custom_from_outside_the_clone_matches_detect(yolov5n_pt, coco8, tmp_path):
    folder = coco8.parent / "images" / "train"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-c", HUB_SCRIPT, str(REPO), str(yolov5n_pt), str(folder)],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    hub = json.loads(proc.stdout.strip().splitlines()[-1])
    assert hub["columns"] == list(XYXY_COLUMNS)
    assert not hub["sys_path_has_clone"]  # torch.hub's temporary sys.path entry is gone, and nothing of ours stayed

    save_dir = detect.run(
        weights=[str(yolov5n_pt)],
        source=str(folder),
        project=tmp_path / "d",
        save_txt=True,
        save_conf=True,
        nosave=True,
    )
    images = sorted(folder.glob("*.jpg"))
    assert hub["files"] == [p.name for p in images]
    counts, worst = [], 0.0
    for image, boxes in zip(images, hub["xyxy"]):
        ours, theirs = np.array(boxes).reshape(-1, 6), _detect_labels_as_xyxy(save_dir / "labels", image)
        counts.append((len(ours), len(theirs)))
        assert len(ours) == len(theirs), image.name
        if len(ours):
            assert (ours[:, 5] == theirs[:, 5]).all()  # same classes in the same (confidence) order
            worst = max(worst, float(np.abs(ours[:, :4] - theirs[:, :4]).max()))
    print(f"boxes per image (hub, detect.py): {counts}; max corner difference {worst:.4f} px")
    assert sum(n for n, _ in counts) > 20 and worst <= 1.0
    assert hub["names"][0] in {"person", "bowl", "broccoli", "giraffe", "potted plant", "elephant", "zebra"}


@pytest.fixture(scope="module")
def hub_model(yolov5n_pt):
    return torch.hub.load(str(REPO), "custom", path=str(yolov5n_pt), source="local", _verbose=False, device="cpu")


@pytest.fixture(scope="module")
def image(coco128) -> Path:
    return sorted((coco128 / "images" / "train2017").glob("*.jpg"))[0]  # 000000000009.jpg: bowls, broccoli


def test_every_input_kind_gives_the_same_boxes(hub_model, image):
    rgb = cv2.imread(str(image))[..., ::-1].copy()
    tensor = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
    results = hub_model([str(image), Image.open(image), rgb, tensor, tensor[None].to(torch.uint8).mul(0)], size=320)
    assert len(results) == 5 and results.files[:3] == [image.name, image.name, "image2.jpg"]
    ref = results.xyxy[0]
    assert len(ref) >= 3
    for other in results.xyxy[1:3]:
        torch.testing.assert_close(other, ref)
    assert torch.allclose(results.xyxy[3][:, :4], ref[:, :4], atol=1.0)  # float->uint8 rounding of the tensor
    assert len(results.xyxy[4]) == 0  # a black image


def test_detections_formats_and_tables(hub_model, image):
    r = hub_model(str(image), size=320)
    h, w = r.ims[0].shape[:2]
    xyxy, xywh = r.xyxy[0], r.xywh[0]
    assert xyxy.shape[1] == 6 and (xyxy[:, 4].diff() <= 0).all()
    torch.testing.assert_close(xywh[:, 2], xyxy[:, 2] - xyxy[:, 0])
    torch.testing.assert_close(r.xyxyn[0][:, :4] * torch.tensor([w, h, w, h]), xyxy[:, :4])
    torch.testing.assert_close(r.xywhn[0][:, 4:], xyxy[:, 4:])
    table = r.pandas().xyxy[0]
    assert list(table.columns) == ["xmin", "ymin", "xmax", "ymax", "confidence", "class", "name"]
    assert list(r.pandas().xywh[0].columns)[:4] == ["xcenter", "ycenter", "width", "height"]
    assert table["class"].dtype == np.int64 and set(table["name"]) <= {"bowl", "broccoli", "orange", "dining table"}
    np.testing.assert_allclose(table[["xmin", "ymin", "xmax", "ymax"]].to_numpy(), xyxy[:, :4].numpy(), rtol=1e-6)
    text = str(r)
    assert text.startswith(f"image 1/1: {h}x{w} ") and "bowl" in text and "Speed: " in text
    assert [len(x) for x in r.tolist()] == [1] and len(r.tolist()[0].xyxy[0]) == len(xyxy)


def test_nms_attributes(hub_model, image):
    base = len(hub_model(str(image), size=320).xyxy[0])
    try:
        hub_model.classes = [45]  # bowl
        only = hub_model(str(image), size=320).xyxy[0]
        assert len(only) and (only[:, 5] == 45).all()
        hub_model.classes, hub_model.max_det = None, 1
        assert len(hub_model(str(image), size=320).xyxy[0]) == 1
        hub_model.max_det, hub_model.conf = 1000, 0.6
        assert len(hub_model(str(image), size=320).xyxy[0]) < base
    finally:
        hub_model.classes, hub_model.max_det, hub_model.conf = None, 1000, 0.25


def test_save_crop_render_show(hub_model, image, tmp_path, monkeypatch):
    r = hub_model([str(image)], size=320)
    original = r.ims[0].copy()
    save_dir = r.save(save_dir=tmp_path / "exp")
    saved = cv2.imread(str(save_dir / image.name))
    assert saved.shape == original.shape and not np.array_equal(saved[..., ::-1], original)
    assert np.array_equal(r.ims[0], original)  # save() draws on a copy
    crops = r.crop(save_dir=tmp_path / "exp")
    assert len(crops) == len(r.xyxy[0]) and crops[0]["label"].startswith(r.names[int(crops[0]["cls"])])
    assert (tmp_path / "exp2" / "crops" / r.names[int(crops[0]["cls"])] / image.name).is_file()
    x1, y1, x2, y2 = crops[0]["box"].tolist()
    assert abs(crops[0]["im"].shape[1] - ((x2 - x1) * 1.02 + 10)) <= 2
    shown = []
    monkeypatch.setattr(Image.Image, "show", lambda self, title=None: shown.append(title))
    r.show()
    assert shown == [image.name]
    assert not np.array_equal(r.render()[0], original) and r.ims[0] is not original


def test_official_name_from_the_working_directory_or_offline_error(yolov5n_pt, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "yolov5n.pt").symlink_to(yolov5n_pt)
    model = torch.hub.load(str(REPO), "yolov5n", source="local", device="cpu")
    out = capsys.readouterr().out
    assert "YOLOv5n summary: " in out and " 1867405 parameters" in out  # _verbose defaults to True, as upstream
    assert model.names[0] == "person" and model.stride == 32
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="yolov5s.pt: file not found and downloads are disabled"):
        torch.hub.load(str(REPO), "yolov5s", source="local", _verbose=False)
    with pytest.raises(UsageError, match="classes=10, pretrained=True gives a model to train.*autoshape=False"):
        torch.hub.load(str(REPO), "yolov5n", source="local", classes=10)
    trainable = torch.hub.load(str(REPO), "yolov5n", source="local", classes=10, autoshape=False, device="cpu")
    assert "Transferred 342/349 items from yolov5n.pt" in capsys.readouterr().out  # not: 3 head convs, anchors
    assert trainable.detect.nc == 10 and trainable(torch.zeros(1, 3, 64, 64))[0].shape[-1] == 15
    scratch = torch.hub.load(str(REPO), "yolov5s", source="local", pretrained=False, autoshape=False)
    assert sum(p.numel() for p in scratch.parameters()) == 7235389  # upstream's yolov5s: 7,235,389 parameters


def test_ensemble_tta_and_bare_model(yolov5n_pt, image, capsys):
    ens = torch.hub.load(str(REPO), "custom", path=[str(yolov5n_pt)] * 2, source="local")
    assert "parameters, " in capsys.readouterr().out.split("Ensemble created with ")[1]
    single = torch.hub.load(str(REPO), "custom", path=str(yolov5n_pt), source="local", _verbose=False)
    tta = torch.hub.load(str(REPO), "custom", path=str(yolov5n_pt), source="local", augment=True, _verbose=False)
    a, b, c = ens(str(image), size=320), single(str(image), size=320), tta(str(image), size=320, augment=True)
    torch.testing.assert_close(a.xyxy[0], b.xyxy[0])  # a duplicated member changes nothing under 'nms' mode
    assert len(c.xyxy[0]) != len(b.xyxy[0]) or not torch.allclose(c.xyxy[0], b.xyxy[0])  # TTA did run
    bare = torch.hub.load(str(REPO), "custom", path=str(yolov5n_pt), source="local", autoshape=False, _verbose=False)
    y = bare(torch.zeros(1, 3, 64, 64))
    assert y.shape == (1, 3 * (64 // 8) ** 2 + 3 * (64 // 16) ** 2 + 3 * (64 // 32) ** 2, 85)


def test_bad_inputs_are_one_line_errors(hub_model, tmp_path):
    with pytest.raises(UsageError, match="image of type dict"):
        hub_model({"a": 1})
    with pytest.raises(SourceError, match="missing.jpg: file not found"):
        hub_model(str(tmp_path / "missing.jpg"))
    with pytest.raises(SourceError, match=r"image URL http://127.0.0.1:9/x.jpg: could not be downloaded \("):
        hub_model("http://127.0.0.1:9/x.jpg")  # nothing listens on the discard port: refused at once, offline too
    with pytest.raises(UsageError, match="load the model with .*augment=True"):
        hub_model(np.zeros((64, 64, 3), np.uint8), augment=True)


def test_another_projects_utils_package_is_one_clear_error(tmp_path):
    (tmp_path / "utils").mkdir()
    (tmp_path / "utils" / "__init__.py").write_text("")
    script = f"import utils, torch; torch.hub.load({str(REPO)!r}, 'custom', path='x.pt', source='local')"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1 and last.startswith("ImportError: hubconf: a different 'utils' package is already")
    assert str(tmp_path / "utils") in last
