"""Training hyperparameters: the key set, loading and checking hyp YAMLs, and mutation for evolution."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from utils.errors import UserError


class HypError(UserError):
    """A hyp YAML with unknown or missing keys or a bad value; the message is one line naming the file."""


# Every hyp file holds these keys, in this order (the order of data/hyps/*.yaml), and may add OPTIONAL_HYP_KEYS.
HYP_KEYS: tuple[str, ...] = (
    "lr0",
    "lrf",
    "momentum",
    "weight_decay",
    "warmup_epochs",
    "warmup_momentum",
    "warmup_bias_lr",
    "box",
    "cls",
    "cls_pw",
    "obj",
    "obj_pw",
    "iou_t",
    "anchor_t",
    "fl_gamma",
    "hsv_h",
    "hsv_s",
    "hsv_v",
    "degrees",
    "translate",
    "scale",
    "shear",
    "perspective",
    "flipud",
    "fliplr",
    "mosaic",
    "mixup",
    "copy_paste",
)

# Keys beyond YOLOv5's that a hyp file may hold, with the values training uses without them (YOLOv5's). They are
# not evolved, and a file without them loads as it is (no keys added), so YOLOv5's hyp files round-trip unchanged.
OPTIONAL_HYP_KEYS: dict[str, float] = {
    "ema_decay": 0.9999,  # final decay of the weights' moving average (ModelEMA): it averages ~1 / (1 - d) updates
    "ema_tau": 2000.0,  # updates over which that decay ramps up from 0
}


def hyp_value(hyp: dict[str, float], key: str) -> float:
    """``hyp[key]``, or the default of an optional key the hyp leaves out."""
    return hyp.get(key, OPTIONAL_HYP_KEYS[key])


# key: (mutation gain, lower bound, upper bound) for evolution. Gain 0 freezes a key: iou_t is not used by the
# anchor-ratio assignment, fl_gamma switches the loss type, and perspective/fliplr are rarely worth searching.
HYP_LIMITS: dict[str, tuple[float, float, float]] = {
    "lr0": (1.0, 1e-5, 1e-1),
    "lrf": (1.0, 0.01, 1.0),
    "momentum": (0.3, 0.6, 0.98),
    "weight_decay": (1.0, 0.0, 0.001),
    "warmup_epochs": (1.0, 0.0, 5.0),
    "warmup_momentum": (1.0, 0.0, 0.95),
    "warmup_bias_lr": (1.0, 0.0, 0.2),
    "box": (1.0, 0.02, 0.2),
    "cls": (1.0, 0.1, 4.0),
    "cls_pw": (1.0, 0.5, 2.0),
    "obj": (1.0, 0.2, 4.0),
    "obj_pw": (1.0, 0.5, 2.0),
    "iou_t": (0.0, 0.1, 0.7),
    "anchor_t": (1.0, 2.0, 8.0),
    "fl_gamma": (0.0, 0.0, 2.0),
    "hsv_h": (1.0, 0.0, 0.1),
    "hsv_s": (1.0, 0.0, 0.9),
    "hsv_v": (1.0, 0.0, 0.9),
    "degrees": (1.0, 0.0, 45.0),
    "translate": (1.0, 0.0, 0.9),
    "scale": (1.0, 0.0, 0.95),
    "shear": (1.0, 0.0, 10.0),
    "perspective": (0.0, 0.0, 0.001),
    "flipud": (1.0, 0.0, 1.0),
    "fliplr": (0.0, 0.0, 1.0),
    "mosaic": (1.0, 0.0, 1.0),
    "mixup": (1.0, 0.0, 1.0),
    "copy_paste": (1.0, 0.0, 1.0),
}

_PROBABILITIES = ("flipud", "fliplr", "mosaic", "mixup", "copy_paste")
_FRACTIONS = ("hsv_h", "hsv_s", "hsv_v", "translate", "momentum", "warmup_momentum")
_NON_NEGATIVE = ("weight_decay", "warmup_epochs", "warmup_bias_lr", "box", "cls", "obj", "fl_gamma", "degrees", "shear")


def load_hyp(path_or_dict: str | Path | dict) -> dict[str, float]:
    """Read a hyp YAML (or check a dict) and return ``{key: float}`` in ``HYP_KEYS`` order (then the optional keys
    it holds, ``OPTIONAL_HYP_KEYS``).

    Raises:
        HypError: one line naming the source and the unknown or missing keys, a value that is not a number,
            or a value outside its valid range (probabilities in [0, 1], lr0 > 0, ...).
    """
    if isinstance(path_or_dict, dict):
        source, raw = "hyp dict", path_or_dict
    else:
        source = str(path_or_dict)
        with open(path_or_dict, encoding="utf-8") as f:
            raw = yaml.safe_load(f) or {}
        if not isinstance(raw, dict):
            raise HypError(f"{source}: expected a mapping of hyperparameters, got {type(raw).__name__}")
    unknown = [k for k in raw if k not in HYP_KEYS and k not in OPTIONAL_HYP_KEYS]
    missing = [k for k in HYP_KEYS if k not in raw]
    if unknown or missing:
        parts = ([f"unknown keys {unknown}"] if unknown else []) + ([f"missing keys {missing}"] if missing else [])
        raise HypError(f"{source}: {'; '.join(parts)}")
    hyp = {}
    for k in (*HYP_KEYS, *(k for k in OPTIONAL_HYP_KEYS if k in raw)):
        try:
            hyp[k] = float(raw[k])  # also accepts '5e-4', which PyYAML reads as a string
        except (TypeError, ValueError):
            raise HypError(f"{source}: {k} must be a number, got {raw[k]!r}") from None
    _check_ranges(hyp, source)
    return hyp


def _check_ranges(hyp: dict[str, float], source: str) -> None:
    def fail(key: str, rule: str) -> None:
        raise HypError(f"{source}: {key}={hyp[key]} is out of range, expected {rule}")

    if not hyp["lr0"] > 0:
        fail("lr0", "lr0 > 0")
    if not 0 < hyp["lrf"] <= 1:
        fail("lrf", "0 < lrf <= 1")
    for k in _PROBABILITIES + _FRACTIONS:
        if not 0 <= hyp[k] <= 1:
            fail(k, f"0 <= {k} <= 1")
    for k in _NON_NEGATIVE:
        if hyp[k] < 0:
            fail(k, f"{k} >= 0")
    if not 0 <= hyp["scale"] < 1:  # scale 1 would allow zooming the image down to nothing
        fail("scale", "0 <= scale < 1")
    if not 0 <= hyp["perspective"] <= 0.001:
        fail("perspective", "0 <= perspective <= 0.001")
    if not 0 <= hyp_value(hyp, "ema_decay") < 1:
        fail("ema_decay", "0 <= ema_decay < 1")
    if not hyp_value(hyp, "ema_tau") > 0:
        fail("ema_tau", "ema_tau > 0")


def mutate_hyp(
    parent: dict[str, float], rng: np.random.Generator, mp: float = 0.8, sigma: float = 0.2
) -> dict[str, float]:
    """One child of ``parent`` for hyperparameter evolution.

    Each key in ``HYP_LIMITS`` with a non-zero gain is, with probability ``mp``, multiplied by
    ``1 + gain * N(0, 1) * u * sigma`` (``u ~ U(0, 1)`` drawn once per child, so some children move little and some
    a lot), the factor clipped to [0.3, 3]; results are clipped to the key's bounds and rounded to 5 digits. Keys at 0
    stay at 0 (the mutation is multiplicative). Redraws until at least one value differs from the parent.
    """
    keys = [k for k in parent if k in HYP_LIMITS and HYP_LIMITS[k][0] > 0]
    gains = np.array([HYP_LIMITS[k][0] for k in keys])
    for _ in range(1000):
        factors = np.ones(len(keys))
        while len(keys) and np.all(factors == 1):
            mask = rng.random(len(keys)) < mp
            factors = (gains * mask * rng.standard_normal(len(keys)) * rng.random() * sigma + 1).clip(0.3, 3.0)
        child = dict(parent)
        for k, f in zip(keys, factors):
            _, low, high = HYP_LIMITS[k]
            child[k] = round(float(np.clip(parent[k] * f, low, high)), 5)
        if child != parent:
            return child
    raise ValueError("mutate_hyp: no mutable key can change (all are 0 or pinned at their bounds)")
