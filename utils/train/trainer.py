"""The training engine behind ``train.py``: model setup, the epoch loop, per-epoch validation and checkpoints.

``train(hyp, opt, device)`` runs one training job described by ``opt`` (the parsed ``train.py`` options, already
resolved by ``utils.train.setup.resolve_options``) and returns the final validation figures. Laid out like
torchvision's references: ``setup`` builds a ``TrainJob``, then per epoch ``train_one_epoch`` and
``end_of_epoch`` (validate, results.csv, checkpoints, early stop), and ``finish`` once at the end. Validation calls
``utils.evaluate.evaluate``, the function ``val.py`` runs, on the EMA weights.
"""

from __future__ import annotations

import argparse
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from tqdm import tqdm

from models.yolo import fused_copy
from utils.checkpoints import save_atomic
from utils.data.dataset_config import load_data_config
from utils.data.datasets import create_dataloader, label_stats, make_loader
from utils.devices import autocast_dtype, image_input
from utils.evaluate import EvalOptions, evaluate
from utils.log import LOGGER
from utils.metrics import fitness
from utils.train import dist
from utils.train.ema import ModelEMA
from utils.train.hyps import hyp_value
from utils.train.loggers import TrainLoggers
from utils.train.loss import YoloLoss, scale_loss_gains
from utils.train.optim import (
    accumulate_steps,
    build_optimizer,
    lr_lambda,
    scaled_weight_decay,
    warmup,
    warmup_iterations,
)
from utils.train.setup import (
    build_model,
    check_img_size,
    epoch_checkpoint,
    freeze_layers,
    image_sampling_weights,
    plain_options,
    resolve_batch_size,
    run_autoanchor,
    strip_checkpoint,
    train_val_sizes,
    write_results_row,
)

Callbacks = dict[str, list[Callable[..., None]]]
BAR_FORMAT = "{l_bar}{bar:10}{r_bar}"


class EarlyStopping:
    """Stop when fitness has not improved for ``patience`` epochs (0 disables)."""

    def __init__(self, patience: int = 30, best_fitness: float = 0.0, best_epoch: int = 0):
        self.patience = patience or float("inf")
        self.best_fitness, self.best_epoch = best_fitness, best_epoch
        self.possible_stop = False  # the next epoch may be the last one: validate it even with --noval

    def __call__(self, epoch: int, fi: float) -> bool:
        if fi >= self.best_fitness:  # >= so that epochs of fitness 0 at the start still count as progress
            self.best_epoch, self.best_fitness = epoch, fi
        delta = epoch - self.best_epoch
        self.possible_stop = delta >= self.patience - 1
        stop = delta >= self.patience
        if stop:
            LOGGER.info(
                f"Stopping training early as no improvement observed in last {self.patience} epochs. "
                f"Best results observed at epoch {self.best_epoch}, best model saved as best.pt.\n"
                f"To update EarlyStopping(patience={self.patience}) pass a new patience value, "
                f"i.e. `python train.py --patience 300` or use `--patience 0` to disable EarlyStopping."
            )
        return stop


def init_seeds(seed: int = 0) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def fire(callbacks: Callbacks | None, event: str, **kwargs) -> None:
    """Call every function registered for ``event`` (tests use this to interrupt a run at a chosen batch)."""
    for fn in (callbacks or {}).get(event, []):
        fn(**kwargs)


def validate(
    model, loader, names, device, compute_loss, opt, save_dir=None, plots=False, verbose=False, amp_dtype=None
):
    """``evaluate`` with the training settings; returns ((P, R, mAP50, mAP, box, obj, cls), per-class mAP).

    ``amp_dtype``: the training's autocast type (--amp), used for validation too, as YOLOv5 validates in half
    precision on CUDA: bf16 on the default CPU job takes 200 images at 256 px from 3.4 to 2.4 s per epoch.
    """
    opts = EvalOptions(
        conf_thres=0.001, iou_thres=0.6, single_cls=opt.single_cls, plots=plots, verbose=verbose, release_memory=False
    )  # fmt: skip
    amp = torch.autocast(device.type, amp_dtype or torch.float32, enabled=amp_dtype is not None)
    with torch.no_grad(), amp:
        result, _ = evaluate(model, loader, names, device, opts, save_dir if plots else None, compute_loss)
    return result.as_tuple(), result.maps


@dataclass
class TrainJob:
    """What one training job carries from set-up through its epochs to the end (built by ``setup``)."""

    hyp: dict
    opt: argparse.Namespace
    device: torch.device
    save_dir: Path
    main: bool  # rank 0 (or not distributed): validates, saves, prints, plots
    ws: int  # world size
    plots: bool
    names: dict[int, str]
    nc: int
    model: torch.nn.Module  # DDP-wrapped when distributed
    ema: ModelEMA | None  # rank 0 only
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    lf: Callable[[int], float]
    dataset: torch.utils.data.Dataset
    train_loader: torch.utils.data.DataLoader  # replaced when the sampling weights or mosaic change
    sampler: torch.utils.data.WeightedRandomSampler | None
    val_loader: torch.utils.data.DataLoader | None  # rank 0 only
    compute_loss: YoloLoss
    stopper: EarlyStopping
    gs: int  # grid size: the largest stride, at least 32
    imgsz: int
    imgsz_val: int
    batch_size: int  # total over all ranks
    start_epoch: int
    memory_format: torch.memory_format  # the model's and batches' layout: channels_last on the CPU, else NCHW
    amp_dtype: torch.dtype | None  # autocast compute type (fp16 CUDA, bf16 CPU) or None for fp32
    scaler: torch.amp.GradScaler = field(init=False)
    nb: int = field(init=False)  # batches per epoch
    nw: int = field(init=False)  # warmup iterations
    accumulate: int = 1  # batches per optimizer step (changes during warmup)
    skipped_steps: int = 0  # optimizer steps skipped for non-finite gradients this epoch (bf16/fp32)
    last_opt_step: int = -1
    maps: np.ndarray = field(init=False)  # per-class mAP50-95 of the last validation
    results: tuple = (0.0,) * 7  # (P, R, mAP50, mAP50-95, val box, obj, cls) of the last validation
    loggers: TrainLoggers | None = None  # TensorBoard (rank 0, not while evolving)

    def __post_init__(self):
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)  # bf16 needs no scaling
        self.nb = len(self.train_loader)
        self.nw = warmup_iterations(self.hyp["warmup_epochs"], self.nb)
        self.maps = np.zeros(self.nc)

    @property
    def weights_dir(self) -> Path:
        return self.save_dir / "weights"

    @property
    def results_csv(self) -> Path:
        return self.save_dir / "results.csv"


def train(hyp: dict, opt: argparse.Namespace, device: torch.device, callbacks: Callbacks | None = None) -> tuple:
    """Train as ``opt`` says; returns the final (P, R, mAP50, mAP50-95, val box, obj, cls losses)."""
    job = setup(hyp, opt, device)
    t0 = time.time()
    epoch = job.start_epoch - 1
    for epoch in range(job.start_epoch, opt.epochs):
        mloss, lr = train_one_epoch(job, epoch, callbacks)
        stop = end_of_epoch(job, epoch, mloss, lr, callbacks) if job.main else False
        if dist.broadcast_object(stop):
            break
    if job.main:
        finish(job, epoch - job.start_epoch + 1, time.time() - t0, callbacks)
    return tuple(job.results)


def _prepare_save_dir(save_dir: Path, hyp: dict, resume: bool) -> None:
    """Create ``weights/``, write hyp.yaml; a fresh run drops an old results.csv and stale temporary files."""
    wdir = save_dir / "weights"
    wdir.mkdir(parents=True, exist_ok=True)
    (save_dir / "hyp.yaml").write_text(yaml.safe_dump(hyp, sort_keys=False))
    if not resume:
        (save_dir / "results.csv").unlink(missing_ok=True)  # a reused folder (--exist-ok) starts a fresh table
    for tmp in wdir.glob(".*.pt.*.tmp"):  # left by a run killed while saving (save_atomic's temporary files)
        tmp.unlink(missing_ok=True)


def setup(hyp: dict, opt: argparse.Namespace, device: torch.device) -> TrainJob:
    """Data, model, optimizer, loaders, loss and resume state for one job (in YOLOv5's order, seeds included)."""
    save_dir, resume, main = Path(opt.save_dir), bool(opt.resume), dist.is_main_process()
    ws = dist.world_size() if dist.is_distributed() else 1
    plots = main and not opt.evolve and not opt.noplots
    if main:
        _prepare_save_dir(save_dir, hyp, resume)
    init_seeds(opt.seed + 1 + dist.rank())

    with dist.main_process_first():  # rank 0 generates synthetic data and writes label caches first
        data = load_data_config(opt.data, require=("train", "val"))
    nc = 1 if opt.single_cls else data["nc"]
    names = {0: "item"} if opt.single_cls and data["nc"] != 1 else data["names"]

    model, ckpt = build_model(opt.weights, opt.cfg, nc, resume)
    if opt.prune:
        from utils.inference.prune import global_l1_prune

        global_l1_prune(model, opt.prune)
    if getattr(opt, "prune_channels", 0) and not resume:  # a resumed run is rebuilt at its pruned widths
        from utils.inference.channel_prune import calibration_batch, channel_prune

        calib = calibration_batch(data["train"], min(train_val_sizes(opt.imgsz)[0], 640))
        channel_prune(model, opt.prune_channels, opt.prune_method, opt.prune_global, calibration=calib)
    # oneDNN's NHWC convolutions are faster on the CPU
    memory_format = torch.channels_last if device.type == "cpu" else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    freeze_layers(model, opt.freeze)
    gs = max(int(model.stride.max()), 32)
    imgsz, imgsz_val = (check_img_size(s, gs) for s in train_val_sizes(opt.imgsz))
    # AutoBatch (-1) is resolved once: opt.yaml, --resume and later --evolve generations keep the size it chose
    batch_size = opt.batch_size = resolve_batch_size(opt.batch_size, model, imgsz, device, opt.amp)
    if main:
        (save_dir / "opt.yaml").write_text(yaml.safe_dump(plain_options(vars(opt)), sort_keys=False))
    accumulate = accumulate_steps(batch_size, opt.nbs)
    weight_decay = scaled_weight_decay(hyp["weight_decay"], batch_size, accumulate, opt.nbs)
    optimizer = build_optimizer(model, opt.optimizer, hyp["lr0"], hyp["momentum"], weight_decay)
    lf = lr_lambda(opt.epochs, hyp["lrf"], opt.cos_lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lf)

    train_loader, dataset, sampler, val_loader = _make_loaders(data, opt, hyp, imgsz, imgsz_val, batch_size, gs, ws)
    if main and not resume:
        if plots:
            from utils.plots import plot_labels

            plot_labels(label_stats(dataset), names, save_dir)
        if not opt.noautoanchor:
            run_autoanchor(model, dataset, hyp["anchor_t"], imgsz)
    model.names = names
    ema = ModelEMA(model, hyp_value(hyp, "ema_decay"), hyp_value(hyp, "ema_tau")) if main else None
    start_epoch, best_fitness, best_epoch = _resume_state(ckpt, optimizer, ema, opt) if resume else (0, 0.0, 0)
    del ckpt
    scheduler.last_epoch = start_epoch - 1

    model = dist.wrap_ddp(model, device, opt.sync_bn)  # also copies rank 0's (AutoAnchor) anchors to all ranks
    det = dist.unwrap(model).detect
    hyp_loss = scale_loss_gains(hyp, det.nl, nc, imgsz)
    hyp_loss["label_smoothing"] = opt.label_smoothing
    job = TrainJob(
        hyp, opt, device, save_dir, main, ws, plots, names, nc, model, ema, optimizer, scheduler, lf, dataset,
        train_loader, sampler, val_loader, YoloLoss(hyp_loss, det.anchors, det.stride, nc),
        EarlyStopping(opt.patience, best_fitness, best_epoch), gs, imgsz, imgsz_val, batch_size, start_epoch,
        memory_format, amp_dtype=autocast_dtype(device) if opt.amp else None, accumulate=accumulate,
    )  # fmt: skip
    if main and not opt.evolve:
        job.loggers = TrainLoggers(save_dir)
    if main:
        LOGGER.info(
            f"Image sizes {imgsz} train, {imgsz_val} val\nUsing {train_loader.num_workers} dataloader workers\n"
            f"{_precision_line(job.amp_dtype)}\n"
            f"Logging results to {save_dir}\nStarting training for {opt.epochs} epochs..."
        )
    return job


def _precision_line(amp_dtype: torch.dtype | None) -> str:
    if amp_dtype is None:
        return "Precision: fp32"
    return f"Precision: {str(amp_dtype).removeprefix('torch.')} autocast (--amp), fp32 master weights"


def _make_loaders(data: dict, opt, hyp: dict, imgsz: int, imgsz_val: int, batch_size: int, gs: int, ws: int):
    """(train loader, train dataset, --image-weights sampler or None, val loader on rank 0 else None)."""
    with dist.main_process_first():
        train_loader, dataset = create_dataloader(
            data["train"], data["nc"], imgsz, batch_size // ws, gs, hyp=hyp, augment=True,
            cache=opt.cache, rect=opt.rect, rank=dist.sampler_rank(), workers=opt.workers, prefix="train: ",
            shuffle=not opt.rect, single_cls=opt.single_cls, seed=opt.seed, quad=opt.quad,
        )  # fmt: skip
    sampler = None
    if opt.image_weights:
        sampler = torch.utils.data.WeightedRandomSampler(torch.ones(len(dataset)), len(dataset), replacement=True)
    val_loader = None
    if dist.is_main_process():
        val_loader = create_dataloader(
            data["val"], data["nc"], imgsz_val, batch_size // ws * 2, gs, rect=True, pad=0.5,
            workers=opt.workers * 2, prefix="val: ", single_cls=opt.single_cls, persistent=True,
            cache=None if opt.noval else opt.cache,  # as YOLOv5: --cache holds the validated images too
        )[0]  # fmt: skip
    return train_loader, dataset, sampler, val_loader


def _resume_state(ckpt: dict, optimizer, ema: ModelEMA | None, opt) -> tuple[int, float, int]:
    """Load optimizer and EMA state from a --resume checkpoint; returns (start epoch, best fitness, best epoch)."""
    start_epoch, best_fitness = ckpt["epoch"] + 1, float(ckpt.get("best_fitness") or 0.0)
    best_epoch = int(ckpt.get("best_epoch", ckpt["epoch"]))
    optimizer.load_state_dict(ckpt["optimizer"])
    if ema is not None:
        ema.load_plain_state(ckpt["state_dict"], int(ckpt.get("ema_updates", 0)))
    LOGGER.info(f"Resuming training from {opt.weights} from epoch {start_epoch} to {opt.epochs} total epochs")
    return start_epoch, best_fitness, best_epoch


def train_one_epoch(job: TrainJob, epoch: int, callbacks: Callbacks | None = None) -> tuple[torch.Tensor, list]:
    """One pass over the training set; returns (mean box/obj/cls loss Tensor[3], each param group's lr)."""
    opt, device, epochs = job.opt, job.device, job.opt.epochs
    job.model.train()
    close_mosaic = opt.close_mosaic and epoch >= epochs - opt.close_mosaic and job.dataset.mosaic
    if job.sampler is not None or close_mosaic:
        job.train_loader = _epoch_loader(
            job.train_loader, job.dataset, job.sampler, job.maps, job.nc, opt, epoch, epochs, job.batch_size, job.ws
        )  # fmt: skip
    if hasattr(job.train_loader.sampler, "set_epoch"):  # DistributedSampler / DistributedRectSampler
        job.train_loader.sampler.set_epoch(epoch)
    mloss = torch.zeros(3, device=device)
    if job.main:
        LOGGER.info("\n" + ("%11s" * 7) % ("Epoch", "GPU_mem", "box_loss", "obj_loss", "cls_loss", "Instances", "Size"))
    bar = tqdm(job.train_loader, total=job.nb, bar_format=BAR_FORMAT, disable=not job.main)
    job.optimizer.zero_grad()
    for i, (imgs, targets, paths, _) in enumerate(bar):
        ni = i + job.nb * epoch
        imgs = image_input(imgs, device)  # 0-1 float, scaled in place: keeps the loader's channels_last layout
        if ni <= job.nw:
            job.accumulate = warmup(job.optimizer, ni, job.nw, job.lf(epoch), job.hyp, job.batch_size, opt.nbs)
        if opt.multi_scale:
            imgs = _random_rescale(imgs, job.imgsz, job.gs)
        imgs = imgs.contiguous(memory_format=job.memory_format)
        loss_items = _train_step(job, imgs, targets, ni)
        if job.main:
            mloss = (mloss * i + loss_items) / (i + 1)
            mem = f"{torch.cuda.memory_reserved(device) / 1e9 if device.type == 'cuda' else 0:.3g}G"
            bar.set_description(
                ("%11s" * 2 + "%11.4g" * 5)
                % (f"{epoch}/{epochs - 1}", mem, *mloss.tolist(), targets.shape[0], imgs.shape[-1])
            )
            if job.plots and ni < 3:
                from utils.plots import plot_images

                mosaic = plot_images(imgs, targets, paths, job.save_dir / f"train_batch{ni}.jpg", job.names)
                if job.loggers is not None:
                    job.loggers.image(mosaic, ni)
        fire(callbacks, "on_train_batch_end", epoch=epoch, batch=i)
    bar.close()
    if job.skipped_steps:
        if job.main:
            LOGGER.warning(
                f"WARNING ⚠️ epoch {epoch}: {job.skipped_steps} optimizer step(s) skipped, their gradients were not "
                f"finite (NaN/inf loss); if this repeats, lower lr0 in --hyp {opt.hyp}"
            )
        job.skipped_steps = 0
    lr = [g["lr"] for g in job.optimizer.param_groups]
    job.scheduler.step()
    return mloss, lr


def _train_step(job: TrainJob, imgs: torch.Tensor, targets: torch.Tensor, ni: int) -> torch.Tensor:
    """Forward, backward and (every ``accumulate`` batches) an optimizer and EMA step; returns the loss items."""
    with torch.autocast(job.device.type, job.amp_dtype or torch.float32, enabled=job.amp_dtype is not None):
        pred = job.model(imgs)
        loss, loss_items = job.compute_loss(pred, targets.to(job.device))
    loss = loss * job.ws * (4.0 if job.opt.quad else 1.0)  # DDP averages gradients over ranks; quad: 4 images each
    job.scaler.scale(loss).backward()
    if ni - job.last_opt_step >= job.accumulate:
        job.scaler.unscale_(job.optimizer)
        norm = clip_gradients(job.model, max_norm=10.0)
        # fp16's GradScaler skips a step with inf/NaN gradients itself; bf16 and fp32 have no scaler, and one such
        # step would turn every weight (and so every later loss) into NaN: skip it the same way, and count it
        if job.scaler.is_enabled() or bool(torch.isfinite(norm)):
            job.scaler.step(job.optimizer)
            job.scaler.update()
            if job.ema is not None:
                job.ema.update(job.model)
        else:
            job.skipped_steps += 1
        job.optimizer.zero_grad()
        job.last_opt_step = ni
    return loss_items


def clip_gradients(model: torch.nn.Module, max_norm: float) -> torch.Tensor:
    """``clip_grad_norm_``: returns the total gradient norm and scales the gradients down to ``max_norm`` when above.

    On the CPU the scaling is skipped when it would multiply by 1 (the same gradients, bit for bit): the norm is
    already a host value there, and the ~180 multiplications cost 1.5 of the 2.4 ms of a yolov5n step's clipping.
    """
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    if norm.device.type != "cpu" or float(max_norm / (norm + 1e-6)) < 1.0:  # clip_grads_with_norm_'s factor
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return norm


def end_of_epoch(job: TrainJob, epoch: int, mloss: torch.Tensor, lr: list, callbacks: Callbacks | None = None) -> bool:
    """Rank 0 after each epoch: validate the EMA, log results.csv, save last/best/epochN.pt; True means stop."""
    opt, stopper = job.opt, job.stopper
    final_epoch = epoch + 1 == opt.epochs or stopper.possible_stop
    if not opt.noval or final_epoch:
        job.results, job.maps = validate(
            fused_copy(job.ema.ema), job.val_loader, job.names, job.device, job.compute_loss, opt,
            amp_dtype=job.amp_dtype,
        )  # fmt: skip
    fi = float(fitness(np.array(job.results).reshape(1, -1))[0])
    stop = stopper(epoch, fi)  # the stopper keeps the best fitness and epoch (ties count as the newer epoch)
    values = [*mloss.tolist(), *job.results, *lr]
    write_results_row(job.results_csv, epoch, values)
    if job.loggers is not None:
        job.loggers.epoch_end(epoch, values)
    if not opt.nosave or (final_epoch and not opt.evolve):
        _save_checkpoints(job, epoch)
    fire(callbacks, "on_fit_epoch_end", epoch=epoch, results=job.results, fitness=fi)
    return stop


def _save_checkpoints(job: TrainJob, epoch: int) -> None:
    """last.pt always, best.pt when this epoch is the best so far, epochN.pt every --save-period epochs."""
    stopper, wdir = job.stopper, job.weights_dir
    ck = epoch_checkpoint(
        job.ema, job.model, job.optimizer, epoch, stopper.best_fitness, stopper.best_epoch, job.opt, job.hyp
    )  # fmt: skip
    save_atomic(ck, wdir / "last.pt")
    if stopper.best_epoch == epoch:
        save_atomic(ck, wdir / "best.pt")
    if job.opt.save_period > 0 and epoch % job.opt.save_period == 0:
        save_atomic(ck, wdir / f"epoch{epoch}.pt")


def finish(job: TrainJob, epochs_done: int, seconds: float, callbacks: Callbacks | None = None) -> None:
    """Rank 0 at the end: strip the optimizer from last/best.pt, validate best.pt with plots, plot results.csv."""
    opt, best = job.opt, job.weights_dir / "best.pt"
    LOGGER.info(f"\n{epochs_done} epochs completed in {seconds / 3600:.3f} hours.")
    for f in (job.weights_dir / "last.pt", best):
        if f.exists():
            strip_checkpoint(f)
    if best.exists() and not opt.evolve:
        from utils.checkpoints import load_model

        LOGGER.info(f"\nValidating {best}...")
        # in the layout each epoch was validated in: NCHW ran this pass 1.3x slower on the CPU (SPPF's max pools 8x)
        model_best = load_model(best, job.device).to(memory_format=job.memory_format)
        job.results, _ = validate(
            model_best, job.val_loader, job.names, job.device, job.compute_loss, opt, job.save_dir,
            plots=job.plots, verbose=True, amp_dtype=job.amp_dtype,
        )  # fmt: skip
    if job.plots and job.results_csv.exists():
        from utils.plots import plot_results

        plot_results(job.results_csv)
    if job.loggers is not None:
        job.loggers.train_end(job.start_epoch + epochs_done - 1)
    LOGGER.info(f"Results saved to {job.save_dir}")
    fire(callbacks, "on_train_end", save_dir=job.save_dir, results=job.results)


def _epoch_loader(loader, dataset, sampler, maps, nc, opt, epoch, epochs, batch_size, ws):
    """The loader for this epoch: new sampling weights (--image-weights) and mosaic off for the last epochs."""
    if sampler is not None:
        sampler.weights = torch.as_tensor(image_sampling_weights(dataset.labels, nc, maps), dtype=torch.double)
    if opt.close_mosaic and epoch >= epochs - opt.close_mosaic and dataset.mosaic:
        if dist.is_main_process():
            LOGGER.info(f"Closing dataloader mosaic for the last {epochs - epoch} epochs")
        dataset.mosaic = False
        loader = None  # shut the persistent workers down: they hold a copy of the dataset with mosaic on
    if loader is None or (sampler is not None and loader.sampler is not sampler):
        loader = make_loader(
            dataset, batch_size // ws, rank=dist.sampler_rank(), workers=opt.workers, shuffle=not opt.rect,
            seed=opt.seed, sampler=sampler, quad=opt.quad,
        )  # fmt: skip
    return loader


def _random_rescale(imgs: torch.Tensor, imgsz: int, gs: int) -> torch.Tensor:
    """--multi-scale: resize the batch to a random multiple of ``gs`` within 0.5-1.5x ``imgsz``."""
    sz = random.randrange(int(imgsz * 0.5), int(imgsz * 1.5) + gs) // gs * gs
    sf = sz / max(imgs.shape[2:])
    if sf == 1:
        return imgs
    size = [math.ceil(x * sf / gs) * gs for x in imgs.shape[2:]]
    return F.interpolate(imgs, size=size, mode="bilinear", align_corners=False)
