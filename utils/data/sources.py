"""Input sources for inference: image/video files (``LoadImages``) and live streams (``LoadStreams``).

Both yield ``(path, im, im0, cap, s)`` tuples like YOLOv5's loaders: ``im`` is the letterboxed network input
(RGB, CHW uint8, contiguous) and ``im0`` the original BGR frame, so detections made in letterboxed pixel space
can be mapped back with ``utils.boxes.scale_boxes_to_original(im.shape[1:], boxes, im0.shape)``.
"""

from __future__ import annotations

import glob
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from urllib.parse import urlparse

import cv2
import numpy as np

from utils.data.augment import letterbox
from utils.errors import UserError
from utils.log import LOGGER

IMG_FORMATS = ("bmp", "dng", "jpeg", "jpg", "mpo", "png", "tif", "tiff", "webp", "pfm")
VID_FORMATS = ("asf", "avi", "gif", "m4v", "mkv", "mov", "mp4", "mpeg", "mpg", "ts", "wmv")
STREAM_PREFIXES = ("rtsp://", "rtmp://", "http://", "https://")


class SourceError(UserError):
    """An input source that cannot be used; the message is one line naming the source and the problem."""


def _suffix(path: str) -> str:
    """Lower-case extension without the dot; for URLs the query string is ignored."""
    if path.lower().startswith(STREAM_PREFIXES):
        path = urlparse(path).path
    return Path(path).suffix[1:].lower()


def classify_source(source: str | Path | int) -> str:
    """Return ``'stream'`` for webcams, stream URLs and ``.streams`` lists, else ``'files'``.

    A digit string (``'0'``) is a webcam index. An rtsp/rtmp/http(s) URL is a stream unless its path ends in an
    image or video extension (then it names a file). Files, folders, globs and ``.txt`` lists are ``'files'``.
    """
    s = str(source).strip()
    is_url = s.lower().startswith(STREAM_PREFIXES)
    names_file = _suffix(s) in IMG_FORMATS + VID_FORMATS
    if s.isnumeric() or s.lower().endswith(".streams") or (is_url and not names_file):
        return "stream"
    return "files"


def _supported_list() -> str:
    return f"images: {', '.join(IMG_FORMATS)}; videos: {', '.join(VID_FORMATS)}"


def _expand(entry: str | Path, base: Path | None = None, listed_in: str = "") -> list[str]:
    """Expand one path, folder, glob or ``.txt`` list into the supported files it names (sorted, absolute)."""
    p = str(entry).strip()
    where = f" (listed in {listed_in})" if listed_in else ""
    if p.lower().startswith(STREAM_PREFIXES):
        raise SourceError(f"{p}{where}: URLs are not downloaded here; download the file first or pass it as a stream")
    if base is not None and not os.path.isabs(os.path.expanduser(p)):
        p = str(base / p)
    p = str(Path(os.path.expanduser(p)).resolve())
    if "*" in p:
        found = [f for f in sorted(glob.glob(p, recursive=True)) if os.path.isfile(f)]
    elif os.path.isdir(p):
        found = sorted(str(f) for f in Path(p).iterdir() if f.is_file())  # non-recursive, like YOLOv5
    elif os.path.isfile(p):
        if _suffix(p) == "txt":
            lines = [ln.strip() for ln in Path(p).read_text().splitlines()]
            files = [f for ln in lines if ln and not ln.startswith("#") for f in _expand(ln, Path(p).parent, p)]
            if not files:
                raise SourceError(f"no images or videos found in {p}; supported formats are {_supported_list()}")
            return files
        if _suffix(p) not in IMG_FORMATS + VID_FORMATS:
            raise SourceError(
                f"{p}{where} is not a supported image or video; supported formats are {_supported_list()}"
            )
        return [p]
    else:
        raise SourceError(f"{p}{where} does not exist")
    files = [f for f in found if _suffix(f) in IMG_FORMATS + VID_FORMATS]
    if not files:
        raise SourceError(f"no images or videos found in {p}{where}; supported formats are {_supported_list()}")
    return files


class LoadImages:
    """Iterate over images and video frames from files, folders, globs, ``.txt`` lists or a list of those.

    Each step yields ``(path, im, im0, cap, s)``:
        path: absolute file path (str).
        im: ``np.ndarray[3, h, w]`` uint8 RGB, contiguous, letterboxed to ``img_size`` (``h, w`` multiples of
            ``stride`` when ``auto``, exactly ``img_size`` otherwise); ``transforms(rgb_hwc)`` output if given.
        im0: original ``np.ndarray[H, W, 3]`` uint8 BGR image or frame.
        cap: the open ``cv2.VideoCapture`` for videos, ``None`` for images.
        s: log prefix, ``"image i/n path: "`` or ``"video i/n (frame/frames) path: "`` where ``i/n`` counts
            files (images first, then videos, each group sorted) as YOLOv5 does.
    """

    bs = 1

    def __init__(
        self,
        path: str | Path | Sequence[str | Path],
        img_size: int | tuple[int, int] = 640,
        stride: int = 32,
        auto: bool = True,
        vid_stride: int = 1,
        transforms: Callable[[np.ndarray], np.ndarray] | None = None,
        skip_corrupt: bool = False,
    ) -> None:
        """Find the files; raises ``SourceError`` for missing paths or when nothing usable is found.

        Args:
            img_size: letterbox target, an int for a square or ``(h, w)``.
            vid_stride: yield every ``vid_stride``-th video frame.
            skip_corrupt: log a warning and move on instead of raising for undecodable images/unopenable videos.
        """
        entries = [path] if isinstance(path, str | Path) else list(path)
        files = [f for e in entries for f in _expand(e)]
        images = [f for f in files if _suffix(f) in IMG_FORMATS]
        videos = [f for f in files if _suffix(f) in VID_FORMATS]
        self.files: list[str] = images + videos
        self.ni, self.nv = len(images), len(videos)
        self.nf = self.ni + self.nv
        self.video_flag: list[bool] = [False] * self.ni + [True] * self.nv
        self.img_size, self.stride, self.auto, self.vid_stride = img_size, stride, auto, max(int(vid_stride), 1)
        self.transforms, self.skip_corrupt = transforms, skip_corrupt
        self.mode = "video" if self.nv and not self.ni else "image"
        self.count, self.frame, self.frames = 0, 0, 0
        self.cap: cv2.VideoCapture | None = None

    def __len__(self) -> int:
        return self.nf

    def __iter__(self) -> Iterator[tuple[str, np.ndarray, np.ndarray, cv2.VideoCapture | None, str]]:
        self._release()
        self.count = 0
        return self

    def __next__(self) -> tuple[str, np.ndarray, np.ndarray, cv2.VideoCapture | None, str]:
        while self.count < self.nf:
            path = self.files[self.count]
            if self.video_flag[self.count]:
                self.mode = "video"
                if self.cap is None and not self._open_video(path):
                    self.count += 1
                    continue
                im0 = self._read_frame()
                if im0 is None:  # end of this video: move to the next file
                    self._release()
                    self.count += 1
                    continue
                self.frame += 1
                s = f"video {self.count + 1}/{self.nf} ({self.frame}/{self.frames}) {path}: "
            else:
                self.mode = "image"
                self.count += 1
                im0 = cv2.imread(path)
                if im0 is None:
                    self._corrupt("image", path, "empty file" if os.path.getsize(path) == 0 else "cannot be decoded")
                    continue
                s = f"image {self.count}/{self.nf} {path}: "
            return path, self._prepare(im0), im0, self.cap, s
        self._release()
        raise StopIteration

    def _prepare(self, im0: np.ndarray) -> np.ndarray:
        """BGR HWC original -> network input (see class docstring)."""
        if self.transforms is not None:
            return self.transforms(cv2.cvtColor(im0, cv2.COLOR_BGR2RGB))
        im = letterbox(im0, self.img_size, stride=self.stride, auto=self.auto)[0]
        return np.ascontiguousarray(im.transpose(2, 0, 1)[::-1])  # HWC BGR -> CHW RGB

    def _corrupt(self, kind: str, path: str, reason: str) -> None:
        """Raise, or with ``skip_corrupt`` log one warning line (the caller then moves on)."""
        if not self.skip_corrupt:
            raise SourceError(f"corrupt {kind} {path}: {reason}")
        LOGGER.warning(f"WARNING ⚠️ skipping corrupt {kind} {path}: {reason}")

    def _open_video(self, path: str) -> bool:
        """Open ``path`` as the current video; False (after a warning) when skipped as corrupt."""
        cap = cv2.VideoCapture(path)
        if not cap.isOpened():
            cap.release()
            self._corrupt("video", path, "cannot be opened by OpenCV")
            return False
        self.cap, self.frame = cap, 0
        self.frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) / self.vid_stride)
        return True

    def _read_frame(self) -> np.ndarray | None:
        """Skip ``vid_stride - 1`` frames with grab() (no decode) and decode the next one; None at the end."""
        assert self.cap is not None
        for _ in range(self.vid_stride):
            if not self.cap.grab():
                return None
        ok, im0 = self.cap.retrieve()
        return im0 if ok else None

    def _release(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None

    def __del__(self) -> None:
        if getattr(self, "cap", None) is not None:
            self._release()


def _open_capture(source: str | int, timeout: float) -> tuple[cv2.VideoCapture, np.ndarray] | None:
    """Open ``source`` and read its first frame in a helper thread; None if that fails or exceeds ``timeout`` s.

    The thread guards against backends that block far longer than asked (e.g. an unroutable host); a capture
    that opens after we gave up is released by the helper itself.
    """
    result: dict[str, object] = {}
    lock = threading.Lock()
    ms = int(timeout * 1000)

    def target() -> None:
        if isinstance(source, str) and source.lower().startswith(STREAM_PREFIXES):
            # FFmpeg honours these; other backends may reject unknown parameters, so only pass them for URLs
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
            cap = cv2.VideoCapture(source, cv2.CAP_FFMPEG, params)
        else:
            cap = cv2.VideoCapture(source)
        ok, frame = cap.read() if cap.isOpened() else (False, None)
        with lock:
            if ok and not result.get("abandoned"):
                result["cap"], result["frame"] = cap, frame
            else:
                cap.release()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    with lock:
        result["abandoned"] = True
        if "cap" in result:
            return result["cap"], result["frame"]  # type: ignore[return-value]
    return None


class LoadStreams:
    """Read one or more live sources (webcams, rtsp/rtmp/http streams, video files) in background threads.

    Each reader thread keeps only the latest frame, so a slow consumer skips frames instead of lagging. Video
    files are paced at their own FPS, like a camera. Each step yields ``(sources, im, im0s, None, '')``:
        im: ``np.ndarray[B, 3, h, w]`` uint8 RGB, the letterboxed frames stacked (B = number of streams).
        im0s: list of B original BGR frames ``np.ndarray[H, W, 3]``.
    Iteration waits for a new frame from any stream and stops when all streams have ended or 'q' is pressed in
    an OpenCV window. Use ``close()`` (or ``with``) to stop the threads.
    """

    def __init__(
        self,
        sources: str,
        img_size: int | tuple[int, int] = 640,
        stride: int = 32,
        auto: bool = True,
        vid_stride: int = 1,
        timeout: float = 10.0,
    ) -> None:
        """Open every source; raises ``SourceError`` naming the first one that fails within ``timeout`` s.

        Args:
            sources: one source (webcam index like ``'0'``, URL, video path) or a ``.streams`` file, one per line.
        """
        src = str(sources).strip()
        if src.lower().endswith(".streams"):
            if not os.path.isfile(src):
                raise SourceError(f"{src} does not exist")
            lines = [ln.strip() for ln in Path(src).read_text().splitlines()]
            self.sources = [ln for ln in lines if ln and not ln.startswith("#")]
            if not self.sources:
                raise SourceError(f"no streams listed in {src}")
        else:
            self.sources = [src]
        self.img_size, self.stride, self.vid_stride = img_size, stride, max(int(vid_stride), 1)
        self.timeout = timeout
        self.bs = n = len(self.sources)
        self.imgs: list[np.ndarray] = []  # latest BGR frame per stream
        self.fps: list[float] = []
        self.frames: list[float] = []  # math.inf for live streams
        self.threads: list[threading.Thread] = []
        self.count = 0
        self._seq = [0] * n  # frames stored per stream, to tell new frames from ones already yielded
        self._seen = [0] * n
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._gui = True
        caps: list[cv2.VideoCapture] = []
        try:
            for i, s in enumerate(self.sources):
                caps.append(self._open(i, s))
        except BaseException:
            for cap in caps:
                cap.release()
            raise
        for i, cap in enumerate(caps):
            thread = threading.Thread(target=self._update, args=(i, cap, self.sources[i]), daemon=True)
            self.threads.append(thread)
            thread.start()
        # Stacking needs one shape: fall back to full-size padding when streams letterbox differently
        shapes = {letterbox(x, img_size, stride=stride, auto=auto)[0].shape for x in self.imgs}
        self.rect = len(shapes) == 1
        self.auto = auto and self.rect
        if not self.rect:
            LOGGER.warning("WARNING ⚠️ stream shapes differ; padding all to img_size. Similar shapes run faster.")

    def _open(self, i: int, s: str) -> cv2.VideoCapture:
        """Open stream ``i``, store its first frame, FPS and frame count; returns the capture."""
        low = s.lower()
        if "youtube.com/" in low or "youtu.be/" in low:
            raise SourceError(f"{s}: YouTube sources are not supported (no pafy/yt-dlp); pass a direct stream URL")
        what = f"webcam {s}" if s.isnumeric() else f"stream {s}"
        opened = _open_capture(int(s) if s.isnumeric() else s, self.timeout)
        if opened is None:
            hint = "" if s.isnumeric() or low.startswith(STREAM_PREFIXES) or os.path.exists(s) else " (no such file)"
            raise SourceError(f"{what} cannot be opened or gave no frame within {self.timeout:g} s{hint}")
        cap, frame = opened
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        fps = cap.get(cv2.CAP_PROP_FPS)
        fps = max((fps if math.isfinite(fps) else 0) % 100, 0) or 30.0  # bogus or missing FPS -> 30
        frames = max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), 0) or math.inf  # live streams report 0 or -1
        self.imgs.append(frame)
        self.fps.append(fps)
        self.frames.append(frames)
        self._seq[i] = 1
        LOGGER.info(f"{i + 1}/{self.bs}: {s}... Success ({frames} frames {w}x{h} at {fps:.2f} FPS)")
        return cap

    def _update(self, i: int, cap: cv2.VideoCapture, source: str) -> None:
        """Reader thread: keep ``self.imgs[i]`` at the latest (every ``vid_stride``-th) frame until the end or stop."""
        finite = math.isfinite(self.frames[i])
        period = 1.0 / self.fps[i] if finite else 0.0  # files play at their own speed; cameras block in grab()
        n, next_t = 1, time.monotonic()
        try:
            while not self._stop.is_set() and n < self.frames[i]:
                if not cap.grab():
                    if finite:
                        break
                    LOGGER.warning(f"WARNING ⚠️ stream {source} unresponsive, reconnecting")
                    self.imgs[i] = np.zeros_like(self.imgs[i])
                    if self._stop.wait(1.0) or not cap.open(int(source) if source.isnumeric() else source):
                        break
                    continue
                n += 1
                if n % self.vid_stride == 0:
                    ok, im = cap.retrieve()
                    if ok:
                        with self._cond:
                            self.imgs[i] = im
                            self._seq[i] += 1
                            self._cond.notify_all()
                if period:
                    next_t += period
                    self._stop.wait(max(0.0, next_t - time.monotonic()))
        finally:
            cap.release()
            with self._cond:
                self._cond.notify_all()  # wake __next__ so it notices the end

    def __iter__(self) -> Iterator[tuple[list[str], np.ndarray, list[np.ndarray], None, str]]:
        self.count = -1
        return self

    def __next__(self) -> tuple[list[str], np.ndarray, list[np.ndarray], None, str]:
        self.count += 1
        if self._stop.is_set() or self._quit_pressed():
            self.close()
            raise StopIteration
        while True:
            with self._cond:
                if self._seq != self._seen:
                    self._seen = list(self._seq)
                    im0s = [x.copy() for x in self.imgs]
                    break
                ended = self._stop.is_set() or not any(t.is_alive() for t in self.threads)
                if not ended:
                    self._cond.wait(0.05)  # timeout so that thread ends and key presses are polled
            if ended or self._quit_pressed():
                self.close()
                raise StopIteration
        im = np.stack([letterbox(x, self.img_size, stride=self.stride, auto=self.auto)[0] for x in im0s])
        im = np.ascontiguousarray(im[..., ::-1].transpose(0, 3, 1, 2))  # BHWC BGR -> BCHW RGB
        return self.sources, im, im0s, None, ""

    def _quit_pressed(self) -> bool:
        """True when 'q' was pressed in an OpenCV window; headless OpenCV builds have no key events."""
        if not self._gui:
            return False
        try:
            return cv2.waitKey(1) == ord("q")
        except cv2.error:
            self._gui = False
            return False

    def __len__(self) -> int:
        return self.bs

    def close(self) -> None:
        """Stop and join the reader threads (each releases its own capture)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        for t in self.threads:
            if t is not threading.current_thread():
                t.join(timeout=2.0)  # a camera blocked in grab() may take its read timeout; threads are daemons

    def __enter__(self) -> LoadStreams:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if hasattr(self, "_stop"):
            self.close()
