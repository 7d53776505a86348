"""Tests for utils/data/sources.py: LoadImages over files/folders/globs/lists/videos, LoadStreams, classify_source."""

from __future__ import annotations

import socket
from pathlib import Path

import cv2
import numpy as np
import pytest

from utils.data.sources import IMG_FORMATS, VID_FORMATS, LoadImages, LoadStreams, SourceError, classify_source

N_FRAMES = 10


def frame_value(i: int) -> int:
    """Grey level written into video frame ``i`` so tests can tell which frame was read."""
    return 20 * i + 10


@pytest.fixture()
def media(tmp_path: Path) -> dict[str, Path]:
    """A folder with a 97x203 PNG (pure blue), a 300x150 JPG and a 10-frame 64x48 MJPG video (frame i = grey 20i+10)."""
    folder = tmp_path / "media"
    folder.mkdir()
    png = folder / "a.png"
    blue = np.zeros((97, 203, 3), np.uint8)
    blue[..., 0] = 255  # BGR: pure blue
    assert cv2.imwrite(str(png), blue)
    jpg = folder / "b.jpg"
    rng = np.random.default_rng(0)
    assert cv2.imwrite(str(jpg), rng.integers(0, 255, (300, 150, 3), dtype=np.uint8))
    video = folder / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 30, (64, 48))
    for i in range(N_FRAMES):
        writer.write(np.full((48, 64, 3), frame_value(i), np.uint8))
    writer.release()
    (folder / "notes.csv").write_text("ignored: not an image or video\n")
    return {"folder": folder, "png": png, "jpg": jpg, "video": video, "tmp": tmp_path}


def test_formats_are_lowercase_without_dots():
    assert "jpg" in IMG_FORMATS and "pfm" in IMG_FORMATS and len(IMG_FORMATS) == 10
    assert "mp4" in VID_FORMATS and "ts" in VID_FORMATS and len(VID_FORMATS) == 11
    assert all(f == f.lower() and "." not in f for f in IMG_FORMATS + VID_FORMATS)


@pytest.mark.parametrize(
    "source, kind",
    [
        ("0", "stream"),
        ("12", "stream"),
        ("rtsp://example.com/media.mp4", "files"),  # URL naming a video file
        ("rtsp://192.168.1.64/1", "stream"),
        ("rtmp://host/live", "stream"),
        ("http://host/cam.mjpg", "stream"),
        ("https://host/zidane.jpg", "files"),
        ("https://host/clip.MP4?token=abc", "files"),
        ("https://www.youtube.com/watch?v=abc", "stream"),
        ("list.streams", "stream"),
        ("data/images", "files"),
        ("data/images/*.jpg", "files"),
        ("bus.jpg", "files"),
        ("paths.txt", "files"),
    ],
)
def test_classify_source(source: str, kind: str):
    assert classify_source(source) == kind


def test_folder_images_then_video_with_yolov5_prefixes(media):
    ds = LoadImages(media["folder"])
    png, jpg, video = (str(media[k].resolve()) for k in ("png", "jpg", "video"))
    assert len(ds) == ds.nf == 3 and ds.bs == 1
    assert ds.files == [png, jpg, video] and ds.video_flag == [False, False, True]
    items = list(ds)
    assert len(items) == 2 + N_FRAMES
    assert [it[4] for it in items[:3]] == [
        f"image 1/3 {png}: ",
        f"image 2/3 {jpg}: ",
        f"video 3/3 (1/{N_FRAMES}) {video}: ",
    ]
    assert items[-1][4] == f"video 3/3 ({N_FRAMES}/{N_FRAMES}) {video}: "
    assert items[0][3] is None and isinstance(items[-1][3], cv2.VideoCapture)
    assert ds.mode == "video" and ds.frame == N_FRAMES and ds.frames == N_FRAMES


def test_letterbox_shapes_and_rgb_order(media):
    path, im, im0, _, _ = next(iter(LoadImages(media["png"])))
    # 97x203 -> scale 640/203 -> 306x640, height padded to the next multiple of 32 -> 320
    assert im.shape == (3, 320, 640) and im.dtype == np.uint8 and im.flags["C_CONTIGUOUS"]
    assert im0.shape == (97, 203, 3) and tuple(im0[50, 100]) == (255, 0, 0)  # original stays BGR
    assert tuple(im[:, 160, 320]) == (0, 0, 255)  # network input is RGB
    assert tuple(im[:, 0, 320]) == (114, 114, 114)  # 7 rows of padding on top
    _, im, _, _, _ = next(iter(LoadImages(media["jpg"])))
    assert im.shape == (3, 640, 320)
    _, im, _, _, _ = next(iter(LoadImages(media["jpg"], img_size=320, auto=False)))
    assert im.shape == (3, 320, 320)
    _, im, _, _, _ = next(iter(LoadImages(media["png"], img_size=(256, 320), auto=False)))
    assert im.shape == (3, 256, 320)


def test_transforms_replace_letterbox(media):
    _, im, im0, _, _ = next(iter(LoadImages(media["png"], transforms=lambda rgb: rgb.mean(axis=(0, 1)))))
    assert im.tolist() == [0.0, 0.0, 255.0] and im0.shape == (97, 203, 3)  # transforms get RGB HWC


def test_video_frames_and_vid_stride(media):
    means = [im0.mean() for _, _, im0, _, _ in LoadImages(media["video"], img_size=64)]
    assert len(means) == N_FRAMES
    np.testing.assert_allclose(means, [frame_value(i) for i in range(N_FRAMES)], atol=5)

    ds = LoadImages(media["video"], img_size=64, vid_stride=2)
    items = list(ds)
    assert len(items) == N_FRAMES // 2 and ds.frames == N_FRAMES // 2
    # every second frame: grab() skips frame 0, 2, ... and frames 1, 3, ... are decoded
    np.testing.assert_allclose([it[2].mean() for it in items], [frame_value(i) for i in range(1, 10, 2)], atol=5)
    assert items[-1][4].startswith("video 1/1 (5/5) ")
    assert items[0][1].shape == (3, 64, 64)  # 64x48 padded to 64x64 by stride 32


def test_iterating_twice_restarts(media):
    ds = LoadImages(media["folder"])
    assert len(list(ds)) == len(list(ds)) == 2 + N_FRAMES


def test_glob_txt_list_and_list_inputs(media):
    folder = media["folder"]
    assert LoadImages(str(folder / "*.png")).files == [str(media["png"].resolve())]
    assert LoadImages(str(folder / "*.*")).nf == 3  # the .csv is filtered out

    lists = media["tmp"] / "lists"
    lists.mkdir()
    txt = lists / "paths.txt"
    txt.write_text(f"# comment\n../media/b.jpg\n\n{media['video'].resolve()}\n")
    ds = LoadImages(txt)
    assert ds.files == [str(media["jpg"].resolve()), str(media["video"].resolve())]
    assert ds.ni == 1 and ds.nv == 1

    ds = LoadImages([media["png"], str(media["jpg"])])
    assert ds.nf == 2 and not any(ds.video_flag)


def test_corrupt_image_raises_or_is_skipped(media, capsys):
    bad = media["folder"] / "ab.jpg"
    bad.write_bytes(np.random.default_rng(1).integers(0, 256, 500, dtype=np.uint8).tobytes())
    with pytest.raises(SourceError, match="corrupt image .*ab.jpg: cannot be decoded"):
        list(LoadImages(bad))
    empty = media["tmp"] / "empty.png"
    empty.touch()
    with pytest.raises(SourceError, match="corrupt image .*empty.png: empty file"):
        list(LoadImages(empty))

    capsys.readouterr()
    items = list(LoadImages(media["folder"], skip_corrupt=True))
    assert [Path(it[0]).name for it in items[:2]] == ["a.png", "b.jpg"]  # ab.jpg sorts between them
    assert len(items) == 2 + N_FRAMES
    assert items[1][4].startswith("image 3/4 ")  # the skipped file still counts
    warnings = [line for line in capsys.readouterr().out.splitlines() if "skipping corrupt image" in line]
    assert (
        len(warnings) == 1 and warnings[0].startswith("WARNING ⚠️ skipping corrupt image ") and "ab.jpg" in warnings[0]
    )


def test_unopenable_video_raises(media):
    bad = media["folder"] / "broken.mp4"
    bad.write_bytes(b"not a video at all")
    with pytest.raises(SourceError, match="corrupt video .*broken.mp4: cannot be opened"):
        list(LoadImages(bad))


def test_bad_paths_raise_one_line_errors(media, tmp_path):
    missing = tmp_path / "nope.jpg"
    with pytest.raises(SourceError, match="nope.jpg does not exist") as err:
        LoadImages(missing)
    assert "\n" not in str(err.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceError, match="no images or videos found in .*empty"):
        LoadImages(empty)
    with pytest.raises(SourceError, match="no images or videos found"):
        LoadImages(str(media["folder"] / "*.gif"))
    with pytest.raises(SourceError, match="notes.csv is not a supported image or video"):
        LoadImages(media["folder"] / "notes.csv")
    txt = tmp_path / "list.txt"
    txt.write_text("missing.png\n")
    with pytest.raises(SourceError, match=r"missing.png \(listed in .*list.txt\) does not exist"):
        LoadImages(txt)
    with pytest.raises(SourceError, match="URLs are not downloaded"):
        LoadImages("https://host/zidane.jpg")


def test_streams_unopenable_sources_raise(media, tmp_path):
    with pytest.raises(SourceError, match=r"stream rtsp://127.0.0.1:9/x cannot be opened"):
        LoadStreams("rtsp://127.0.0.1:9/x", timeout=2)
    with pytest.raises(SourceError, match="notes.csv cannot be opened"):
        LoadStreams(str(media["folder"] / "notes.csv"), timeout=2)
    with pytest.raises(SourceError, match=r"nope.mp4 cannot be opened .*\(no such file\)"):
        LoadStreams(str(tmp_path / "nope.mp4"), timeout=2)
    with pytest.raises(SourceError, match="YouTube sources are not supported"):
        LoadStreams("https://youtu.be/abc", timeout=2)
    empty = tmp_path / "none.streams"
    empty.write_text("\n# nothing\n")
    with pytest.raises(SourceError, match="no streams listed"):
        LoadStreams(str(empty))


def test_streams_open_timeout_on_silent_server():
    # A server that accepts TCP but never answers: only the open timeout can end the wait
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        url = f"rtsp://127.0.0.1:{server.getsockname()[1]}/live"
        with pytest.raises(SourceError, match=f"stream {url} cannot be opened or gave no frame within 1 s"):
            LoadStreams(url, timeout=1)


def test_streams_over_video_file(media):
    with LoadStreams(str(media["video"]), img_size=128) as ds:
        assert ds.bs == 1 and ds.frames == [N_FRAMES] and ds.fps == [30.0]
        batches = list(ds)
    assert 1 <= len(batches) <= N_FRAMES
    for sources, im, im0s, cap, s in batches:
        assert sources == [str(media["video"])] and cap is None and s == ""
        assert im.shape == (1, 3, 96, 128) and im.dtype == np.uint8 and im.flags["C_CONTIGUOUS"]
        assert len(im0s) == 1 and im0s[0].shape == (48, 64, 3)
    means = [b[2][0].mean() for b in batches]
    assert means == sorted(means)  # frames arrive in order, each at most once
    assert abs(means[-1] - frame_value(N_FRAMES - 1)) < 5  # the last frame is always delivered
    assert not any(t.is_alive() for t in ds.threads)


def test_streams_file_and_close(media, tmp_path):
    listing = tmp_path / "two.streams"
    listing.write_text(f"{media['video']}\n{media['video']}\n")
    ds = LoadStreams(str(listing), img_size=128)
    sources, im, im0s, _, _ = next(iter(ds))
    assert ds.bs == len(ds) == 2 and len(sources) == 2 and im.shape == (2, 3, 96, 128) and len(im0s) == 2
    ds.close()
    assert not any(t.is_alive() for t in ds.threads)
    with pytest.raises(StopIteration):
        next(ds)
