"""Validate detection weights on a dataset: mAP, P, R, per-class table, speed, plots, COCO JSON.

Usage:
    python val.py --weights yolov5n.pt --data coco128.yaml --img 640
    python val.py --weights a.pt b.pt --data coco128.yaml          # Ensemble
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import utils.startup  # noqa: F401 (first: no garbage collection while the script imports)
from utils.data.dataset_config import load_data_config
from utils.data.datasets import create_dataloader
from utils.devices import select_device
from utils.evaluate import EvalOptions, coco_evaluate_predictions, evaluate
from utils.files import increment_path, print_labels_saved
from utils.inference.loader import InferenceOptions, load_inference_model
from utils.log import LOGGER
from utils.options import (
    UsageError,
    add_shared,
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
    add_shared(p, "--batch-size", default=32)
    p.add_argument("--task", default="val", choices=TASKS, help="split to evaluate, or 'speed' for timings only")
    add_shared(p, "--workers")
    p.add_argument("--single-cls", action="store_true", help="treat as single-class dataset")
    p.add_argument("--verbose", action="store_true", help="report mAP by class")
    add_shared(p, "--save-txt")
    p.add_argument("--save-hybrid", action="store_true", help="save label+prediction hybrid results to *.txt")
    add_shared(p, "--save-conf")
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
    **inference,
):
    """Evaluate ``weights`` on the ``task`` split of ``data``; returns ``(EvalResult, maps, save_dir)``.

    ``inference``: the other ``InferenceOptions`` keywords (``tta_scales, tta_flips, ensemble_mode, prune,
    prune_exclude, prune_channels, prune_method, prune_global``), as the flags of the same names.
    """
    if task == "speed":
        conf_thres, iou_thres, save_json, noplots = 0.25, 0.45, False, True
    save_txt |= save_hybrid
    if batch_size < 1:
        raise UsageError(f"--batch-size {batch_size}: must be at least 1")
    device = select_device(device, batch_size)
    split = "val" if task == "speed" else task
    data = load_data_config(data, require=(split,))
    inference.setdefault("prune_calibration", data[split])  # --prune-channels: compensate on the split's images
    inference = InferenceOptions.from_kwargs(half=half, augment=augment, verbose=verbose, imgsz=imgsz, **inference)
    model = load_inference_model(weights, device, inference)
    _check_classes(model.names, data, single_cls)
    imgsz = check_img_size(imgsz, model.max_stride)
    save_dir = increment_path(Path(project) / name, exist_ok=exist_ok, mkdir=True)
    loader, dataset = create_dataloader(
        data[split], data["nc"], imgsz, batch_size, model.max_stride, pad=0.5, rect=model.supports_rect,
        workers=workers, prefix=f"{split}: ", single_cls=single_cls,
    )  # fmt: skip
    anno_json = Path(data["path"]) / "annotations" / "instances_val2017.json"
    is_coco = anno_json.is_file() and "coco" in str(data["path"]).lower()
    opts = EvalOptions(
        conf_thres=conf_thres, iou_thres=iou_thres, max_det=max_det, single_cls=single_cls,
        half=model.half_precision, verbose=verbose, plots=not noplots, save_txt=save_txt, save_hybrid=save_hybrid,
        save_conf=save_conf, save_json=save_json, coco_ids=is_coco,
    )  # fmt: skip
    names_eval = {0: "item"} if single_cls else model.names
    import torch

    with torch.inference_mode(), model.runtime_threads():
        result, jdict = evaluate(model, loader, names_eval, device, opts, save_dir)
    if model.member_times is not None and verbose:
        model.print_member_times(result.seen)
    if save_json and jdict:
        pred_json = save_dir / f"{Path(model.weight_paths[0]).stem}_predictions.json"
        if not is_coco:
            anno_json = None  # ground truth built from the YOLO labels
        result.coco_stats = coco_evaluate_predictions(jdict, pred_json, anno_json, dataset, names_eval)
        result.map, result.map50 = result.coco_stats[:2]
    if save_txt:
        print_labels_saved(save_dir / "labels")
    LOGGER.info(f"Results saved to {save_dir}")
    return result, result.maps, save_dir


def _check_classes(names: dict[int, str], data: dict, single_cls: bool) -> None:
    """The model must predict the dataset's classes (any number with --single-cls)."""
    nc = 1 if single_cls else data["nc"]
    if not single_cls and len(names) != nc:
        raise UsageError(
            f"--weights: the model has {len(names)} classes but {data['yaml_file']} has {nc}; "
            f"pass --single-cls or weights trained on this dataset"
        )


def main(opt: argparse.Namespace) -> None:
    print_args("val", vars(opt))
    run(**vars(opt))


if __name__ == "__main__":
    run_cli("val.py", lambda: main(parse_opt(sys.argv[1:])))
