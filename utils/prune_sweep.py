"""Channel-pruning sweep (``benchmarks.py --prune-channels``): what each ratio costs in mAP and buys in speed.

For the dense model and each ratio: parameters, GFLOPs, mAP50-95 before and after a short fine-tune on the data,
and inference time for PyTorch fp32 (batch 1 and batch 32), PyTorch bf16 (batch 32, on a CPU with native bf16),
ONNX Runtime and OpenVINO (batch 1). The unstructured
``--prune`` rows are added for comparison. Times are measured interleaved (every model once per round, several
rounds, the fastest kept: the least disturbed run), so load from other processes on a shared machine moves all rows
alike.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from pathlib import Path

import torch

from utils.files import REPO_ROOT
from utils.inference.channel_prune import DEFAULT_METHOD

FINETUNE_HYP = REPO_ROOT / "data" / "hyps" / "hyp.finetune.yaml"  # no warmup, an optimizer step per batch of 16
COLUMNS = (
    "model",
    "params",
    "GFLOPs",
    "mAP50-95",
    "mAP50-95 fine-tuned",
    "PyTorch b32 ms/im",
    "PyTorch bf16 b32 ms/im",
    "PyTorch b1 ms",
    "ONNX b1 ms",
    "OpenVINO b1 ms",
)


def _ms_per_image(fn, x: torch.Tensor) -> float:
    t = time.perf_counter()
    with torch.inference_mode():
        fn(x)
    return (time.perf_counter() - t) * 1e3 / x.shape[0]


def _bf16(backend):
    """A PyTorch backend that runs under bf16 autocast (``--half`` on a CPU with native bf16)."""
    backend.autocast_dtype = torch.bfloat16
    return backend


def interleaved_times(runners: dict[str, dict], inputs: dict[str, torch.Tensor], rounds: int) -> dict:
    """Fastest ms per image of ``runners[row][column](inputs[column])`` over ``rounds``, every runner once per round
    (on a shared machine the minimum is the run least slowed by other processes)."""
    for row in runners.values():  # warm-up: first calls build kernels and grids
        for col, fn in row.items():
            _ms_per_image(fn, inputs[col][:1])
    samples = {(r, c): [] for r, row in runners.items() for c in row}
    for _ in range(rounds):
        for r, row in runners.items():
            for c, fn in row.items():
                samples[(r, c)].append(_ms_per_image(fn, inputs[c]))
    return {k: min(v) for k, v in samples.items()}


def plot_sweep(rows: list[dict], file: Path, x_col: str = "PyTorch b32 ms/im") -> None:
    """mAP50-95 against latency: channel-pruned rows before/after fine-tuning, unstructured rows, the dense model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), tight_layout=True)
    channel = [r for r in rows if r["model"].startswith("channels")]
    unstructured = [r for r in rows if r["model"].startswith("unstructured")]
    dense = [r for r in rows if r["model"] == "dense"]
    for key, style, label in (("mAP50-95", "o--", "channel-pruned"), ("mAP50-95 fine-tuned", "o-", "+ fine-tune")):
        pts = [(r[x_col], r[key]) for r in channel if r[key] is not None]
        if pts:
            ax.plot(*zip(*pts), style, label=label)
            for r in channel:
                if r[key] is not None:
                    ax.annotate(r["model"].split()[-1], (r[x_col], r[key]), fontsize=8)
    if unstructured:
        ax.plot([r[x_col] for r in unstructured], [r["mAP50-95"] for r in unstructured], "s", label="--prune")
        for r in unstructured:
            ax.annotate(r["model"].split()[-1], (r[x_col], r["mAP50-95"]), fontsize=8)
    for r in dense:
        ax.plot(r[x_col], r["mAP50-95"], "k*", ms=12, label="dense")
        if r["mAP50-95 fine-tuned"] is not None:
            ax.plot(r[x_col], r["mAP50-95 fine-tuned"], "k^", ms=9, label="dense + fine-tune")
    ax.set_xlabel(f"{x_col} (CPU)")
    ax.set_ylabel("mAP50-95")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(file, dpi=120)
    plt.close(fig)


def _validate(val_fn: Callable, weights: str | Path, data: str, imgsz: int, workers: int, save_dir: Path, **kw):
    result, _, _ = val_fn(data=data, weights=[str(weights)], imgsz=imgsz, batch_size=32, workers=workers,
                           project=save_dir, name="val", exist_ok=True, noplots=True, **kw)  # fmt: skip
    return result


def _fine_tune(
    train_fn: Callable, weights: Path, data: str, epochs: int, imgsz: int, workers: int, save_dir: Path, name: str
) -> Path:
    run = train_fn(data=data, weights=str(weights), epochs=epochs, imgsz=[imgsz], batch_size=16, workers=workers,
                    hyp=str(FINETUNE_HYP), nbs=16, project=save_dir, name=name, exist_ok=True, noplots=True,
                    device="cpu")  # fmt: skip
    return run / "weights" / "best.pt"


def run_channel_sweep(
    weights: str,
    data: str,
    ratios: list[float],
    save_dir: Path,
    train_fn: Callable,
    val_fn: Callable,
    export_fn: Callable,
    method: str = DEFAULT_METHOD,
    global_pruning: bool = False,
    imgsz: int = 640,
    epochs: int = 3,
    finetune_imgsz: int = 320,
    unstructured: list[float] | tuple[float, ...] = (0.1, 0.2, 0.3),
    workers: int = 2,
    rounds: int = 3,
) -> list[dict]:
    """Run the sweep; writes ``prune_sweep.csv`` and ``prune_sweep.png`` into ``save_dir``; returns the rows.

    ``train_fn``, ``val_fn`` and ``export_fn`` are ``train.run``, ``val.run`` and ``export.run`` (passed in: utils
    imports no entry script). Fine-tuning: ``epochs`` on ``data`` at ``finetune_imgsz``, batch 16, from each
    pruned checkpoint (``data/hyps/hyp.finetune.yaml``, ``--nbs 16``); mAP is measured at ``imgsz``, batch 32,
    before and after.
    """
    from models.yolo import model_flops
    from utils.checkpoints import load_model, save_checkpoint
    from utils.data.dataset_config import load_data_config
    from utils.devices import cpu_has_native_bf16
    from utils.inference.backends import load_backend
    from utils.inference.channel_prune import calibration_batch, channel_prune
    from utils.inference.prune import global_l1_prune, make_permanent

    cpu = torch.device("cpu")
    stem = Path(weights).stem
    rows, runners = [], {}
    calib = calibration_batch(load_data_config(data, require=("train",))["train"], min(imgsz, 640))
    for ratio in [0.0, *ratios]:
        name = f"channels {ratio:g}" if ratio else "dense"
        model = load_model(weights, fuse=False)
        if ratio:
            channel_prune(model, ratio, method, global_pruning, calibration=calib)
        ckpt = save_checkpoint(model, save_dir / f"{stem}_ch{round(ratio * 100)}.pt")
        before = _validate(val_fn, ckpt, data, imgsz, workers, save_dir)
        tuned = None
        if epochs:
            best = _fine_tune(
                train_fn, ckpt, data, epochs, finetune_imgsz, workers, save_dir, f"ft{round(ratio * 100)}"
            )
            tuned = _validate(val_fn, best, data, imgsz, workers, save_dir).map
        files = export_fn(weights=str(ckpt), include=["onnx", "openvino"], imgsz=imgsz, save_dir=save_dir)
        fused = model.fuse(verbose=False).eval().to(memory_format=torch.channels_last)
        rows.append({"model": name, "params": sum(p.numel() for p in model.parameters()),
                     "GFLOPs": round(model_flops(fused, imgsz), 2), "mAP50-95": round(before.map, 4),
                     "mAP50-95 fine-tuned": None if tuned is None else round(tuned, 4)})  # fmt: skip
        runners[name] = {
            "PyTorch b32 ms/im": load_backend(str(ckpt), cpu),
            **({"PyTorch bf16 b32 ms/im": _bf16(load_backend(str(ckpt), cpu))} if cpu_has_native_bf16() else {}),
            "PyTorch b1 ms": load_backend(str(ckpt), cpu),
            "ONNX b1 ms": load_backend(str(files["onnx"]), cpu),
            "OpenVINO b1 ms": load_backend(str(files["openvino"]), cpu),
        }
    for sparsity in unstructured:
        name = f"unstructured {sparsity:g}"
        result = _validate(val_fn, weights, data, imgsz, workers, save_dir, prune=sparsity)
        model = load_model(weights)
        global_l1_prune(model, sparsity)
        make_permanent(model)
        backend = load_backend(weights, cpu)
        backend.model = model.to(memory_format=torch.channels_last)
        rows.append({"model": name, "params": sum(p.numel() for p in model.parameters()),
                     "GFLOPs": round(model_flops(model, imgsz), 2), "mAP50-95": round(result.map, 4),
                     "mAP50-95 fine-tuned": None})  # fmt: skip
        runners[name] = {"PyTorch b32 ms/im": backend, "PyTorch b1 ms": backend}
    x = torch.rand(32, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(0))
    inputs = {c: x if "b32" in c else x[:1] for c in COLUMNS[5:]}
    times = interleaved_times(runners, inputs, rounds)
    for r in rows:
        for c in COLUMNS[5:]:
            r[c] = round(times[(r["model"], c)], 1) if (r["model"], c) in times else None
    with open(save_dir / "prune_sweep.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    plot_sweep(rows, save_dir / "prune_sweep.png")
    return rows
