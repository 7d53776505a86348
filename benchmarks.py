"""Benchmark every export format: file size, mAP50-95 and inference time from ``val.run`` on one dataset.

Usage:
    python benchmarks.py --weights yolov5n.pt --data coco128.yaml --imgsz 640
    python benchmarks.py --weights yolov5n.pt --prune 0.1 0.2 0.3            # plus a sparsity sweep (PyTorch)
    python benchmarks.py --weights a.pt b.pt                                 # an Ensemble, exported as one file
    python benchmarks.py --weights yolov5n.pt --prune-channels 0.1 0.3 0.5 --epochs 3   # channel-pruning sweep
    python benchmarks.py --hard-fail 0.30                                    # exit 1 on an error or mAP < 0.30
    python benchmarks.py --study --data data/shapes.yaml --imgsz 160 --epochs 10 \
        --cfgs yolov5n.yaml yolov5s.yaml --ensembles yolov5n,yolov5n         # accuracy-vs-cost study (utils/study.py)

Formats whose package or device is missing are listed as skipped with what they need. The table is also saved as
``runs/benchmarks/expN/benchmarks.csv``.
"""

from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import replace
from pathlib import Path

import utils.startup  # noqa: F401 (first: no garbage collection while the script imports)
import val as validate
from utils.devices import cpu_has_native_bf16, select_device
from utils.errors import UserError
from utils.export.formats import (
    FORMATS,
    HALF_NEEDS_CUDA,
    ExportError,
    ExportOptions,
    export_formats,
    file_size_mb,
    format_row,
    load_export_model,
    missing_requirement,
)
from utils.files import increment_path
from utils.log import LOGGER
from utils.options import (
    CHANNEL_PRUNE_DEFAULT,
    CHANNEL_PRUNE_METHODS,
    ENSEMBLE_MODES,
    OPTIMIZERS,
    UsageError,
    add_shared,
    data_options,
    device_options,
    image_size_options,
    output_options,
    print_args,
    run_cli,
    weights_options,
)

COLUMNS = ("Format", "Size (MB)", "mAP50-95", "Inference time (ms/im)", "Status")
DEFAULT_FORMATS = tuple(r.flag for r in FORMATS if r.flag != "pt")  # the PyTorch row is the source weights


class BenchmarkError(UserError):
    """``--hard-fail``: a format errored or fell below the mAP floor."""


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    parents = [
        weights_options(None),  # default yolov5s.pt, except for --study where weights are optional extras
        data_options(),
        image_size_options(640),
        device_options(),
        output_options("runs/benchmarks"),
    ]
    p = argparse.ArgumentParser(description="Benchmark export formats (size, mAP, speed)", parents=parents)
    add_shared(p, "--batch-size", help="batch size of the exports and of validation (1; --study: 16)")
    add_shared(p, "--include", nargs="*", default=list(DEFAULT_FORMATS), help="export formats (none: PyTorch only)")
    add_shared(p, "--dynamic")
    add_shared(p, "--workers")
    p.add_argument(
        "--hard-fail",
        nargs="?",
        type=float,
        const=0.0,
        default=None,
        help="exit non-zero when a format errors or its mAP50-95 is below this floor",
    )
    p.add_argument("--prune", nargs="*", type=float, default=[], help="sparsity sweep: pruned PyTorch rows")
    p.add_argument("--prune-exclude", nargs="*", default=[], help="module prefixes kept dense when pruning")
    exportable = [m for m in ENSEMBLE_MODES if m != "wbf"]  # wbf's per-member NMS runs in Python: not exportable
    p.add_argument("--ensemble-mode", choices=exportable, default="nms", help="merge of several weights")
    p.add_argument(
        "--prune-channels",
        nargs="*",
        type=float,
        default=[],
        help="channel-pruning sweep (utils/prune_sweep.py) over these ratios instead; --epochs: fine-tune length",
    )
    p.add_argument(
        "--prune-method",
        choices=CHANNEL_PRUNE_METHODS,
        default=CHANNEL_PRUNE_DEFAULT,
        help="--prune-channels importance",
    )
    p.add_argument("--finetune-imgsz", type=int, default=320, help="--prune-channels: fine-tune image size")
    p.add_argument("--study", action="store_true", help="accuracy-vs-cost study (utils/study.py) instead")
    p.add_argument("--cfgs", nargs="+", default=[], help="--study: model YAMLs to train and measure")
    p.add_argument(
        "--ensembles", nargs="+", default=[], help="--study: ensembles by member label, e.g. yolov5n,yolov5n"
    )
    p.add_argument("--epochs", type=int, default=0, help="--study: training epochs per config (0: cost only)")
    p.add_argument("--hyp", default=None, help="--study training: hyperparameters (default: train.py's)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=None, help="--study training: optimizer")
    p.add_argument("--nbs", type=int, default=None, help="--study training: nominal batch size")
    return p.parse_args(argv)


def _row(fmt: str, size: float | None, result=None, status: str = "✅") -> dict:
    return {
        "Format": fmt,
        "Size (MB)": round(size, 2) if size is not None else None,
        "mAP50-95": round(result.map, 4) if result is not None else None,
        "Inference time (ms/im)": round(result.speed_ms[1], 2) if result is not None else None,
        "Status": status,
    }


def _reason(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:200] if lines else ''}"


def _warn_fp32_exports(dev) -> None:
    LOGGER.warning(
        f"WARNING ⚠️ --half: fp16 {'/'.join(HALF_NEEDS_CUDA)} exports need CUDA; exporting them in fp32 on {dev}"
    )


def print_table(rows: list[dict]) -> None:
    widths = [max(len(c), *(len("-" if r[c] is None else str(r[c])) for r in rows)) for c in COLUMNS]
    LOGGER.info("\n" + "  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths)))
    for r in rows:
        LOGGER.info("  ".join(("-" if r[c] is None else str(r[c])).ljust(w) for c, w in zip(COLUMNS, widths)))


def run(
    weights: list[str] | str = (),
    data: str = "data/coco128.yaml",
    imgsz: int = 640,
    batch_size: int | None = None,
    device: str = "",
    half: bool = False,
    include: list[str] | tuple[str, ...] = DEFAULT_FORMATS,
    dynamic: bool | None = None,
    workers: int = 8,
    hard_fail: float | None = None,
    prune: list[float] | tuple[float, ...] = (),
    prune_exclude: list[str] | None = None,
    ensemble_mode: str = "nms",
    prune_channels: list[float] | tuple[float, ...] = (),
    prune_method: str = CHANNEL_PRUNE_DEFAULT,
    finetune_imgsz: int = 320,
    project: str | Path = "runs/benchmarks",
    name: str = "exp",
    exist_ok: bool = False,
    study: bool = False,
    cfgs: list[str] | tuple[str, ...] = (),
    ensembles: list[str] | tuple[str, ...] = (),
    epochs: int = 0,
    hyp: str | None = None,
    optimizer: str | None = None,
    nbs: int | None = None,
) -> list[dict] | Path:
    """Validate the weights and each export; print the table, save ``benchmarks.csv``; returns the rows.

    ``study=True`` runs ``utils.study.run_study`` instead (``cfgs``, ``ensembles``, ``epochs`` and the training
    recipe ``hyp``/``optimizer``/``nbs``) and returns its folder. ``prune_channels`` runs the channel-pruning sweep
    of ``utils.prune_sweep`` (with the unstructured ``prune`` ratios, default 0.1 0.2 0.3) and returns its rows.
    """
    paths = [str(weights)] if isinstance(weights, (str, Path)) else [str(w) for w in weights]
    if prune_channels:
        save_dir = increment_path(Path(project) / name, exist_ok=exist_ok, mkdir=True)
        sweep = dict(method=prune_method, imgsz=imgsz, epochs=epochs, finetune_imgsz=finetune_imgsz, workers=workers)
        return _channel_sweep(paths, data, list(prune_channels), list(prune) or [0.1, 0.2, 0.3], save_dir, sweep)
    if study:
        import train
        from utils.study import run_study

        recipe = {k: v for k, v in (("hyp", hyp), ("optimizer", optimizer), ("nbs", nbs)) if v is not None}
        return run_study(
            cfgs=cfgs, weights=paths, ensembles=ensembles, data=data, imgsz=imgsz, epochs=epochs,
            batch_size=batch_size or 16, device=device, project=project, name=name, exist_ok=exist_ok,
            workers=workers, train_kwargs=recipe, train_fn=train.run, val_fn=validate.run,
        )  # fmt: skip
    batch_size = batch_size or 1
    paths = paths or ["yolov5s.pt"]
    try:
        rows_to_run = [format_row(f) for f in include]
    except ExportError as e:
        raise UsageError(str(e)) from None
    save_dir = increment_path(Path(project) / name, exist_ok=exist_ok, mkdir=True)
    dev = select_device(device, batch_size)
    val_kw = dict(data=data, imgsz=imgsz, batch_size=batch_size, device=device, half=half, workers=workers)
    val_kw.update(noplots=True, project=save_dir / "val", exist_ok=True, ensemble_mode=ensemble_mode)

    def validate_row(fmt: str, files: list[str], size: float, **over) -> dict:
        try:
            result = validate.run(weights=files, name=fmt.replace(" ", "_"), **{**val_kw, **over})[0]
            return _row(fmt, size, result)
        except Exception as e:  # a format that cannot validate is a table row with its reason
            return _row(fmt, size, status=f"❌ val: {_reason(e)}")

    pt_size = sum(file_size_mb(Path(p)) for p in paths)
    if dev.type == "cpu" and cpu_has_native_bf16():  # both precisions, whatever --half says: the CPU's real choice
        rows = [
            validate_row("PyTorch", paths, pt_size, half=False),
            validate_row("PyTorch bf16", paths, pt_size, half=True),
        ]
    else:
        rows = [validate_row("PyTorch", paths, pt_size)]
    opts = ExportOptions(imgsz=(imgsz, imgsz), batch_size=batch_size, half=half, dynamic=dynamic, source=str(paths[0]))
    stem = Path(paths[0]).stem + ("_ensemble" if len(paths) > 1 else "")
    if half and dev.type != "cuda" and any(f.flag in HALF_NEEDS_CUDA for f in rows_to_run):
        _warn_fp32_exports(dev)
    rows += _export_rows(rows_to_run, paths, dev, opts, ensemble_mode, save_dir / stem, validate_row)
    rows += [_pruned_row(paths, sparsity, prune_exclude, save_dir, dev, validate_row) for sparsity in prune]

    print_table(rows)
    LOGGER.info(f"\nResults saved to {_save_csv(rows, save_dir / 'benchmarks.csv')}")
    if hard_fail is not None:
        _hard_fail(rows, hard_fail)
    return rows


def _export_rows(formats, paths: list[str], dev, opts: ExportOptions, ensemble_mode: str, stem: Path, validate_row):
    """Export the weights (loaded once, on the first format that needs them) to each format and validate the file."""
    rows, model = [], None
    for fmt in formats:
        reason = missing_requirement(fmt, dev)
        if reason:
            rows.append(_row(fmt.name, None, status=f"skipped: {reason}"))
            continue
        fp16 = opts.half and (dev.type == "cuda" or fmt.flag not in HALF_NEEDS_CUDA)
        try:
            if model is None:
                model = load_export_model(paths, dev, ensemble_mode=ensemble_mode)
            file = export_formats(model, [fmt.flag], stem, replace(opts, half=fp16), dev)[fmt.flag]
        except Exception as e:
            rows.append(_row(fmt.name, None, status=f"❌ export: {_reason(e)}"))
            continue
        if not fmt.checked:  # exported, but this toolkit has no runtime for it: nothing to validate, no failure
            rows.append(_row(fmt.name, file_size_mb(file), status=f"⚠️ exported, not validated (no {fmt.name} backend)"))
            continue
        rows.append(validate_row(fmt.name, [str(file)], file_size_mb(file)))
    return rows


def _pruned_row(paths: list[str], sparsity: float, exclude, save_dir: Path, dev, validate_row) -> dict:
    """--prune: every member pruned to ``sparsity`` and stored sparse on its own, then validated together."""
    name, files = f"PyTorch pruned {sparsity:g}", []
    try:
        for p in paths:
            pruned = load_export_model(p, dev, prune=sparsity, prune_exclude=exclude)
            stem = save_dir / f"{Path(p).stem}_pruned{round(sparsity * 100)}"
            files.append(export_formats(pruned, ["pt"], stem, ExportOptions(prune=sparsity, source=p), dev)["pt"])
    except Exception as e:
        return _row(name, None, status=f"❌ export: {_reason(e)}")
    return validate_row(name, [str(f) for f in files], sum(file_size_mb(f) for f in files))


def _save_csv(rows: list[dict], csv_file: Path) -> Path:
    with open(csv_file, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return csv_file


def _channel_sweep(paths: list[str], data: str, ratios: list[float], unstructured: list[float], save_dir: Path,
                   sweep: dict) -> list[dict]:  # fmt: skip
    import export
    import train
    from utils.prune_sweep import run_channel_sweep

    if len(paths) != 1:
        raise UsageError("--prune-channels: the sweep takes one --weights file")
    fns = dict(train_fn=train.run, val_fn=validate.run, export_fn=export.run)
    return run_channel_sweep(paths[0], data, ratios, save_dir, unstructured=unstructured, **fns, **sweep)


def _hard_fail(rows: list[dict], floor: float) -> None:
    bad = [f"{r['Format']} ({r['Status']})" for r in rows if r["Status"].startswith("❌")]
    low = [r for r in rows if r["mAP50-95"] is not None and r["mAP50-95"] < floor]
    bad += [f"{r['Format']} (mAP50-95 {r['mAP50-95']} < {floor})" for r in low]
    if bad:
        raise BenchmarkError(f"--hard-fail: {'; '.join(bad)}")


def main(opt: argparse.Namespace) -> None:
    print_args("benchmarks", vars(opt))
    try:
        run(**vars(opt))
    except BenchmarkError as e:
        print(f"benchmarks.py: error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    run_cli("benchmarks.py", lambda: main(parse_opt(sys.argv[1:])))
