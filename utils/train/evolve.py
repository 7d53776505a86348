"""Hyperparameter evolution (``train.py --evolve N``): a genetic search over the hyp YAML keys.

Each generation trains once with a mutation of a parent chosen from the best rows of ``evolve.csv`` (fitness
weighted), appends its final metrics and hyperparameters to ``evolve.csv``, and rewrites ``hyp_evolve.yaml``
with the best row so far. ``evolve.png`` plots every hyperparameter against fitness at the end.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import yaml

from utils.files import append_csv_row
from utils.log import LOGGER
from utils.metrics import fitness
from utils.plots import read_csv_columns
from utils.train.hyps import load_hyp, mutate_hyp
from utils.train.setup import RESULT_KEYS

METRIC_KEYS = RESULT_KEYS[3:10]  # precision ... val/cls_loss: what train() returns
PARENTS = 5  # parents are drawn from this many best rows


def read_evolve_csv(path: Path) -> tuple[list[str], np.ndarray]:
    """``(column names, ndarray[rows, columns])`` of an ``evolve.csv``."""
    cols = read_csv_columns(path)
    return list(cols), np.stack(list(cols.values()), 1)


def select_parent(path: Path, rng: np.random.Generator) -> dict[str, float]:
    """One of the ``PARENTS`` fittest rows of ``evolve.csv``, drawn with probability rising with fitness."""
    keys, rows = read_evolve_csv(path)
    fit = fitness(rows[:, :4])
    order = np.argsort(-fit)[: min(PARENTS, len(rows))]
    w = fit[order] - fit[order].min() + 1e-6
    row = rows[order[rng.choice(len(order), p=w / w.sum())]]
    return {k: float(v) for k, v in zip(keys[len(METRIC_KEYS) :], row[len(METRIC_KEYS) :])}


def append_generation(path: Path, results: tuple, hyp: dict[str, float]) -> None:
    append_csv_row(path, (*METRIC_KEYS, *hyp), (*results[: len(METRIC_KEYS)], *hyp.values()))


def write_best_yaml(evolve_csv: Path, yaml_path: Path) -> dict[str, float]:
    """``hyp_evolve.yaml``: the fittest generation's hyperparameters, its metrics in the header comments."""
    keys, rows = read_evolve_csv(evolve_csv)
    i = int(np.argmax(fitness(rows[:, :4])))
    m = len(METRIC_KEYS)
    best = {k: float(v) for k, v in zip(keys[m:], rows[i, m:])}
    header = (
        f"# Hyperparameter Evolution Results\n# Best generation: {i}\n# Last generation: {len(rows) - 1}\n"
        f"# {', '.join(keys[:m])}\n# {', '.join(f'{v:.5g}' for v in rows[i, :m])}\n\n"
    )
    yaml_path.write_text(header + yaml.safe_dump(best, sort_keys=False), encoding="utf-8")
    return best


def evolve(hyp: dict[str, float], opt: argparse.Namespace, device: torch.device, train_fn: Callable) -> Path:
    """Run ``opt.evolve`` generations of ``train_fn(hyp, opt, device) -> results`` in ``opt.save_dir``."""
    save_dir = Path(opt.save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    evolve_csv, evolve_yaml = save_dir / "evolve.csv", save_dir / "hyp_evolve.yaml"
    opt.noval, opt.nosave, opt.resume = True, True, False  # only the final epoch is validated, nothing is saved
    rng = np.random.default_rng(opt.seed)
    for g in range(opt.evolve):
        child = load_hyp(mutate_hyp(select_parent(evolve_csv, rng), rng)) if evolve_csv.exists() else dict(hyp)
        LOGGER.info(f"\nEvolve generation {g + 1}/{opt.evolve}: {', '.join(f'{k}={v:g}' for k, v in child.items())}")
        results = train_fn(dict(child), opt, device)
        append_generation(evolve_csv, results, child)
        write_best_yaml(evolve_csv, evolve_yaml)
    from utils.plots import plot_evolve

    plot_evolve(evolve_csv)
    LOGGER.info(
        f"Hyperparameter evolution finished {opt.evolve} generations\nResults saved to {save_dir}\n"
        f"Usage example: $ python train.py --hyp {evolve_yaml}"
    )
    return save_dir
