"""Train a YOLOv5-style detector.

With no --data, ``python train.py`` runs a self-contained job that needs no download and no GPU: a YOLOv5n from
scratch on the synthetic shapes dataset (generated on first use); see ``SHAPES_JOB``. As soon as --data is given
the defaults are YOLOv5's (``YOLOV5_JOB``): --weights yolov5s.pt, 640 px, 100 epochs, batch 16, hyp.scratch-low.

Usage:
    python train.py                                                           # shapes job
    python train.py --data coco128.yaml --weights yolov5n.pt --img 640        # from a pretrained checkpoint
    python train.py --data coco128.yaml --weights '' --cfg yolov5n.yaml       # from scratch
    python train.py --resume                                                  # finish the latest interrupted run
    torchrun --nproc_per_node 2 train.py --data coco128.yaml --device 0,1     # DDP (--device cpu: gloo)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import utils.startup  # noqa: F401 (first: no garbage collection while the script imports)
from utils.options import (
    OPTIMIZERS,
    add_shared,
    channel_prune_options,
    data_options,
    output_options,
    print_args,
    run_cli,
)

# ``python train.py`` with no --data: a job that needs no download and no GPU. A YOLOv5n from scratch on the
# synthetic shapes dataset, trained at 192 px and validated at the dataset's native 256 px, with AdamW and an
# optimizer step every batch of 16 (data/hyps/hyp.shapes.yaml, whose header says why each rate), mosaic off for the
# last 5 of 30 epochs. Times by machine and the seed study behind 30 epochs: README, Training.
SHAPES_JOB = {
    "data": "data/shapes.yaml",
    "weights": "",
    "cfg": "yolov5n.yaml",
    "hyp": "data/hyps/hyp.shapes.yaml",
    "epochs": 30,
    "batch_size": 16,
    "imgsz": [192, 256],
    "cache": "ram",
    "optimizer": "AdamW",
    "nbs": 16,
    "close_mosaic": 5,
}
# YOLOv5's defaults, used as soon as --data is given.
YOLOV5_JOB = {
    "weights": "yolov5s.pt",
    "cfg": "",
    "hyp": "data/hyps/hyp.scratch-low.yaml",
    "epochs": 100,
    "batch_size": 16,
    "imgsz": [640],
    "cache": None,
    "optimizer": "SGD",
    "nbs": 64,
    "close_mosaic": 0,
}


def _describe(job: dict) -> str:
    return ", ".join(f"--{k.replace('_', '-')} {v!r}" for k, v in job.items())


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    parents = [data_options(), output_options("runs/train"), channel_prune_options()]
    p = argparse.ArgumentParser(
        description="Train a YOLOv5-style detector.",
        epilog=f"Options left unset take two sets of defaults. Without --data, the self-contained shapes job: "
        f"{_describe(SHAPES_JOB)}. With --data, YOLOv5's: {_describe(YOLOV5_JOB)}.",
        parents=parents,
    )
    p.set_defaults(data=None)
    p.add_argument(
        "--imgsz", "--img", "--img-size", nargs="+", type=int, default=None, help="train [val] image size (pixels)"
    )
    p.add_argument("--weights", type=str, default=None, help="initial weights path ('' = from scratch with --cfg)")
    p.add_argument("--cfg", type=str, default=None, help="model.yaml path or name, e.g. yolov5n.yaml")
    p.add_argument("--hyp", type=str, default=None, help="hyperparameters path (default hyp.scratch-low.yaml)")
    p.add_argument("--epochs", type=int, default=None, help="total training epochs")
    add_shared(p, "--batch-size", help="total batch size for all GPUs, -1 for AutoBatch")
    p.add_argument("--rect", action="store_true", help="rectangular training")
    p.add_argument("--resume", nargs="?", const=True, default=False, help="resume the latest run, or the given last.pt")
    p.add_argument("--nosave", action="store_true", help="only save the final checkpoint")
    p.add_argument("--noval", action="store_true", help="only validate the final epoch")
    p.add_argument("--noautoanchor", action="store_true", help="disable AutoAnchor")
    p.add_argument("--noplots", action="store_true", help="save no plot files")
    p.add_argument("--evolve", type=int, nargs="?", const=300, help="evolve hyperparameters for x generations")
    p.add_argument("--cache", type=str, nargs="?", const="ram", choices=("ram", "disk"), help="cache images")
    p.add_argument("--image-weights", action="store_true", help="use weighted image selection for training")
    p.add_argument("--device", default="", help="cuda device, i.e. 0 or 0,1,2,3 or cpu")
    p.add_argument("--multi-scale", action="store_true", help="vary img-size +/- 50%%")
    p.add_argument("--single-cls", action="store_true", help="train multi-class data as single-class")
    p.add_argument("--optimizer", type=str, choices=OPTIMIZERS, default=None, help="optimizer")
    p.add_argument(
        "--nbs", type=int, default=None, help="nominal batch size: gradients accumulate until a step has seen this many"
    )
    p.add_argument("--sync-bn", action="store_true", help="use SyncBatchNorm, only available in DDP mode on CUDA")
    add_shared(p, "--workers", help="max dataloader workers (per RANK in DDP mode)")
    p.add_argument("--quad", action="store_true", help="quad dataloader")
    p.add_argument("--cos-lr", action="store_true", help="cosine LR scheduler")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="label smoothing epsilon")
    p.add_argument("--patience", type=int, default=100, help="EarlyStopping patience (epochs without improvement)")
    p.add_argument("--freeze", nargs="+", type=int, default=[0], help="freeze layers: backbone=10, first3=0 1 2")
    p.add_argument("--save-period", type=int, default=-1, help="save a checkpoint every x epochs (disabled if < 1)")
    p.add_argument("--seed", type=int, default=0, help="global training seed")
    p.add_argument("--close-mosaic", type=int, default=None, help="turn mosaic off for the last N epochs")
    p.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="mixed precision: fp16 on CUDA, bf16 on a CPU with AMX/AVX512-BF16 (--no-amp: fp32)",
    )
    p.add_argument("--prune", type=float, default=0.0, help="fine-tune a globally L1-pruned model of this sparsity")
    p.add_argument("--local-rank", "--local_rank", type=int, default=-1, help=argparse.SUPPRESS)  # old launchers
    return p.parse_args(argv)


def run(**kwargs) -> Path:
    """In-process training, e.g. ``run(data='coco128.yaml', weights='', cfg='yolov5n.yaml', epochs=3)``.

    Options not given take the same defaults as on the command line; ``callbacks`` ({event: [fn]}) is passed to
    the engine. Returns the run folder (``weights/best.pt``, ``results.csv`` ...).
    """
    callbacks = kwargs.pop("callbacks", None)
    opt = parse_opt([])
    unknown = [k for k in kwargs if not hasattr(opt, k)]
    if unknown:
        raise TypeError(f"train.run: unknown option(s) {unknown}")
    vars(opt).update(kwargs)
    return main(opt, callbacks)


def main(opt: argparse.Namespace, callbacks: dict | None = None) -> Path:
    from utils.devices import select_device
    from utils.files import increment_path
    from utils.log import quiet
    from utils.train import dist
    from utils.train.hyps import load_hyp
    from utils.train.setup import resolve_options
    from utils.train.trainer import train

    with quiet(not dist.is_main_process()):  # only rank 0 logs (other ranks' warnings still show)
        opt = resolve_options(opt, vars(parse_opt([])), SHAPES_JOB, YOLOV5_JOB)
        print_args("train", vars(opt))
        device = dist.init_distributed(select_device(opt.device, max(opt.batch_size, 0)))
        try:
            if not opt.resume:  # rank 0 picks the run folder, so all ranks agree on it
                folder = increment_path(Path(opt.project) / opt.name, exist_ok=opt.exist_ok)
                opt.save_dir = str(dist.broadcast_object(folder if dist.is_main_process() else None))
            hyp = load_hyp(opt.hyp)
            if opt.evolve:
                from utils.train.evolve import evolve

                evolve(hyp, opt, device, train)
            else:
                train(hyp, opt, device, callbacks)
        finally:
            dist.cleanup()
    return Path(opt.save_dir)


if __name__ == "__main__":
    run_cli("train.py", lambda: main(parse_opt(sys.argv[1:])))
