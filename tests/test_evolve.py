import numpy as np
import pytest

from utils.options import REPO_ROOT
from utils.train.evolve import METRIC_KEYS, append_generation, read_evolve_csv, select_parent, write_best_yaml
from utils.train.hyps import HYP_KEYS, load_hyp

HYP = load_hyp(REPO_ROOT / "data" / "hyps" / "hyp.scratch-low.yaml")


def test_csv_rows_best_yaml_and_parent_selection(tmp_path):
    csv = tmp_path / "evolve.csv"
    a, b = dict(HYP), {**HYP, "lr0": 0.02}
    append_generation(csv, (0.5, 0.4, 0.30, 0.10, 0.1, 0.2, 0.3), a)  # fitness 0.1 * 0.30 + 0.9 * 0.10 = 0.12
    append_generation(csv, (0.6, 0.5, 0.50, 0.20, 0.1, 0.2, 0.3), b)  # fitness 0.23
    keys, rows = read_evolve_csv(csv)
    assert keys == [*METRIC_KEYS, *HYP_KEYS] and rows.shape == (2, 7 + len(HYP_KEYS))
    best = write_best_yaml(csv, tmp_path / "hyp_evolve.yaml")
    assert best["lr0"] == 0.02
    text = (tmp_path / "hyp_evolve.yaml").read_text()
    assert "# Best generation: 1" in text and "# Last generation: 1" in text
    assert load_hyp(tmp_path / "hyp_evolve.yaml") == pytest.approx(b)
    # weights fitness - min + 1e-6: the worse row is drawn with probability 1e-6 / (0.11 + 2e-6)
    picks = [select_parent(csv, np.random.default_rng(s))["lr0"] for s in range(20)]
    assert picks == [0.02] * 20
