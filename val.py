"""Validate detection weights on a dataset: mAP, P, R, per-class table, speed, plots, COCO JSON.

Usage:
    python val.py --weights yolov5n.pt --data coco128.yaml --img 640
    python val.py --weights a.pt b.pt --data coco128.yaml          # Ensemble
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from utils.data.dataset_config import load_data_config
from utils.data.datasets import create_dataloader
from utils.devices import select_device
from utils.evaluate import EvalOptions, coco_evaluate, evaluate, ground_truth_coco_json
from utils.files import increment_path
from utils.inference.loader import load_inference_model
from utils.options import (
    UsageError,
    check_img_size,
    data_options,
    device_options,
    image_size_options,
    inference_options,
    output_options,
    print_args,
    run_cli,
    threshold_options,
    weights_options,
)

TASKS = ("train", "val", "test", "speed")


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    parents = [
        data_options(),
        weights_options("yolov5s.pt"),
        image_size_options(640),
        threshold_options(0.001, 0.6),
        device_options(),
        inference_options(),
        output_options("runs/val"),
    ]
    p = argparse.ArgumentParser(description="Validate YOLOv5-style detection weights", parents=parents)
    p.add_argument("--batch-size", type=int, default=32, help="batch size")
    p.add_argument("--task", default="val", choices=TASKS, help="split to evaluate, or 'speed' for timings only")
    p.add_argument("--workers", type=int, default=8, help="max dataloader workers")
    p.add_argument("--single-cls", action="store_true", help="treat as single-class dataset")
    p.add_argument("--verbose", action="store_true", help="report mAP by class")
    p.add_argument("--save-txt", action="store_true", help="save results to *.txt")
    p.add_argument("--save-hybrid", action="store_true", help="save label+prediction hybrid results to *.txt")
    p.add_argument("--save-conf", action="store_true", help="save confidences in --save-txt labels")
    p.add_argument("--save-json", action="store_true", help="save a COCO-JSON results file and run pycocotools")
    p.add_argument("--noplots", action="store_true", help="do not save plots")
    opt = p.parse_args(argv)
    opt.save_txt |= opt.save_hybrid
    return opt


def run(
    data: str | dict = "data/coco128.yaml",
    weights: list[str] | str = "yolov5s.pt",
    batch_size: int = 32,
    imgsz: int = 640,
    conf_thres: float = 0.001,
    iou_thres: float = 0.6,
    max_det: int = 300,
    task: str = "val",
    device: str = "",
    workers: int = 8,
    single_cls: bool = False,
    augment: bool = False,
    verbose: bool = False,
    save_txt: bool = False,
    save_hybrid: bool = False,
    save_conf: bool = False,
    save_json: bool = False,
    project: str | Path = "runs/val",
    name: str = "exp",
    exist_ok: bool = False,
    half: bool = False,
    noplots: bool = False,
    tta_scales: list[float] | None = None,
    tta_flips: list[str] | None = None,
    ensemble_mode: str = "nms",
    prune: float = 0.0,
    prune_exclude: list[str] | None = None,
    prune_channels: float = 0.0,
    prune_method: str = "l1",
    prune_global: bool = False,
):
    """Evaluate ``weights`` on the ``task`` split of ``data``; returns ``(EvalResult, maps, save_dir)``."""
    if task == "speed":
        conf_thres, iou_thres, save_json, noplots = 0.25, 0.45, False, True
    save_txt |= save_hybrid
    if batch_size < 1:
        raise UsageError(f"--batch-size {batch_size}: must be at least 1")
    device = select_device(device, batch_size)
    model = load_inference_model(
        weights,
        device,
        half=half,
        augment=augment,
        tta_scales=tta_scales,
        tta_flips=tta_flips,
        ensemble_mode=ensemble_mode,
        prune=prune,
        prune_exclude=prune_exclude,
        verbose=verbose,
        imgsz=imgsz,
        prune_channels=prune_channels,
        prune_method=prune_method,
        prune_global=prune_global,
    )
    half = model.half_precision
    data = load_data_config(data, require=("val" if task == "speed" else task,))
    split = "val" if task == "speed" else task
    names = model.names
    nc = 1 if single_cls else data["nc"]
    if not single_cls and len(names) != nc:
        raise UsageError(
            f"--weights: the model has {len(names)} classes but {data['yaml_file']} has {nc}; "
            f"pass --single-cls or weights trained on this dataset"
        )
    stride = model.max_stride
    imgsz = check_img_size(imgsz, stride)
    save_dir = increment_path(Path(project) / name, exist_ok=exist_ok, mkdir=True)
    loader, dataset = create_dataloader(
        data[split],
        data["nc"],
        imgsz,
        batch_size,
        stride,
        pad=0.5,
        rect=model.supports_rect,
        workers=workers,
        prefix=f"{split}: ",
        single_cls=single_cls,
    )
    anno_json = Path(data["path"]) / "annotations" / "instances_val2017.json"
    is_coco = anno_json.is_file() and "coco" in str(data["path"]).lower()
    opts = EvalOptions(
        conf_thres=conf_thres,
        iou_thres=iou_thres,
        max_det=max_det,
        single_cls=single_cls,
        half=half,
        verbose=verbose,
        plots=not noplots,
        save_txt=save_txt,
        save_hybrid=save_hybrid,
        save_conf=save_conf,
        save_json=save_json,
        coco_ids=is_coco,
    )
    names_eval = {0: "item"} if single_cls else names
    import torch  # here, not at the top: utils (imported first) sets OMP_WAIT_POLICY before torch loads

    with torch.inference_mode():
        result, jdict = evaluate(model, loader, names_eval, device, opts, save_dir)
    if model.member_times is not None and verbose:
        model.print_member_times(result.seen)
    if save_json and jdict:
        w = Path(model.weight_paths[0]).stem
        pred_json = save_dir / f"{w}_predictions.json"
        pred_json.write_text(json.dumps(jdict))
        print(f"\nEvaluating pycocotools mAP... saving {pred_json}...")
        if not is_coco:
            anno_json = ground_truth_coco_json(dataset, names_eval, save_dir / "ground_truth.json")
        image_ids = sorted({r["image_id"] for r in jdict} | {_id(f) for f in dataset.im_files})
        result.coco_stats = coco_evaluate(pred_json, anno_json, image_ids)
        result.map, result.map50 = result.coco_stats[:2]
    if save_txt:
        n = len(list((save_dir / "labels").glob("*.txt")))
        print(f"{n} labels saved to {save_dir / 'labels'}")
    print(f"Results saved to {save_dir}")
    return result, result.maps, save_dir


def _id(path: str):
    stem = Path(path).stem
    return int(stem) if stem.isnumeric() else stem


def main(opt: argparse.Namespace) -> None:
    print_args("val", vars(opt))
    run(**vars(opt))


if __name__ == "__main__":
    run_cli("val.py", lambda: main(parse_opt(sys.argv[1:])))
