"""utils/train/loggers.py: a 1-epoch train.py run leaves TensorBoard events with results.csv's scalars and images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import train
from tests.test_train import TINY, shapes_yaml
from utils.plots import read_csv_columns
from utils.train.setup import RESULT_KEYS


@pytest.fixture()
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_one_epoch_run_writes_tensorboard_scalars_and_images(tmp_path, one_thread, capsys):
    data = shapes_yaml(tmp_path)
    save_dir = train.run(data=str(data), weights="", cfg="yolov5n.yaml", epochs=1, project=tmp_path / "runs",
                         name="tb", **{**TINY, "noplots": False})  # fmt: skip
    assert f"tensorboard --logdir {save_dir.parent}" in capsys.readouterr().out
    events = list(save_dir.glob("events.out.tfevents*"))
    assert len(events) == 1
    acc = EventAccumulator(str(events[0]), size_guidance={"images": 0, "scalars": 0}).Reload()
    tags = acc.Tags()
    assert set(tags["scalars"]) == set(RESULT_KEYS)  # losses, P, R, mAP50, mAP50-95, val losses, lr per group
    csv = read_csv_columns(save_dir / "results.csv")
    for key in RESULT_KEYS:
        (event,) = acc.Scalars(key)  # one epoch: one value, at step 0
        assert event.step == 0
        np.testing.assert_allclose(event.value, csv[key][0], rtol=1e-4, atol=1e-6)
    assert {"train_batch0", "train_batch1", "results"} <= set(tags["images"])
    mosaic = acc.Images("train_batch0")[0]
    assert mosaic.step == 0 and mosaic.width > 64 and mosaic.height > 64


def test_noplots_logs_scalars_but_no_images(tmp_path, one_thread):
    data = shapes_yaml(tmp_path)
    save_dir = train.run(data=str(data), weights="", cfg="yolov5n.yaml", epochs=1, project=tmp_path / "runs",
                         name="noplots", **TINY)  # fmt: skip
    (event_file,) = save_dir.glob("events.out.tfevents*")
    tags = EventAccumulator(str(event_file)).Reload().Tags()
    assert "metrics/mAP_0.5" in tags["scalars"] and tags["images"] == []
