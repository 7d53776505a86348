from pathlib import Path

import numpy as np
import pytest
import yaml

from utils.options import run_cli
from utils.train.hyps import HYP_KEYS, HYP_LIMITS, HypError, hyp_value, load_hyp, mutate_hyp

HYPS = Path(__file__).resolve().parents[1] / "data" / "hyps"

SCRATCH_LOW = {
    "lr0": 0.01,
    "lrf": 0.01,
    "momentum": 0.937,
    "weight_decay": 0.0005,
    "warmup_epochs": 3.0,
    "warmup_momentum": 0.8,
    "warmup_bias_lr": 0.1,
    "box": 0.05,
    "cls": 0.5,
    "cls_pw": 1.0,
    "obj": 1.0,
    "obj_pw": 1.0,
    "iou_t": 0.2,
    "anchor_t": 4.0,
    "fl_gamma": 0.0,
    "hsv_h": 0.015,
    "hsv_s": 0.7,
    "hsv_v": 0.4,
    "degrees": 0.0,
    "translate": 0.1,
    "scale": 0.5,
    "shear": 0.0,
    "perspective": 0.0,
    "flipud": 0.0,
    "fliplr": 0.5,
    "mosaic": 1.0,
    "mixup": 0.0,
    "copy_paste": 0.0,
}
MED_CHANGES = {"lrf": 0.1, "cls": 0.3, "obj": 0.7, "scale": 0.9, "mixup": 0.1}
NO_AUG_CHANGES = {k: 0.0 for k in ("hsv_h", "hsv_s", "hsv_v", "translate", "scale", "fliplr", "mosaic")}


def test_keys_are_the_28_yolov5_keys_in_order():
    assert len(HYP_KEYS) == 28 and tuple(SCRATCH_LOW) == HYP_KEYS
    assert set(HYP_LIMITS) == set(HYP_KEYS)


@pytest.mark.parametrize("name", ["scratch-low", "scratch-med", "scratch-high", "no-augmentation", "shapes"])
def test_shipped_files_load_in_key_order_as_floats(name):
    hyp = load_hyp(HYPS / f"hyp.{name}.yaml")
    assert tuple(hyp) == ((*HYP_KEYS, "ema_decay", "ema_tau") if name == "shapes" else HYP_KEYS)
    assert all(type(v) is float for v in hyp.values())
    assert (HYPS / f"hyp.{name}.yaml").read_text().startswith("# ")  # each file explains itself


def test_shipped_values():
    assert load_hyp(HYPS / "hyp.scratch-low.yaml") == SCRATCH_LOW
    assert load_hyp(HYPS / "hyp.scratch-med.yaml") == {**SCRATCH_LOW, **MED_CHANGES}
    assert load_hyp(HYPS / "hyp.scratch-high.yaml") == {**SCRATCH_LOW, **MED_CHANGES, "copy_paste": 0.1}
    assert load_hyp(HYPS / "hyp.no-augmentation.yaml") == {**SCRATCH_LOW, **NO_AUG_CHANGES}


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**SCRATCH_LOW, "anchors": 3}))
    with pytest.raises(HypError, match=r"bad\.yaml: unknown keys \['anchors'\]") as e:
        load_hyp(path)
    assert "\n" not in str(e.value)


def test_hyp_errors_reach_the_user_as_one_line(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**SCRATCH_LOW, "lr_0": 0.01}))
    with pytest.raises(SystemExit) as e:
        run_cli("train.py", lambda: load_hyp(path))  # what train.py's entry point does with it
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines() == [f"train.py: error: {path}: unknown keys ['lr_0']"]


def test_missing_key_is_named(tmp_path):
    hyp = dict(SCRATCH_LOW)
    del hyp["mosaic"], hyp["lr0"]
    path = tmp_path / "short.yaml"
    path.write_text(yaml.safe_dump(hyp))
    with pytest.raises(ValueError, match=r"short\.yaml: missing keys \['lr0', 'mosaic'\]"):
        load_hyp(path)


def test_dict_input_and_number_strings():
    hyp = load_hyp({**SCRATCH_LOW, "weight_decay": "5e-4"})  # PyYAML reads 5e-4 as a string
    assert hyp["weight_decay"] == 0.0005
    with pytest.raises(ValueError, match="hyp dict: momentum must be a number"):
        load_hyp({**SCRATCH_LOW, "momentum": "fast"})


def test_optional_ema_keys_load_after_the_yolov5_keys_and_default_to_yolov5s():
    hyp = load_hyp({**SCRATCH_LOW, "ema_tau": 100, "ema_decay": "0.99"})
    assert tuple(hyp) == (*HYP_KEYS, "ema_decay", "ema_tau") and hyp["ema_decay"] == 0.99 and hyp["ema_tau"] == 100
    plain = load_hyp(SCRATCH_LOW)
    assert tuple(plain) == HYP_KEYS  # nothing added: a YOLOv5 hyp round-trips as it is
    assert (hyp_value(plain, "ema_decay"), hyp_value(plain, "ema_tau")) == (0.9999, 2000.0)
    assert hyp_value(hyp, "ema_decay") == 0.99


@pytest.mark.parametrize(
    ("key", "value"),
    [("lr0", 0.0), ("fliplr", 1.5), ("mosaic", -0.1), ("hsv_s", 2.0), ("ema_decay", 1.0), ("ema_tau", 0.0)],
)
def test_out_of_range(key, value):
    with pytest.raises(ValueError, match=f"{key}={value} is out of range"):
        load_hyp({**SCRATCH_LOW, key: value})


def test_mutate_stays_in_bounds_and_changes_something():
    rng = np.random.default_rng(0)
    parent = load_hyp(HYPS / "hyp.scratch-high.yaml")
    for _ in range(200):
        child = mutate_hyp(parent, rng)
        assert child != parent and tuple(child) == HYP_KEYS
        for k, (gain, low, high) in HYP_LIMITS.items():
            if gain == 0:
                assert child[k] == parent[k]
            else:
                assert low <= child[k] <= high
            assert child[k] == round(child[k], 5)
        assert child["mixup"] > 0 or parent["mixup"] == 0
    zero = load_hyp(HYPS / "hyp.scratch-low.yaml")
    assert all(mutate_hyp(zero, rng)["mixup"] == 0.0 for _ in range(20))  # multiplicative: 0 stays 0


def test_mutate_is_deterministic_for_a_seed():
    parent = load_hyp(HYPS / "hyp.scratch-low.yaml")
    a = mutate_hyp(parent, np.random.default_rng(7))
    b = mutate_hyp(parent, np.random.default_rng(7))
    c = mutate_hyp(parent, np.random.default_rng(8))
    assert a == b and a != c


def test_mutate_clips_at_bounds():
    parent = load_hyp(HYPS / "hyp.scratch-low.yaml")
    parent["momentum"] = 0.98  # at the upper bound: can only stay or go down
    rng = np.random.default_rng(1)
    values = [mutate_hyp(parent, rng)["momentum"] for _ in range(100)]
    assert max(values) == 0.98 and min(values) < 0.98  # upward moves are clipped onto the bound
