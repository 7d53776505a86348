from pathlib import Path

import numpy as np
import pytest
import torch

import train
from models.yolo import DetectionModel
from utils.errors import UsageError
from utils.files import REPO_ROOT
from utils.plots import read_csv_columns
from utils.train.setup import (
    RESULT_KEYS,
    build_model,
    check_img_size,
    freeze_layers,
    image_sampling_weights,
    resolve_batch_size,
    resolve_options,
    write_results_row,
)

DEFAULTS = vars(train.parse_opt([]))


def resolved(argv: list[str]):
    return resolve_options(train.parse_opt(argv), DEFAULTS, train.SHAPES_JOB, train.YOLOV5_JOB)


def test_no_data_flag_is_the_shapes_job_and_data_gives_yolov5_defaults():
    opt = resolved([])
    assert (opt.data, opt.weights, opt.cfg, opt.batch_size, opt.optimizer, opt.nbs) == (
        "data/shapes.yaml", "", "yolov5n.yaml", 16, "AdamW", 16,
    )  # fmt: skip
    assert (opt.epochs, opt.imgsz, opt.close_mosaic) == tuple(
        train.SHAPES_JOB[k] for k in ("epochs", "imgsz", "close_mosaic")
    )
    assert Path(opt.hyp).resolve() == REPO_ROOT / "data" / "hyps" / "hyp.shapes.yaml"
    opt = resolved(["--data", "coco128.yaml"])
    assert (opt.weights, opt.cfg, opt.epochs, opt.imgsz, opt.batch_size) == ("yolov5s.pt", "", 100, [640], 16)
    assert (opt.optimizer, opt.nbs, opt.close_mosaic, Path(opt.hyp).name) == ("SGD", 64, 0, "hyp.scratch-low.yaml")
    opt = resolved(["--optimizer", "SGD", "--nbs", "64", "--close-mosaic", "0"])  # given flags beat the job's values
    assert (opt.optimizer, opt.nbs, opt.close_mosaic) == ("SGD", 64, 0)
    opt = resolved(["--weights", "best.pt", "--epochs", "3"])  # shapes job from a checkpoint: its own architecture
    assert (opt.data, opt.cfg, opt.epochs) == ("data/shapes.yaml", "", 3)
    assert resolved(["--evolve", "2"]).project == str(REPO_ROOT / "runs" / "evolve")


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--data", "coco128.yaml", "--weights", ""], "needs --cfg"),
        (["--epochs", "0"], "--epochs 0"),
        (["--batch-size", "-2"], "--batch-size -2"),
        (["--prune", "1.5"], "--prune 1.5"),
        (["--nbs", "0"], "--nbs 0: must be at least 1"),
        (["--imgsz", "192", "256", "320"], r"--imgsz 192 256 320: give one size, or two \(train val\)"),
    ],
)
def test_bad_flag_combinations_are_one_line_usage_errors(argv, match):
    with pytest.raises(UsageError, match=match):
        resolved(argv)


def test_ddp_flag_checks(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UsageError, match="multiple of WORLD_SIZE 2"):
        resolved(["--batch-size", "5"])
    with pytest.raises(UsageError, match="--evolve"):
        resolved(["--evolve", "3"])


def test_resume_errors_name_the_file(tmp_path):
    with pytest.raises(UsageError, match="no last.pt found"):
        resolved(["--resume", "--project", str(tmp_path)])
    f = tmp_path / "plain.pt"
    from utils.checkpoints import save_checkpoint

    save_checkpoint(DetectionModel("yolov5n.yaml", nc=2), f)
    with pytest.raises(UsageError, match="not a resumable checkpoint"):
        resolved(["--resume", str(f)])


def test_train_run_rejects_unknown_options():
    with pytest.raises(TypeError, match="batchsize"):
        train.run(batchsize=4)


def test_check_img_size_rounds_up_to_the_stride(capsys):
    assert check_img_size(640, 32) == 640
    assert check_img_size(100, 32) == 128
    assert "updating to 128" in capsys.readouterr().out
    assert check_img_size(30, 32) == 64


def test_autobatch_on_cpu_explains_and_uses_16(capsys):
    assert resolve_batch_size(-1, None, 64, torch.device("cpu"), True) == 16
    assert "on CPU using --batch-size 16" in capsys.readouterr().out
    assert resolve_batch_size(8, None, 64, torch.device("cpu"), True) == 8


def test_weight_transfer_by_name_and_shape(yolov5n_pt, capsys):
    model, ckpt = build_model(str(yolov5n_pt), "", nc=5)
    assert "Transferred 343/349 items from yolov5n.pt" in capsys.readouterr().out  # 3 head convs x (weight, bias)
    assert model.detect.nc == 5 and ckpt["source"] == "official-yolov5"
    assert torch.equal(model.state_dict()["model.0.conv.weight"], ckpt["state_dict"]["model.0.conv.weight"])
    build_model(str(yolov5n_pt), "yolov5n.yaml", nc=80)  # --cfg gives the architecture: its anchors are kept
    assert "Transferred 348/349 items" in capsys.readouterr().out


def test_freeze_first_layers():
    model = DetectionModel("yolov5n.yaml", nc=2)
    frozen = freeze_layers(model, [3])
    assert frozen and all(k.split(".")[1] in "012" for k in frozen)
    grads = {k: p.requires_grad for k, p in model.named_parameters()}
    assert not grads["model.2.cv1.conv.weight"] and grads["model.3.conv.weight"]
    assert freeze_layers(model, [0]) == [] and all(p.requires_grad for p in model.parameters())
    assert {k.split(".")[1] for k in freeze_layers(model, [1, 24])} == {"1", "24"}


def test_image_sampling_weights_known_answer():
    labels = [np.array([[0, 0.5, 0.5, 0.1, 0.1]] * 3), np.array([[1, 0.5, 0.5, 0.1, 0.1]]), np.zeros((0, 5))]
    w = image_sampling_weights(labels, 2, np.zeros(2))
    # class counts 3 and 1 -> class weights 1/4 and 3/4, halved by 1/nc; the image of class 0 has 3 boxes
    assert w == pytest.approx([3 * 0.25 / 2, 0.75 / 2, 0.0])
    w = image_sampling_weights(labels, 2, np.array([0.5, 0.0]))
    assert w == pytest.approx([3 * 0.25 * 0.25 / 2, 0.75 / 2, 0.0])


def test_results_csv_has_yolov5_columns(tmp_path):
    f = tmp_path / "results.csv"
    write_results_row(f, 0, list(range(13)))
    write_results_row(f, 1, [0.5] * 13)
    lines = f.read_text().splitlines()
    assert len(lines) == 3 and len(lines[0].split(",")) == 14 and lines[0].startswith(" " * 15 + "epoch")
    cols = read_csv_columns(f)
    assert list(cols) == ["epoch", *RESULT_KEYS]
    assert cols["epoch"].tolist() == [0, 1] and cols["x/lr2"].tolist() == [12, 0.5]
