import cv2
import numpy as np
import torch

import detect
from utils.inference.predict import describe


def test_detect_folder_saves_images_labels_and_crops(yolov5n_pt, coco8, tmp_path, capsys):
    folder = coco8.parent / "images" / "train"
    save_dir = detect.run(
        weights=[str(yolov5n_pt)],
        source=str(folder),
        imgsz=320,
        project=tmp_path,
        save_txt=True,
        save_crop=True,
        device="cpu",
    )
    out = capsys.readouterr().out
    images = sorted(folder.glob("*.jpg"))
    assert sorted(p.name for p in save_dir.glob("*.jpg")) == [p.name for p in images]
    first = [line for line in out.splitlines() if line.startswith("image 1/8 ")][0]
    assert first.endswith("ms") and "bowls" in first and ": 256x320 " in first
    assert "Speed: " in out and f"Results saved to {save_dir}" in out
    labels = list((save_dir / "labels").glob("*.txt"))
    n_with_dets = sum(1 for line in out.splitlines() if line.startswith("image ") and "(no detections)" not in line)
    assert len(labels) == n_with_dets > 0
    assert (save_dir / "crops" / "person").is_dir()
    annotated = cv2.imread(str(save_dir / images[0].name))
    assert annotated.shape == cv2.imread(str(images[0])).shape
    assert not np.array_equal(annotated, cv2.imread(str(images[0])))  # boxes were drawn


def test_detect_video_and_describe(yolov5n_pt, tmp_path, coco128):
    im = cv2.imread(str(sorted((coco128 / "images" / "train2017").glob("*.jpg"))[0]))
    video = tmp_path / "clip.avi"
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (im.shape[1], im.shape[0]))
    for _ in range(4):
        w.write(im)
    w.release()
    save_dir = detect.run(
        weights=[str(yolov5n_pt)],
        source=str(video),
        imgsz=160,
        project=tmp_path / "r",
        nosave=False,
        vid_stride=2,
        save_txt=True,
    )
    assert (save_dir / "clip.mp4").is_file()
    assert len(list((save_dir / "labels").glob("clip_*.txt"))) >= 1
    det = torch.tensor([[0, 0, 1, 1, 0.9, 0], [0, 0, 1, 1, 0.8, 0], [0, 0, 1, 1, 0.8, 27]])
    assert describe(det, {0: "person", 27: "tie"}) == "2 persons, 1 tie"
    assert describe(torch.zeros(0, 6), {}) == "(no detections)"
