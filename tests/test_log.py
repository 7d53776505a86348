"""utils/log.py: one package logger; the scripts' lines on stdout, library calls silenceable."""

from __future__ import annotations

import io
import logging
from contextlib import redirect_stdout

import detect
import val
from utils.log import LOGGER, quiet


def test_logger_writes_to_the_current_stdout_and_quiet_restores_the_level():
    buf = io.StringIO()
    with redirect_stdout(buf):
        LOGGER.info("hello")
        with quiet():
            LOGGER.info("hidden")
            LOGGER.warning("WARNING ⚠️ still shown")
        LOGGER.info("back")
    assert buf.getvalue() == "hello\nWARNING ⚠️ still shown\nback\n"
    assert LOGGER.level == logging.INFO and not LOGGER.propagate


def test_val_and_detect_are_silenced_by_the_logger_level(yolov5n_pt, coco8, tmp_path, capsys):
    root_handlers = list(logging.getLogger().handlers)
    kw = dict(weights=[str(yolov5n_pt)], imgsz=64, project=tmp_path, device="cpu")
    val.run(data=str(coco8), batch_size=8, noplots=True, workers=0, **kw)
    out = capsys.readouterr().out
    assert "                 all          8 " in out and "Results saved to" in out
    images = coco8.parent / "images" / "train"
    detect.run(source=str(images), nosave=True, **kw)
    assert "image 1/8 " in capsys.readouterr().out
    assert logging.getLogger().handlers == root_handlers  # detect.run no longer calls logging.basicConfig

    logging.getLogger("yolo").setLevel(logging.WARNING)
    try:
        metrics = val.run(data=str(coco8), batch_size=8, noplots=True, workers=0, **kw)[0]
        detect.run(source=str(images), nosave=True, **kw)
    finally:
        logging.getLogger("yolo").setLevel(logging.INFO)
    captured = capsys.readouterr()
    assert captured.out == "" and "Scanning" not in captured.err and "mAP50" not in captured.err  # no bars either
    assert 0 < metrics.map50 <= 1  # still computed


def test_redirect_stdout_none_silences_it_without_logging_errors(capsys):
    with redirect_stdout(None):
        LOGGER.warning("WARNING ⚠️ nowhere")
    captured = capsys.readouterr()
    assert captured.out == "" and "Logging error" not in captured.err
