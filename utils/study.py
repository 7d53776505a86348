"""Accuracy-vs-cost study of detectors and ensembles of them (``benchmarks.py --study``).

For each model config (trained here for ``epochs``), checkpoint and ensemble: parameters and GFLOPs of the fused
network, batch-1 latency (median, CPU and CUDA when present; network only, NMS excluded) and P, R, mAP50, mAP50-95
from ``val.run``. Writes ``study.csv``, ``frontier.png`` (mAP50-95 against GFLOPs, parameters and CPU latency with a
power law ``mAP = a * x^b`` fitted on the Pareto-optimal single models, ensembles as stars), ``training_curves.png``
and ``summary.txt``, which answers: does an ensemble sit above the single-model frontier at equal GFLOPs?
"""

from __future__ import annotations

import copy
import csv
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from utils.files import increment_path
from utils.log import LOGGER

COST_KEYS = {"gflops": "GFLOPs", "params": "parameters (millions)", "cpu_ms": "CPU latency (ms, batch 1)"}
_PLOT_SCALE = {"params": 1e-6}  # x-axis units of the frontier plot
ENSEMBLE_STYLE = {"c": "tab:red", "marker": "*", "s": 160, "label": "ensemble"}
CURVE_COLUMNS = ("train/box_loss", "train/obj_loss", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95")


@dataclass
class StudyRow:
    """One line of ``study.csv``: a single model or an ensemble (costs are summed over members)."""

    name: str
    kind: str  # "model" or "ensemble"
    params: int
    gflops: float
    cpu_ms: float
    cuda_ms: float = math.nan  # NaN without CUDA
    precision: float = math.nan
    recall: float = math.nan
    map50: float = math.nan
    map: float = math.nan  # mAP50-95; NaN for untrained configs (epochs=0)
    train_s: float = math.nan  # wall time of the training run made by the study
    members: list[str] = field(default_factory=list)  # weight files
    results_csv: str = ""  # the training run's per-epoch results


# ------------------------------------------------------------------------------------------------------- measuring
def model_cost(models: Sequence[nn.Module], imgsz: int) -> tuple[int, float]:
    """``(parameters, GFLOPs at imgsz x imgsz)`` of the fused models, summed: what inference actually runs.

    Published YOLOv5 figures (yolov5n 4.5, yolov5s 16.5 GFLOPs at 640) are for fused models; unfused BatchNorms
    add about 2%.
    """
    from models.yolo import fused_copy, model_flops

    params, gflops = 0, 0.0
    for m in models:
        fused = fused_copy(m).float().eval()
        params += sum(p.numel() for p in fused.parameters())
        gflops += model_flops(fused, imgsz)
    return params, gflops


def measure_latency(net: nn.Module, imgsz: int, device: torch.device, runs: int = 20, warmup: int = 5) -> float:
    """Median milliseconds of one forward pass of ``net`` on a Tensor[1, 3, imgsz, imgsz] on ``device``.

    ``net`` is switched to channels_last (in place) and fed a channels_last input on every device, as
    ``PyTorchBackend`` runs ``val.py`` and ``detect.py`` (yolov5n at 160 px: 13.2 vs 16.2 ms in NCHW on this
    project's 2-core CPU).
    """
    from utils.devices import sync_time

    net.to(memory_format=torch.channels_last)
    x = torch.zeros(1, 3, imgsz, imgsz, device=device).contiguous(memory_format=torch.channels_last)
    times = []
    with torch.inference_mode():
        for i in range(warmup + runs):
            t0 = sync_time(device)
            net(x)
            if i >= warmup:
                times.append(sync_time(device) - t0)
    return statistics.median(times) * 1e3


# ---------------------------------------------------------------------------------------------------------- fitting
def pareto_front(cost: Sequence[float], score: Sequence[float]) -> list[int]:
    """Indices of points no other point beats (lower or equal cost and higher score), sorted by cost."""
    order = sorted(range(len(cost)), key=lambda i: (cost[i], -score[i]))
    front, best = [], -math.inf
    for i in order:
        if score[i] > best:
            front.append(i)
            best = score[i]
    return front


def power_law_fit(cost: Sequence[float], score: Sequence[float]) -> tuple[float, float]:
    """``(a, b)`` of ``score = a * cost^b`` by least squares on log-log (numpy.polyfit); NaNs below two points."""
    x, y = np.asarray(cost, dtype=float), np.asarray(score, dtype=float)
    ok = (x > 0) & (y > 0) & np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 2 or len(np.unique(x[ok])) < 2:
        return math.nan, math.nan
    b, log_a = np.polyfit(np.log(x[ok]), np.log(y[ok]), 1)
    return float(math.exp(log_a)), float(b)


def frontier_fit(rows: Sequence[StudyRow], key: str = "gflops") -> tuple[float, float, list[str]]:
    """Power law through the Pareto-optimal single models (all single models when fewer than 2 are optimal).

    Returns ``(a, b, names of the fitted models)``.
    """
    singles = [r for r in rows if r.kind == "model" and r.map > 0 and getattr(r, key) > 0]
    front = [singles[i] for i in pareto_front([getattr(r, key) for r in singles], [r.map for r in singles])]
    used = front if len(front) >= 2 else singles
    a, b = power_law_fit([getattr(r, key) for r in used], [r.map for r in used])
    return a, b, [r.name for r in used]


def ensemble_verdicts(rows: Sequence[StudyRow]) -> list[str]:
    """One line per ensemble: its mAP50-95 against the single-model frontier and singles at equal or more GFLOPs."""
    a, b, _ = frontier_fit(rows)
    singles = [r for r in rows if r.kind == "model" and not math.isnan(r.map)]
    lines = []
    for e in (r for r in rows if r.kind == "ensemble"):
        line = f"{e.name}: {e.gflops:.2f} GFLOPs, mAP50-95 {e.map:.3f}"
        if not math.isnan(b):
            pred = a * e.gflops**b
            verdict = "above" if e.map > pred else "below"
            line += f"; frontier predicts {pred:.3f} at equal GFLOPs ({e.map - pred:+.3f}, {verdict} the frontier)"
        bigger = [s for s in singles if s.gflops >= e.gflops]
        if bigger:
            s = min(bigger, key=lambda r: r.gflops)
            word = "beats" if e.map > s.map else "does not beat"
            line += f"; {word} {s.name} ({s.gflops:.2f} GFLOPs, mAP50-95 {s.map:.3f})"
        lines.append(line)
    return lines


# --------------------------------------------------------------------------------------------------------- outputs
def write_csv(rows: Sequence[StudyRow], path: Path) -> Path:
    """``study.csv``: one row per model / ensemble, members joined with ``;``."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(asdict(rows[0])) if rows else list(StudyRow.__dataclass_fields__))
        w.writeheader()
        for r in rows:
            w.writerow({**asdict(r), "members": ";".join(r.members)})
    return path


def plot_frontier(rows: Sequence[StudyRow], save_path: Path) -> Path:
    """mAP50-95 against GFLOPs / parameters / CPU ms (log x): single models, Pareto power-law fit, ensembles."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig = Figure(figsize=(5.2 * len(COST_KEYS), 4.2), layout="tight")
    for a_, (key, label) in zip(fig.subplots(1, len(COST_KEYS)), COST_KEYS.items()):
        scale = _PLOT_SCALE.get(key, 1.0)
        singles = [r for r in rows if r.kind == "model" and not math.isnan(r.map)]
        ensembles = [r for r in rows if r.kind == "ensemble" and not math.isnan(r.map)]
        a, b, fitted = frontier_fit(rows, key)
        for group, style in ((singles, {"c": "tab:blue", "label": "single model"}), (ensembles, ENSEMBLE_STYLE)):
            a_.scatter([getattr(r, key) * scale for r in group], [r.map for r in group], **style)
        for r in singles + ensembles:
            xy = (getattr(r, key) * scale, r.map)
            a_.annotate(r.name, xy, fontsize=7, xytext=(4, 3), textcoords="offset points")
        if not math.isnan(b):
            xs = [getattr(r, key) * scale for r in singles + ensembles]
            x = np.geomspace(min(xs) / 1.3, max(xs) * 1.3, 50)
            y = a * (x / scale) ** b
            a_.plot(x, y, "--", c="tab:gray", label=f"power law a*x^b, b={b:.3f} ({len(fitted)} models)")
        a_.set(xscale="log", xlabel=label, ylabel="mAP50-95", title=f"mAP50-95 vs {label.split(' (')[0]}")
        a_.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))  # short ranges still get readable ticks
        a_.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        a_.xaxis.set_minor_formatter(NullFormatter())
        a_.grid(True, which="both", alpha=0.3)
        a_.legend(fontsize=7, loc="best")
    save_path = Path(save_path)
    save_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(save_path, dpi=100)
    return save_path


def plot_curves(rows: Sequence[StudyRow], save_path: Path) -> Path | None:
    """Per-epoch training curves of every model trained by the study, overlaid (columns all runs share)."""
    from utils.plots import plot_training_curves, read_csv_columns

    runs = {r.name: Path(r.results_csv) for r in rows if r.results_csv and Path(r.results_csv).is_file()}
    if not runs:
        return None
    shared = set.intersection(*(set(read_csv_columns(p)) for p in runs.values()))
    columns = [c for c in CURVE_COLUMNS if c in shared]
    return plot_training_curves(runs, save_path, columns) if columns else None


def format_table(rows: Sequence[StudyRow]) -> str:
    head = f"{'model':<28}{'kind':>9}{'params':>11}{'GFLOPs':>9}{'CPU ms':>9}{'CUDA ms':>9}"
    head += f"{'P':>7}{'R':>7}{'mAP50':>7}{'mAP':>7}{'train s':>9}"
    lines = [head]
    for r in rows:
        lines.append(
            f"{r.name:<28}{r.kind:>9}{r.params:>11}{r.gflops:>9.2f}{r.cpu_ms:>9.1f}{r.cuda_ms:>9.2f}"
            f"{r.precision:>7.3f}{r.recall:>7.3f}{r.map50:>7.3f}{r.map:>7.3f}{r.train_s:>9.0f}"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------ the study
def _label(path: str) -> str:
    """``yolov5n.yaml`` -> ``yolov5n``; ``runs/train/exp3/weights/best.pt`` -> ``exp3``."""
    p = Path(path)
    return p.parent.parent.name if p.stem in ("best", "last") and p.parent.name == "weights" else p.stem


def _results_csv_of(weights: str) -> str:
    """A training run's ``results.csv`` beside ``run/weights/best.pt`` (for the curves), or ''."""
    p = Path(weights)
    csv_path = p.parent.parent / "results.csv"
    return str(csv_path) if p.parent.name == "weights" and csv_path.is_file() else ""


def ensemble_name(labels: Sequence[str]) -> str:
    """``['yolov5n', 'yolov5n-seed1']`` -> ``2xyolov5n``; mixed members -> ``a+b``."""
    bases = {lb.split("-seed")[0] for lb in labels}
    return f"{len(labels)}x{bases.pop()}" if len(bases) == 1 else "+".join(labels)


def run_study(
    cfgs: Sequence[str] = (),
    weights: Sequence[str] = (),
    ensembles: Sequence[Sequence[str] | str] = (),
    data: str | dict = "data/shapes.yaml",
    imgsz: int = 160,
    epochs: int = 0,
    batch_size: int = 16,
    device: str = "",
    project: str | Path = "runs/study",
    name: str = "exp",
    exist_ok: bool = False,
    workers: int = 2,
    latency_runs: int = 20,
    train_kwargs: dict | None = None,
    *,
    train_fn: Callable[..., Path],
    val_fn: Callable,
) -> Path:
    """Measure ``cfgs`` (trained ``epochs`` here; cost only when 0), ``weights`` and ``ensembles``; returns save_dir.

    ``ensembles`` lists members by the label of a cfg or weight above (file stem, e.g. ``yolov5n``) or by checkpoint
    path, as a list or a string ``"yolov5n,yolov5n"``. A cfg repeated within one ensemble is trained again with
    ``seed=k`` for its k-th repeat (``yolov5n-seed1``), since an ensemble of identical weights is just one model.
    ``train_kwargs`` adds options to every training run (``hyp``, ``optimizer``...). ``train_fn`` / ``val_fn`` are
    ``train.run`` / ``val.run`` or stand-ins taking the same keywords (``benchmarks.py`` passes the real ones).
    """
    from utils.devices import select_device

    save_dir = increment_path(Path(project) / name, exist_ok=exist_ok, mkdir=True)
    val_device = select_device(device, batch_size)
    study = _Study(save_dir, data, imgsz, epochs, batch_size, device, workers, train_kwargs or {}, train_fn)
    groups_in = [m.replace("+", ",").split(",") if isinstance(m, str) else list(m) for m in ensembles]  # CLI "a,b"
    known = {_label(c) for c in cfgs} | {_label(w) for w in weights}
    for token in (t for members in groups_in for t in members):  # before any training: a typo costs nothing
        if token not in known and not Path(token).is_file():
            raise ValueError(f"--ensembles {token}: neither a label of --cfgs/--weights ({sorted(known)}) nor a file")
    for cfg in cfgs:
        study.add_cfg(cfg)
    for w in weights:
        study.add_weights(w)
    groups = [study.ensemble_labels(members) for members in groups_in]
    cuda = val_device if val_device.type == "cuda" else None
    study.measure([[lb] for lb in study.rows] + groups, cuda, latency_runs, val_fn)
    return write_outputs(list(study.rows.values()), save_dir)


class _Study:
    """The models of one study by label: their weight files, rows and (for trained configs) model YAMLs."""

    def __init__(self, save_dir, data, imgsz, epochs, batch_size, device, workers, train_kwargs, train_fn):
        self.save_dir, self.data, self.imgsz, self.epochs = save_dir, data, imgsz, epochs
        self.batch_size, self.device, self.workers = batch_size, device, workers
        self.train_kwargs, self.train_fn = train_kwargs, train_fn
        self.rows: dict[str, StudyRow] = {}
        self.files: dict[str, str] = {}  # label -> weight file
        self.cfg_of: dict[str, str] = {}  # label -> model YAML (trainable)
        self.by_path: dict[str, str] = {}  # checkpoint file -> its label

    def unique(self, label: str) -> str:
        """yolov5n.yaml and yolov5n.pt both given: yolov5n, yolov5n-2."""
        out, n = label, 2
        while out in self.files:
            out, n = f"{label}-{n}", n + 1
        return out

    def add_cfg(self, cfg: str) -> None:
        """Train ``cfg`` (``epochs`` > 0) or save it untrained for its cost alone."""
        label = self.unique(_label(cfg))
        self.cfg_of[label] = cfg
        if self.epochs > 0:
            self.train(cfg, label, 0)
            return
        from models.yolo import DetectionModel
        from utils.checkpoints import save_checkpoint

        file = save_checkpoint(DetectionModel(cfg), self.save_dir / "untrained" / f"{label}.pt")
        self.files[label] = str(file)
        self.rows[label] = StudyRow(label, "model", 0, 0.0, 0.0)

    def add_weights(self, w: str) -> str:
        """A checkpoint file under its own label (never confused with a trained config of the same stem)."""
        label = self.by_path[str(w)] = self.unique(_label(w))
        self.files[label] = str(w)
        self.rows[label] = StudyRow(label, "model", 0, 0.0, 0.0, results_csv=_results_csv_of(w))
        return label

    def train(self, cfg: str, label: str, seed: int) -> None:
        kwargs = {**self.train_kwargs, **({"seed": seed} if seed else {})}  # e.g. hyp, optimizer
        final = []  # train.run validates best.pt at the end; those figures are reused instead of validating again
        t0 = time.perf_counter()
        run_dir = Path(
            self.train_fn(
                data=self.data, cfg=cfg, weights="", epochs=self.epochs, imgsz=self.imgsz,
                batch_size=self.batch_size, project=str(self.save_dir / "train"), name=label, exist_ok=True,
                noplots=True, device=self.device, workers=self.workers,
                callbacks={"on_train_end": [lambda results, **_: final.append(results)]}, **kwargs,
            )
        )  # fmt: skip
        self.files[label] = str(run_dir / "weights" / "best.pt")
        results = run_dir / "results.csv"
        row = self.rows[label] = StudyRow(label, "model", 0, 0.0, 0.0, train_s=time.perf_counter() - t0)
        row.results_csv = str(results) if results.is_file() else ""
        if final:
            row.precision, row.recall, row.map50, row.map = (float(v) for v in final[0][:4])

    def ensemble_labels(self, members: list[str]) -> list[str]:
        """Members' labels; a repeated config is trained again with seed k for its k-th repeat."""
        labels, seen = [], {}
        for token in members:
            if token in self.files:  # a label
                base = token
            elif token in self.by_path:  # a file given twice
                base = self.by_path[token]
            else:
                base = self.add_weights(token)
            k = seen[base] = seen.get(base, -1) + 1
            label = base if k == 0 else f"{base}-seed{k}"
            if label not in self.files:
                if base not in self.cfg_of or self.epochs <= 0:
                    raise ValueError(
                        f"ensemble {list(members)} repeats {base}: identical weights make no ensemble; give its "
                        f"config (--cfgs) with --epochs > 0 to train it again with another seed, or distinct weights"
                    )
                self.train(self.cfg_of[base], label, k)
            labels.append(label)
        return labels

    def measure(self, groups: list[list[str]], cuda: torch.device | None, latency_runs: int, val_fn) -> None:
        """Cost and latency of every model and ensemble; mAP from ``val_fn`` where training did not give it."""
        from utils.checkpoints import load_model

        loaded: dict[str, nn.Module] = {}  # ensembles reuse their members' fused models
        for labels in groups:
            for lb in labels:
                if lb not in loaded:
                    loaded[lb] = load_model(self.files[lb], "cpu")
            models = [loaded[lb] for lb in labels]
            one = len(labels) == 1
            row = self.rows[labels[0]] if one else StudyRow(ensemble_name(labels), "ensemble", 0, 0.0, 0.0)
            row.members = [self.files[lb] for lb in labels]
            _measure_cost(row, models, labels, self.imgsz, cuda, latency_runs)
            measurable = self.epochs > 0 or not any(lb in self.cfg_of for lb in labels)  # untrained: cost only
            if measurable and math.isnan(row.map):  # not yet validated by its own training run
                result = val_fn(
                    data=self.data, weights=row.members, batch_size=self.batch_size, imgsz=self.imgsz,
                    device=self.device, workers=self.workers, project=str(self.save_dir / "val"), name=row.name,
                    exist_ok=True, noplots=True,
                )[0]  # fmt: skip
                row.precision, row.recall, row.map50, row.map = result.mp, result.mr, result.map50, result.map
            self.rows[row.name] = row


def _measure_cost(
    row: StudyRow, models: list[nn.Module], labels: list[str], imgsz: int, cuda: torch.device | None, runs: int
) -> None:
    """Fill ``row``'s parameters, GFLOPs and latencies; several models run as one NMS ``Ensemble``."""
    from models.ensemble import Ensemble

    row.params, row.gflops = model_cost(models, imgsz)
    net = models[0] if len(models) == 1 else Ensemble(models, "nms", labels)
    row.cpu_ms = measure_latency(net, imgsz, torch.device("cpu"), runs)
    if cuda is not None:
        row.cuda_ms = measure_latency(copy.deepcopy(net).to(cuda), imgsz, cuda, runs)


def write_outputs(rows: Sequence[StudyRow], save_dir: Path) -> Path:
    """``study.csv``, ``frontier.png``, ``training_curves.png`` and ``summary.txt`` in ``save_dir``; prints them."""
    save_dir = Path(save_dir)
    write_csv(rows, save_dir / "study.csv")
    lines = [format_table(rows), ""]
    if any(not math.isnan(r.map) for r in rows):
        plot_frontier(rows, save_dir / "frontier.png")
        for key in COST_KEYS:
            a, b, used = frontier_fit(rows, key)
            lines.append(f"power law mAP50-95 = {a:.4g} * {key}^{b:.3f} (fit on {', '.join(used)})")
        lines += ["", *ensemble_verdicts(rows)]
    plot_curves(rows, save_dir / "training_curves.png")
    text = "\n".join(lines)
    (save_dir / "summary.txt").write_text(text + "\n")
    LOGGER.info(text)
    LOGGER.info(f"Study results saved to {save_dir}")
    return save_dir
