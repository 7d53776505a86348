"""train.py end to end at tiny sizes: 64 px, 1-3 epochs, a few synthetic or coco128 images."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import train
from utils.checkpoints import load_model, read_checkpoint
from utils.data.shapes import CLASSES, generate_shapes_dataset
from utils.inference.prune import conv_sparsity
from utils.plots import read_csv_columns
from utils.train.hyps import HYP_KEYS, load_hyp

REPO = Path(__file__).resolve().parents[1]
TINY = dict(imgsz=64, batch_size=4, workers=0, device="cpu", noautoanchor=True, noplots=True, exist_ok=True)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny runs gain nothing from 2 threads, and OpenMP threads spinning at barriers are very slow on busy cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def shapes_yaml(root: Path) -> Path:
    generate_shapes_dataset(root / "shapes", n_train=8, n_val=4, imgsz=64, seed=1)
    f = root / "shapes.yaml"
    f.write_text(yaml.safe_dump({"path": str(root / "shapes"), "train": "images/train", "val": "images/val",
                                 "names": list(CLASSES)}))  # fmt: skip
    return f


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return shapes_yaml(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def scratch_run(tiny, tmp_path_factory) -> Path:
    """2 epochs from scratch with plots, mosaic closed for the last epoch and a checkpoint every epoch."""
    project = tmp_path_factory.mktemp("runs")
    kw = {**TINY, "noplots": False, "noautoanchor": False}
    return train.run(data=str(tiny), weights="", cfg="yolov5n.yaml", epochs=2, project=project, name="scratch",
                     close_mosaic=1, save_period=1, **kw)  # fmt: skip


def lrs_expected(epochs: int, nb: int, lr0: float = 0.01, lrf: float = 0.01, bias0: float = 0.1) -> np.ndarray:
    """x/lr0..2 logged per epoch for a run that stays in warmup (100 iterations): the last iteration's values."""
    rows = []
    for e in range(epochs):
        ni, target = nb * e + nb - 1, lr0 * ((1 - e / epochs) * (1 - lrf) + lrf)
        rows.append([bias0 + ni / 100 * (target - bias0), ni / 100 * target, ni / 100 * target])
    return np.array(rows)


def test_scratch_run_writes_the_yolov5_run_folder(scratch_run, capsys):
    files = {p.name for p in scratch_run.iterdir()}
    expected = {"opt.yaml", "hyp.yaml", "results.csv", "results.png", "labels.png", "weights", "confusion_matrix.png"}
    assert expected | {"train_batch0.jpg", "train_batch1.jpg", "train_batch2.jpg"} <= files
    assert "val_batch0_pred.jpg" in files  # final validation of best.pt with plots
    assert load_hyp(scratch_run / "hyp.yaml") == load_hyp(REPO / "data" / "hyps" / "hyp.scratch-low.yaml")
    assert yaml.safe_load((scratch_run / "opt.yaml").read_text())["epochs"] == 2
    cols = read_csv_columns(scratch_run / "results.csv")
    assert cols["epoch"].tolist() == [0, 1] and len(cols) == 14
    lrs = np.stack([cols["x/lr0"], cols["x/lr1"], cols["x/lr2"]], 1)
    assert lrs == pytest.approx(lrs_expected(2, nb=2), rel=1e-4)
    assert {p.name for p in (scratch_run / "weights").iterdir()} == {"best.pt", "last.pt", "epoch0.pt", "epoch1.pt"}
    for name in ("best.pt", "last.pt"):
        ck = torch.load(scratch_run / "weights" / name, weights_only=True)  # our safe format, stripped
        assert ck["epoch"] == -1 and "optimizer" not in ck and "train_state_dict" not in ck
        assert ck["names"] == dict(enumerate(CLASSES)) and len(ck["state_dict"]) == 349
    ck = read_checkpoint(scratch_run / "weights" / "epoch1.pt")
    assert ck["epoch"] == 1 and "optimizer" in ck and ck["opt"]["close_mosaic"] == 1


def test_own_checkpoint_fine_tunes_with_frozen_backbone(scratch_run, tiny, tmp_path, capsys):
    src = scratch_run / "weights" / "best.pt"
    save_dir = train.run(data=str(tiny), weights=str(src), epochs=1, project=tmp_path, name="own", freeze=[10],
                         optimizer="AdamW", cos_lr=True, label_smoothing=0.1, cache="ram", nbs=4,
                         **{**TINY, "imgsz": [64, 96]})  # fmt: skip
    out = capsys.readouterr().out
    assert "Transferred 349/349 items from best.pt" in out
    assert "Image sizes 64 train, 96 val" in out
    assert "train: Caching images" in out and "val: Caching images" in out  # --cache covers validation, as YOLOv5
    before, after = read_checkpoint(src)["state_dict"], read_checkpoint(save_dir / "weights" / "last.pt")["state_dict"]
    assert torch.allclose(after["model.0.conv.weight"], before["model.0.conv.weight"], atol=1e-6)  # frozen
    assert not torch.allclose(after["model.24.m.0.weight"], before["model.24.m.0.weight"])  # trained


def test_official_weights_on_coco_images(coco8, yolov5n_pt, tmp_path, capsys):
    save_dir = train.run(data=str(coco8), weights=str(yolov5n_pt), epochs=1, project=tmp_path, name="coco",
                         quad=True, rect=False, multi_scale=True, image_weights=True, **{**TINY, "batch_size": 8})  # fmt: skip
    assert "Transferred 349/349 items from yolov5n.pt" in capsys.readouterr().out
    cols = read_csv_columns(save_dir / "results.csv")
    assert cols["metrics/mAP_0.5"][0] > 0  # a COCO-trained model finds something on COCO images even at 64 px
    assert load_model(save_dir / "weights" / "best.pt").names[0] == "person"


def test_each_epoch_is_validated_as_its_checkpoint_loads(coco8, yolov5n_pt, tmp_path, monkeypatch):
    """Per-epoch validation runs a Conv+BN-fused copy of the EMA, as val.py and the final validation load best.pt:
    the epoch's row is the final figures, and the EMA itself stays unfused. Training keeps its freed heap. Both
    passes run the model in the CPU's training layout, channels_last (best.pt loads NCHW: 1.3x slower there)."""
    import utils.evaluate
    from utils.train import trainer

    trims, layouts = [], []
    monkeypatch.setattr(utils.evaluate, "release_free_memory", lambda: trims.append(1))
    validate = trainer.validate

    def recording_validate(model, *args, **kwargs):
        w = model.model[0].conv.weight  # 16x3x6x6: its channels_last strides differ from NCHW's
        layouts.append(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous())
        return validate(model, *args, **kwargs)

    monkeypatch.setattr(trainer, "validate", recording_validate)
    per_epoch, final = [], []
    callbacks = {
        "on_fit_epoch_end": [lambda epoch, results, fitness: per_epoch.append(results)],
        "on_train_end": [lambda save_dir, results: final.append(results)],
    }
    save_dir = train.run(data=str(coco8), weights=str(yolov5n_pt), epochs=1, project=tmp_path, name="fused",
                         callbacks=callbacks, **{**TINY, "imgsz": [160], "batch_size": 8})  # fmt: skip
    assert len(per_epoch) == 1 and per_epoch[0][2] > 0.2  # COCO weights on COCO images: a real mAP50
    assert per_epoch[0][:4] == final[0][:4]  # P, R, mAP50, mAP50-95 of best.pt as it loads
    assert trims == []
    assert layouts == [True, True]  # epoch 0, then best.pt at the end
    assert "model.0.bn.weight" in read_checkpoint(save_dir / "weights" / "best.pt")["state_dict"]


def test_fused_copy_leaves_the_model_and_skips_pruned_ones():
    from models.yolo import DetectionModel, fused_copy
    from utils.inference.prune import global_l1_prune

    model = DetectionModel("yolov5n.yaml").eval()
    fused = fused_copy(model)
    assert fused is not model and model.model[0].bn is not None and fused.model[0].bn is None
    x = torch.rand(1, 3, 64, 64)
    assert torch.allclose(fused(x)[0], model(x)[0], rtol=1e-3, atol=1e-3)
    global_l1_prune(model, 0.3)
    assert fused_copy(model) is model  # its masks are forward hooks on the unfused convs


@pytest.mark.parametrize("scale", [0.01, 1.0])
def test_clip_gradients_is_clip_grad_norm_bit_for_bit(scale):
    """Below max_norm (norm 4) the gradients are left as they are; above it (407) they are scaled as torch does."""
    from utils.train.trainer import clip_gradients

    torch.manual_seed(0)
    models = [torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8)) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    x = torch.rand(2, 3, 8, 8)
    for m in models:
        (m(x).square().sum() * scale).backward()
    expected = torch.nn.utils.clip_grad_norm_(models[0].parameters(), max_norm=10.0)
    norm = clip_gradients(models[1], max_norm=10.0)
    assert torch.equal(norm, expected) and (float(norm) > 10) == (scale == 1)
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        assert torch.equal(a.grad, b.grad)
    if scale == 1:
        assert float(torch.nn.utils.get_total_norm([p.grad for p in models[1].parameters()])) == pytest.approx(10.0)


def test_hyp_ema_decay_reaches_the_weight_average(tiny, tmp_path):
    """``ema_decay: 0`` in the hyp file: the average is the last weights themselves (saved as state_dict)."""
    hyp = tmp_path / "hyp.yaml"
    hyp.write_text(yaml.safe_dump({**load_hyp(REPO / "data" / "hyps" / "hyp.scratch-low.yaml"), "ema_decay": 0.0}))
    save_dir = train.run(data=str(tiny), weights="", cfg="yolov5n.yaml", epochs=1, project=tmp_path, name="ema",
                         hyp=str(hyp), save_period=1, **TINY)  # fmt: skip
    ck = read_checkpoint(save_dir / "weights" / "epoch0.pt")
    assert ck["hyp"]["ema_decay"] == 0.0
    ema, raw = ck["state_dict"], ck["train_state_dict"]
    assert all(torch.equal(ema[k], raw[k]) for k in raw if raw[k].dtype.is_floating_point)


def test_resume_after_interrupt_finishes_the_same_epochs(tiny, tmp_path, capsys):
    def interrupt(epoch, batch):
        if epoch == 1 and batch == 1:
            raise KeyboardInterrupt

    kw = dict(data=str(tiny), weights="", cfg="yolov5n.yaml", epochs=3, project=tmp_path, name="r", **TINY)
    with pytest.raises(KeyboardInterrupt):
        train.run(**kw, callbacks={"on_train_batch_end": [interrupt]})
    last = tmp_path / "r" / "weights" / "last.pt"
    ck = read_checkpoint(last)
    assert ck["epoch"] == 0 and "optimizer" in ck and "train_state_dict" in ck
    save_dir = train.run(resume=str(last))
    assert save_dir == tmp_path / "r"
    out = capsys.readouterr().out
    assert "Resuming training from" in out and "from epoch 1 to 3 total epochs" in out
    cols = read_csv_columns(save_dir / "results.csv")
    assert cols["epoch"].tolist() == [0, 1, 2]
    lrs = np.stack([cols["x/lr0"], cols["x/lr1"], cols["x/lr2"]], 1)
    assert lrs == pytest.approx(lrs_expected(3, nb=2), rel=1e-4)  # the schedule continues where it stopped
    assert read_checkpoint(last)["epoch"] == -1
    from utils.errors import UsageError

    with pytest.raises(UsageError, match="finished, nothing to resume"):
        train.run(resume=str(last))


def test_a_non_finite_loss_skips_its_step_and_warns(tiny, tmp_path, capsys, monkeypatch):
    """bf16 and fp32 training have no GradScaler to skip a step with NaN gradients: one NaN loss used to turn
    every weight, and every later loss, into NaN for the rest of the run."""
    from utils.train import loss as loss_module

    real, calls = loss_module.YoloLoss.__call__, []

    def nan_on_second_batch(self, preds, targets):
        loss, items = real(self, preds, targets)
        calls.append(len(calls))
        return (loss * float("nan"), items) if len(calls) == 2 else (loss, items)

    monkeypatch.setattr(loss_module.YoloLoss, "__call__", nan_on_second_batch)
    save_dir = train.run(data=str(tiny), weights="", cfg="yolov5n.yaml", epochs=1, project=tmp_path, name="n", **TINY)
    captured = capsys.readouterr()
    assert "epoch 0: 1 optimizer step(s) skipped, their gradients were not finite" in captured.out + captured.err
    weights = read_checkpoint(save_dir / "weights" / "last.pt")["state_dict"]  # the EMA, after both steps
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def test_crash_while_writing_last_pt_leaves_the_previous_one(tiny, tmp_path, monkeypatch):
    real_save, calls = torch.save, []

    def dying_save(obj, f, *args, **kwargs):  # the second last.pt write dies half way through
        epoch = obj.get("epoch") if isinstance(obj, dict) else None
        calls.append(epoch)
        if epoch == 1 and calls.count(1) == 1:
            buf = io.BytesIO()
            real_save(obj, buf, *args, **kwargs)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            raise KeyboardInterrupt
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        train.run(data=str(tiny), weights="", cfg="yolov5n.yaml", epochs=2, project=tmp_path, name="c", **TINY)
    wdir = tmp_path / "c" / "weights"
    assert sorted(p.name for p in wdir.iterdir()) == ["best.pt", "last.pt"]  # no temporary file left behind
    assert read_checkpoint(wdir / "last.pt")["epoch"] == 0


def test_bad_files_warn_once_each_and_training_goes_on(tmp_path, capsys):
    data = shapes_yaml(tmp_path)
    images, labels = tmp_path / "shapes" / "images" / "train", tmp_path / "shapes" / "labels" / "train"
    (images / "00000.jpg").write_bytes(b"not a jpeg")
    (labels / "00001.txt").write_text("7 0.5 0.5 0.2 0.2\n")  # class >= nc (5)
    (labels / "00002.txt").write_text("0 0.5 0.5\n")  # malformed
    (labels / "00003.txt").unlink()  # no label file: a background image, not an error
    save_dir = train.run(data=str(data), weights="", cfg="yolov5n.yaml", epochs=1, project=tmp_path, name="bad",
                         **TINY)  # fmt: skip
    captured = capsys.readouterr()
    out = captured.out
    warnings = [ln for ln in out.splitlines() if "WARNING" in ln]
    for bad in ("00000.jpg", "00001.txt", "00002.txt"):
        assert sum(bad in ln for ln in warnings) == 1, (bad, warnings)
    assert not any("00003" in ln for ln in warnings)
    assert "4 images, 1 backgrounds, 3 corrupt" in captured.err  # the scan's progress bar summary
    assert (save_dir / "weights" / "last.pt").is_file()


def test_evolve_two_generations(tiny, tmp_path):
    save_dir = train.run(data=str(tiny), weights="", cfg="yolov5n.yaml", epochs=1, evolve=2, project=tmp_path,
                         name="evo", **{**TINY, "batch_size": -1})  # fmt: skip
    from utils.train.evolve import read_evolve_csv

    assert yaml.safe_load((save_dir / "opt.yaml").read_text())["batch_size"] == 16  # AutoBatch's CPU size, kept
    again = train.run(data=str(tiny), weights="", cfg="yolov5n.yaml", epochs=1, evolve=1, project=tmp_path,
                      name="evo", **{**TINY, "exist_ok": False})  # fmt: skip
    assert again.name == "evo2"  # a new evolution never continues an old evolve.csv

    keys, rows = read_evolve_csv(save_dir / "evolve.csv")
    assert rows.shape == (2, 7 + len(HYP_KEYS)) and keys[2] == "metrics/mAP_0.5"
    assert not np.array_equal(rows[0, 7:], rows[1, 7:])  # the second generation is a mutation
    assert set(load_hyp(save_dir / "hyp_evolve.yaml")) == set(HYP_KEYS)
    assert (save_dir / "evolve.png").is_file()
    assert not (save_dir / "weights" / "last.pt").exists()  # evolution saves no checkpoints


def test_prune_fine_tuning_keeps_the_sparsity(tiny, tmp_path, capsys):
    save_dir = train.run(data=str(tiny), weights="", cfg="yolov5n.yaml", epochs=2, prune=0.3, project=tmp_path,
                         name="p", **TINY)  # fmt: skip
    assert "Pruned: 30.0% of conv weights zero" in capsys.readouterr().out
    for name in ("best.pt", "last.pt"):
        ck = read_checkpoint(save_dir / "weights" / name)
        assert not any(k.endswith(("_orig", "_mask")) for k in ck["state_dict"])  # masks made permanent
        model = load_model(save_dir / "weights" / name, fuse=False)
        assert 0.299 <= conv_sparsity(model) < 0.31


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_ddp_two_cpu_processes_train_one_epoch(tiny, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "train.py",
           "--data", str(tiny), "--weights", "", "--cfg", "yolov5n.yaml", "--img", "64", "--epochs", "1",
           "--batch-size", "4", "--workers", "0", "--device", "cpu", "--noplots", "--noautoanchor",
           "--project", str(tmp_path), "--name", "ddp"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    ck = read_checkpoint(tmp_path / "ddp" / "weights" / "last.pt")
    assert ck["epoch"] == -1 and len(ck["state_dict"]) == 349
    assert read_csv_columns(tmp_path / "ddp" / "results.csv")["epoch"].tolist() == [0]
    assert p.stdout.count("Starting training for 1 epochs") == 1  # only rank 0 logs


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_ddp_rank0_draws_its_plots_in_a_forked_process_while_the_group_lives(tiny, tmp_path):
    """With plots, rank 0's final validation forks a process for the confusion matrix (``draw_in_parallel``) while
    the gloo group and the other rank are alive: every figure is written, both ranks exit cleanly."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "train.py",
           "--data", str(tiny), "--weights", "", "--cfg", "yolov5n.yaml", "--img", "64", "--epochs", "1",
           "--batch-size", "4", "--workers", "0", "--device", "cpu", "--noautoanchor",
           "--project", str(tmp_path), "--name", "plots"]  # fmt: skip
    p = subprocess.run(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    run = tmp_path / "plots"
    # 1 epoch from scratch finds nothing to draw curves of; the mosaics are what the main process draws meanwhile
    for name in ("confusion_matrix.png", "val_batch0_labels.jpg", "val_batch0_pred.jpg", "results.png"):
        assert (run / name).stat().st_size > 1000, name
    assert "plotting process exited" not in p.stdout + p.stderr


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_ddp_a_nan_loss_on_one_rank_skips_the_step_on_every_rank(tiny, tmp_path):
    """DDP averages the gradients, so rank 1's NaN loss reaches both ranks: both must skip that step (a rank that
    stepped alone would leave the replicas apart); rank 0 warns once and the saved weights are finite."""
    script = tmp_path / "nan_on_rank1.py"
    script.write_text(
        "import os, sys\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "import train\n"
        "from utils.train import loss\n"
        "real, calls = loss.YoloLoss.__call__, []\n"
        "def first_batch_nan_on_rank1(self, preds, targets):\n"
        "    value, items = real(self, preds, targets)\n"
        "    calls.append(1)\n"
        "    return (value * float('nan'), items) if os.environ['RANK'] == '1' and len(calls) == 1 else (value, items)\n"
        "loss.YoloLoss.__call__ = first_batch_nan_on_rank1\n"
        f"train.run(data={str(tiny)!r}, weights='', cfg='yolov5n.yaml', epochs=1, imgsz=64, batch_size=4, workers=0,\n"
        f"          device='cpu', noautoanchor=True, noplots=True, project={str(tmp_path)!r}, name='nan')\n"
    )
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    p = subprocess.run(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert (p.stdout + p.stderr).count("epoch 0: 1 optimizer step(s) skipped") == 1
    weights = read_checkpoint(tmp_path / "nan" / "weights" / "last.pt")["state_dict"]
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def torchrun(nproc: int, args: list[str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), "train.py",
           "--weights", "", "--cfg", "yolov5n.yaml", "--epochs", "1", "--workers", "0", "--device", "cpu",
           "--noplots", "--noautoanchor", *args]  # fmt: skip
    p = subprocess.run(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_ddp_rect_on_mixed_aspect_ratios(coco128, tmp_path):
    """--rect under DDP: a DistributedSampler mixed padded shapes in one per-rank batch ("stack expects each
    tensor to be equal size, but got [3, 128, 128] ... and [3, 128, 96]"). 32 coco128 images, 8 rectangular
    batches of 4 per rank (4 steps each)."""
    from tests.conftest import copy_coco_subset, write_data_yaml

    root = copy_coco_subset(coco128, tmp_path / "coco32", 32)
    data = write_data_yaml(root, yaml.safe_load((REPO / "data" / "coco128.yaml").read_text())["names"])
    p = torchrun(2, ["--data", str(data), "--img", "128", "--batch-size", "8", "--rect", "--project", str(tmp_path),
                     "--name", "rect"])  # fmt: skip
    assert read_csv_columns(tmp_path / "rect" / "results.csv")["epoch"].tolist() == [0]
    assert "0/0" in p.stderr + p.stdout  # the epoch's progress line


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_torchrun_with_one_process(tiny, tmp_path):
    """LOCAL_RANK set, WORLD_SIZE 1: "Default process group has not been initialized" from a DistributedSampler."""
    torchrun(1, ["--data", str(tiny), "--img", "64", "--batch-size", "4", "--project", str(tmp_path), "--name", "one"])
    assert read_checkpoint(tmp_path / "one" / "weights" / "last.pt")["epoch"] == -1


def test_rect_single_class_training(tiny, tmp_path):
    save_dir = train.run(data=str(tiny), weights="", cfg="yolov5n.yaml", epochs=1, rect=True, single_cls=True,
                         project=tmp_path, name="rect", **TINY)  # fmt: skip
    ck = read_checkpoint(save_dir / "weights" / "best.pt")
    assert ck["model_yaml"]["nc"] == 1 and ck["names"] == {0: "item"}
    assert read_csv_columns(save_dir / "results.csv")["epoch"].tolist() == [0]
