"""Training set-up and bookkeeping: option defaults and --resume, model construction with weight transfer, layer
freezing, AutoAnchor, batch size, checkpoints and ``results.csv``. ``utils/train/trainer.py`` holds the loop itself.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from utils import options
from utils.checkpoints import (
    CheckpointError,
    attempt_download,
    checkpoint_dict,
    plain_state_dict,
    read_checkpoint,
    save_atomic,
)
from utils.errors import UsageError
from utils.files import REPO_ROOT, append_csv_row
from utils.log import LOGGER
from utils.train import dist
from utils.train.optim import NOMINAL_BATCH

RESULT_KEYS = (
    "train/box_loss", "train/obj_loss", "train/cls_loss",
    "metrics/precision", "metrics/recall", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95",
    "val/box_loss", "val/obj_loss", "val/cls_loss",
    "x/lr0", "x/lr1", "x/lr2",
)  # fmt: skip


# ------------------------------------------------------------------------------------------------------- options
def resolve_options(opt: argparse.Namespace, defaults: dict, shapes_job: dict, yolov5_job: dict) -> argparse.Namespace:
    """Fill the options left at None, apply --resume and check flag combinations.

    Without --data the ``shapes_job`` values are used (it names its own ``data``), with --data ``yolov5_job``'s.
    ``defaults`` is the full default option set of ``train.py`` (``vars(parse_opt([]))``), used to complete the
    options stored in an older checkpoint.
    """
    if opt.resume and not opt.evolve:
        return _resume_options(opt, defaults)
    table = shapes_job if opt.data is None else yolov5_job
    if opt.data is None and opt.weights and opt.cfg is None:
        opt.cfg = ""  # --weights alone on the shapes job: the checkpoint's own architecture
    for k, v in table.items():
        if getattr(opt, k, None) is None:
            setattr(opt, k, v)
    if not opt.weights and not opt.cfg:
        raise UsageError("--weights '' trains from scratch and needs --cfg (e.g. --cfg yolov5n.yaml)")
    if isinstance(opt.hyp, (str, Path)):
        opt.hyp = str(find_file(opt.hyp, REPO_ROOT / "data" / "hyps"))
    if opt.evolve and Path(opt.project) == REPO_ROOT / "runs" / "train":
        opt.project = str(REPO_ROOT / "runs" / "evolve")
    _check(opt)
    return opt


def _check(opt: argparse.Namespace) -> None:
    ws = dist.world_size()
    if ws == 1 and len(str(opt.device).split(",")) > 1:
        LOGGER.warning(f"WARNING ⚠️ --device {opt.device}: one process trains on the first GPU only; launch with "
              f"torchrun --nproc_per_node {len(str(opt.device).split(','))} train.py ... for DDP")  # fmt: skip
    if opt.epochs < 1:
        raise UsageError(f"--epochs {opt.epochs}: must be at least 1")
    train_val_sizes(opt.imgsz)
    if opt.nbs < 1:
        raise UsageError(f"--nbs {opt.nbs}: must be at least 1")
    if opt.batch_size == 0 or opt.batch_size < -1:
        raise UsageError(f"--batch-size {opt.batch_size}: must be positive, or -1 for AutoBatch")
    if not 0 <= opt.prune < 1:
        raise UsageError(f"--prune {opt.prune}: expected a fraction between 0 and 1")
    if ws > 1:
        if opt.evolve:
            raise UsageError("--evolve is not compatible with multi-process (DDP) training")
        if opt.image_weights:
            raise UsageError("--image-weights is not compatible with multi-process (DDP) training")
        if opt.batch_size == -1:
            raise UsageError("--batch-size -1 (AutoBatch) needs one process; pass a --batch-size for DDP")
        if opt.batch_size % ws:
            raise UsageError(f"--batch-size {opt.batch_size} must be a multiple of WORLD_SIZE {ws}")


def find_file(path: str | Path, folder: Path) -> Path:
    """``path`` as given, else relative to the repository, else its name inside ``folder``."""
    for p in (Path(path), REPO_ROOT / path, folder / Path(path).name):
        if p.is_file():
            return p
    raise FileNotFoundError(f"{path}: file not found")


def find_last_checkpoint(project: str | Path) -> Path:
    """The most recently written ``last.pt`` under ``project`` (``--resume`` without a path)."""
    files = glob.glob(f"{project}/**/last*.pt", recursive=True)
    if not files:
        raise UsageError(f"--resume: no last.pt found under {project}; pass the checkpoint path")
    return Path(max(files, key=os.path.getmtime))


def _resume_options(opt: argparse.Namespace, defaults: dict) -> argparse.Namespace:
    last = find_last_checkpoint(opt.project) if opt.resume is True else Path(opt.resume)
    ckpt = read_checkpoint(last)
    if "opt" in ckpt and ckpt.get("epoch", -1) < 0:
        raise UsageError(f"--resume {last}: this training run is finished, nothing to resume")
    if "opt" not in ckpt or "optimizer" not in ckpt:
        raise UsageError(f"--resume {last}: not a resumable checkpoint (no training state); use --weights {last}")
    new = argparse.Namespace(**{**defaults, **ckpt["opt"]})
    if new.nbs is None:  # a run saved before --nbs existed accumulated to YOLOv5's 64
        new.nbs = NOMINAL_BATCH
    if opt.device:  # the machine may differ from the one the run started on
        new.device = opt.device
    new.workers = opt.workers if opt.workers != defaults.get("workers") else new.workers
    new.resume, new.weights, new.cfg = str(last), str(last), ""
    new.save_dir = str(last.parent.parent)
    new.hyp = ckpt["hyp"]
    LOGGER.info(f"Resuming training from {last}")
    _check(new)
    return new


# --------------------------------------------------------------------------------------------------------- model
def build_model(weights: str, cfg: str, nc: int, resume: bool = False) -> tuple[nn.Module, dict | None]:
    """A DetectionModel for ``nc`` classes from ``cfg`` and/or a checkpoint (ours or official YOLOv5).

    Checkpoint tensors are transferred by name where the shapes match (a different ``nc`` leaves the head's
    output convs at their initialisation); anchors are not transferred when ``cfg`` gives the architecture.
    Prints ``Transferred 343/349 items from yolov5n.pt``. Returns ``(model, checkpoint dict or None)``.
    """
    from models.backbones import checkpoint_weights
    from models.yolo import DetectionModel

    if not weights:
        return DetectionModel(cfg, ch=3, nc=nc), None
    with dist.main_process_first():  # rank 0 downloads; the others then find the file (no shared .part file)
        path = attempt_download(weights)
    ckpt = read_checkpoint(path)
    # the checkpoint's own architecture: its tensors replace any ImageNet backbone weights, so none are read
    with checkpoint_weights() if resume or not cfg else contextlib.nullcontext():
        model = DetectionModel(cfg or ckpt["model_yaml"], ch=3, nc=nc)
    state = ckpt.get("train_state_dict") if resume else None
    state = state or ckpt["state_dict"]
    exclude = ("anchors",) if cfg and not resume else ()
    own = model.state_dict()
    keep = {
        k: v
        for k, v in state.items()
        if k in own and v.shape == own[k].shape and not any(k.endswith(x) for x in exclude)
    }
    model.load_state_dict(keep, strict=False)
    LOGGER.info(f"Transferred {len(keep)}/{len(own)} items from {Path(str(weights)).name}")
    return model, ckpt


def freeze_layers(model: nn.Module, freeze: list[int]) -> list[str]:
    """--freeze: one number N freezes layers 0..N-1 (``model.0.`` ... ), several numbers freeze those layers."""
    freeze = list(freeze or [0])
    prefixes = [f"model.{x}." for x in (freeze if len(freeze) > 1 else range(freeze[0]))]
    frozen = []
    for k, v in model.named_parameters():
        v.requires_grad_(not any(k.startswith(p) for p in prefixes))
        if not v.requires_grad:
            frozen.append(k)
    if frozen:
        LOGGER.info(
            f"freezing {len(frozen)} parameter tensors of layers {sorted({int(k.split('.')[1]) for k in frozen})}"
        )
    return frozen


def train_val_sizes(imgsz: int | list[int]) -> tuple[int, int]:
    """``--imgsz 640`` -> (640, 640); ``--imgsz 192 256`` -> train at 192, validate at 256."""
    sizes = [imgsz] if isinstance(imgsz, int) else list(imgsz)
    if not 1 <= len(sizes) <= 2 or min(sizes) < 1:
        raise UsageError(f"--imgsz {' '.join(map(str, sizes))}: give one size, or two (train val)")
    return sizes[0], sizes[-1]


def check_img_size(imgsz: int, gs: int) -> int:
    """``imgsz`` rounded up to a multiple of the max stride ``gs``, at least 2 strides (training mosaics)."""
    return options.check_img_size(imgsz, gs, min_strides=2)


def resolve_batch_size(batch_size: int, model: nn.Module, imgsz: int, device: torch.device, amp: bool) -> int:
    """``batch_size``, or for -1 AutoBatch's estimate (on a device without CUDA: a clear message and 16)."""
    from utils.train.autobatch import autobatch

    return batch_size if batch_size != -1 else autobatch(model, imgsz, device, amp=amp)


def run_autoanchor(model: nn.Module, dataset, thr: float, imgsz: int) -> bool:
    """Check the head's anchors against the training labels; loads evolved anchors when they fit better."""
    from utils.train.autoanchor import check_anchors, label_wh_at_imgsz

    det = model.detect
    strides = det.stride.view(-1, 1, 1).to(det.anchors)
    wh = label_wh_at_imgsz(dataset.shapes, dataset.labels, imgsz)
    new = check_anchors(det.anchors * strides, det.stride, wh, thr=thr, imgsz=imgsz)
    if new is None:
        return False
    with torch.no_grad():
        det.anchors.copy_(new.to(det.anchors) / strides)
    return True


def image_sampling_weights(labels: list[np.ndarray], nc: int, maps: np.ndarray) -> np.ndarray:
    """--image-weights: per-image sampling weight, the sum over its labels of ``(1 - class mAP)^2 / class count``.

    Rare and badly detected classes are drawn more often; images without labels are not drawn (as in YOLOv5).
    """
    classes = [lb[:, 0].astype(int) for lb in labels]
    counts = np.bincount(np.concatenate(classes) if classes else np.zeros(0, int), minlength=nc).astype(float)
    counts[counts == 0] = 1
    cw = (1 / counts) / (1 / counts).sum() * (1 - np.asarray(maps, float)) ** 2 / nc
    w = np.array([cw[c].sum() for c in classes])
    return w if w.sum() > 0 else np.ones(len(labels))


# --------------------------------------------------------------------------------------------------- checkpoints
def plain_options(d: dict) -> dict:
    """Options as YAML / ``weights_only``-safe plain values (paths become strings)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in d.items()}


def epoch_checkpoint(ema, model, optimizer, epoch: int, best_fitness: float, best_epoch: int, opt, hyp) -> dict:
    """Our checkpoint format with the EMA weights as ``state_dict`` (what inference loads) plus the training
    state --resume needs: raw weights, optimizer, EMA update count, epoch, best fitness, options and hyp.
    """
    ck = checkpoint_dict(
        ema.ema,
        epoch=epoch,
        best_fitness=float(best_fitness),
        best_epoch=int(best_epoch),
        ema_updates=int(ema.updates),
        train_state_dict=plain_state_dict(model),
        optimizer=optimizer.state_dict(),
        opt=plain_options(vars(opt)),
        hyp=dict(hyp),
    )
    return ck


def strip_checkpoint(path: Path) -> None:
    """Drop the training state from a finished run's checkpoint (epoch -1: nothing left to resume)."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read checkpoint to strip it ({type(e).__name__})") from None
    for k in ("optimizer", "train_state_dict", "ema_updates"):
        ck.pop(k, None)
    ck["epoch"] = -1
    save_atomic(ck, path)
    LOGGER.info(f"Optimizer stripped from {path}, {path.stat().st_size / 1e6:.1f}MB")


def write_results_row(path: Path, epoch: int, values: list[float]) -> None:
    """Append one epoch to ``results.csv`` (YOLOv5's columns, written with a header when the file is new)."""
    append_csv_row(path, ("epoch", *RESULT_KEYS), (epoch, *values))
