"""The training engine behind ``train.py``: model setup, the epoch loop, per-epoch validation and checkpoints.

``train(hyp, opt, device)`` runs one training job described by ``opt`` (the parsed ``train.py`` options, already
resolved by ``utils.train.setup.resolve_options``) and returns the final validation figures. Validation calls
``utils.evaluate.evaluate``, the function ``val.py`` runs, on the EMA weights.
"""

from __future__ import annotations

import argparse
import math
import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from tqdm import tqdm

from utils.checkpoints import save_atomic
from utils.data.dataset_config import load_data_config
from utils.data.datasets import create_dataloader, label_stats, make_loader
from utils.evaluate import EvalOptions, evaluate
from utils.metrics import fitness
from utils.train import dist
from utils.train.ema import ModelEMA
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
            print(
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


def validate(model, loader, names, device, compute_loss, opt, save_dir=None, plots=False, verbose=False):
    """``evaluate`` with the training settings; returns ((P, R, mAP50, mAP, box, obj, cls), per-class mAP)."""
    opts = EvalOptions(conf_thres=0.001, iou_thres=0.6, single_cls=opt.single_cls, plots=plots, verbose=verbose)
    with torch.no_grad():
        result, _ = evaluate(model, loader, names, device, opts, save_dir if plots else None, compute_loss)
    return result.as_tuple(), result.maps


def train(hyp: dict, opt: argparse.Namespace, device: torch.device, callbacks: Callbacks | None = None) -> tuple:
    """Train as ``opt`` says; returns the final (P, R, mAP50, mAP50-95, val box, obj, cls losses)."""
    save_dir, epochs, resume = Path(opt.save_dir), opt.epochs, bool(opt.resume)
    main = dist.is_main_process()
    ws = dist.world_size() if dist.is_distributed() else 1
    wdir = save_dir / "weights"
    last, best, results_csv = wdir / "last.pt", wdir / "best.pt", save_dir / "results.csv"
    plots = main and not opt.evolve and not opt.noplots
    if main:
        wdir.mkdir(parents=True, exist_ok=True)
        (save_dir / "hyp.yaml").write_text(yaml.safe_dump(hyp, sort_keys=False))
        if not resume:
            results_csv.unlink(missing_ok=True)  # a reused folder (--exist-ok) starts a fresh table
        for tmp in wdir.glob(".*.pt.*.tmp"):  # left by a run killed while saving (save_atomic's temporary files)
            tmp.unlink(missing_ok=True)
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
        from utils.inference.channel_prune import channel_prune

        channel_prune(model, opt.prune_channels, opt.prune_method, opt.prune_global)
    channels_last = device.type == "cpu"  # oneDNN's NHWC convolutions are faster on the CPU
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
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
    lf = lr_lambda(epochs, hyp["lrf"], opt.cos_lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lf)

    with dist.main_process_first():
        train_loader, dataset = create_dataloader(
            data["train"], data["nc"], imgsz, batch_size // ws, gs, hyp=hyp, augment=True,
            cache=opt.cache, rect=opt.rect, rank=dist.local_rank(), workers=opt.workers, prefix="train: ",
            shuffle=not opt.rect, single_cls=opt.single_cls, seed=opt.seed, quad=opt.quad,
        )  # fmt: skip
    sampler = None
    if opt.image_weights:
        sampler = torch.utils.data.WeightedRandomSampler(torch.ones(len(dataset)), len(dataset), replacement=True)
    nb = len(train_loader)
    val_loader = None
    if main:
        val_loader = create_dataloader(
            data["val"], data["nc"], imgsz_val, batch_size // ws * 2, gs, rect=True, pad=0.5,
            workers=opt.workers * 2, prefix="val: ", single_cls=opt.single_cls, persistent=True,
        )[0]  # fmt: skip
        if not resume:
            if plots:
                from utils.plots import plot_labels

                plot_labels(label_stats(dataset), names, save_dir)
            if not opt.noautoanchor:
                run_autoanchor(model, dataset, hyp["anchor_t"], imgsz)
    model.names = names
    ema = ModelEMA(model) if main else None

    start_epoch, best_fitness, best_epoch = 0, 0.0, 0
    if resume:
        start_epoch, best_fitness = ckpt["epoch"] + 1, float(ckpt.get("best_fitness") or 0.0)
        best_epoch = int(ckpt.get("best_epoch", ckpt["epoch"]))
        optimizer.load_state_dict(ckpt["optimizer"])
        if ema is not None:
            ema.load_plain_state(ckpt["state_dict"], int(ckpt.get("ema_updates", 0)))
        print(f"Resuming training from {opt.weights} from epoch {start_epoch} to {epochs} total epochs")
    del ckpt
    scheduler.last_epoch = start_epoch - 1

    model = dist.wrap_ddp(model, device, opt.sync_bn)  # also copies rank 0's (AutoAnchor) anchors to all ranks
    det = dist.unwrap(model).detect
    hyp_loss = scale_loss_gains(hyp, det.nl, nc, imgsz)
    hyp_loss["label_smoothing"] = opt.label_smoothing
    compute_loss = YoloLoss(hyp_loss, det.anchors, det.stride, nc)
    amp = bool(opt.amp) and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    stopper = EarlyStopping(opt.patience, best_fitness, best_epoch)
    nw = warmup_iterations(hyp["warmup_epochs"], nb)
    last_opt_step, maps, results = -1, np.zeros(nc), (0.0,) * 7
    if main:
        print(
            f"Image sizes {imgsz} train, {imgsz_val} val\nUsing {train_loader.num_workers} dataloader workers\n"
            f"Logging results to {save_dir}\nStarting training for {epochs} epochs..."
        )
    t0 = time.time()
    epoch = start_epoch - 1
    for epoch in range(start_epoch, epochs):
        model.train()
        if sampler is not None or (opt.close_mosaic and epoch >= epochs - opt.close_mosaic and dataset.mosaic):
            train_loader = _epoch_loader(train_loader, dataset, sampler, maps, nc, opt, epoch, epochs, batch_size, ws)
        if isinstance(train_loader.sampler, torch.utils.data.distributed.DistributedSampler):
            train_loader.sampler.set_epoch(epoch)
        mloss = torch.zeros(3, device=device)
        header = ("%11s" * 7) % ("Epoch", "GPU_mem", "box_loss", "obj_loss", "cls_loss", "Instances", "Size")
        if main:
            print("\n" + header)
        bar = tqdm(train_loader, total=nb, bar_format=BAR_FORMAT, disable=not main)
        optimizer.zero_grad()
        for i, (imgs, targets, paths, _) in enumerate(bar):
            ni = i + nb * epoch
            imgs = imgs.to(device, non_blocking=True).float() / 255
            if ni <= nw:
                accumulate = warmup(optimizer, ni, nw, lf(epoch), hyp, batch_size, opt.nbs)
            if opt.multi_scale:
                imgs = _random_rescale(imgs, imgsz, gs)
            if channels_last:
                imgs = imgs.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", enabled=amp):
                pred = model(imgs)
                loss, loss_items = compute_loss(pred, targets.to(device))
            loss = loss * ws * (4.0 if opt.quad else 1.0)  # DDP averages gradients over ranks; quad: 4 images each
            scaler.scale(loss).backward()
            if ni - last_opt_step >= accumulate:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad()
                if ema is not None:
                    ema.update(model)
                last_opt_step = ni
            if main:
                mloss = (mloss * i + loss_items) / (i + 1)
                mem = f"{torch.cuda.memory_reserved(device) / 1e9 if device.type == 'cuda' else 0:.3g}G"
                bar.set_description(
                    ("%11s" * 2 + "%11.4g" * 5)
                    % (f"{epoch}/{epochs - 1}", mem, *mloss.tolist(), targets.shape[0], imgs.shape[-1])
                )
                if plots and ni < 3:
                    from utils.plots import plot_images

                    plot_images(imgs, targets, paths, save_dir / f"train_batch{ni}.jpg", names)
            fire(callbacks, "on_train_batch_end", epoch=epoch, batch=i)
        bar.close()
        lr = [g["lr"] for g in optimizer.param_groups]
        scheduler.step()

        stop = False
        if main:
            final_epoch = epoch + 1 == epochs or stopper.possible_stop
            if not opt.noval or final_epoch:
                results, maps = validate(ema.ema, val_loader, names, device, compute_loss, opt)
            fi = float(fitness(np.array(results).reshape(1, -1))[0])
            stop = stopper(epoch, fi)  # the stopper keeps the best fitness and epoch (ties count as the newer epoch)
            write_results_row(results_csv, epoch, [*mloss.tolist(), *results, *lr])
            if not opt.nosave or (final_epoch and not opt.evolve):
                ck = epoch_checkpoint(
                    ema, model, optimizer, epoch, stopper.best_fitness, stopper.best_epoch, opt, hyp
                )  # fmt: skip
                save_atomic(ck, last)
                if stopper.best_epoch == epoch:
                    save_atomic(ck, best)
                if opt.save_period > 0 and epoch % opt.save_period == 0:
                    save_atomic(ck, wdir / f"epoch{epoch}.pt")
                del ck
            fire(callbacks, "on_fit_epoch_end", epoch=epoch, results=results, fitness=fi)
        if dist.broadcast_object(stop):
            break

    if main:
        print(f"\n{epoch - start_epoch + 1} epochs completed in {(time.time() - t0) / 3600:.3f} hours.")
        for f in (last, best):
            if f.exists():
                strip_checkpoint(f)
        if best.exists() and not opt.evolve:
            from utils.checkpoints import load_model

            print(f"\nValidating {best}...")
            model_best = load_model(best, device)
            results, _ = validate(
                model_best, val_loader, names, device, compute_loss, opt, save_dir, plots=plots, verbose=True
            )
        if plots and results_csv.exists():
            from utils.plots import plot_results

            plot_results(results_csv)
        print(f"Results saved to {save_dir}")
        fire(callbacks, "on_train_end", save_dir=save_dir, results=results)
    return tuple(results)


def _epoch_loader(loader, dataset, sampler, maps, nc, opt, epoch, epochs, batch_size, ws):
    """The loader for this epoch: new sampling weights (--image-weights) and mosaic off for the last epochs."""
    if sampler is not None:
        sampler.weights = torch.as_tensor(image_sampling_weights(dataset.labels, nc, maps), dtype=torch.double)
    if opt.close_mosaic and epoch >= epochs - opt.close_mosaic and dataset.mosaic:
        if dist.is_main_process():
            print(f"Closing dataloader mosaic for the last {epochs - epoch} epochs")
        dataset.mosaic = False
        loader = None  # shut the persistent workers down: they hold a copy of the dataset with mosaic on
    if loader is None or (sampler is not None and loader.sampler is not sampler):
        loader = make_loader(
            dataset, batch_size // ws, rank=dist.local_rank(), workers=opt.workers, shuffle=not opt.rect,
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
