import os
from pathlib import Path

import pytest
import torch
from torch import nn

from utils.train import dist


def test_rank_and_world_size_are_read_from_the_environment_on_each_call(monkeypatch):
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    assert (dist.rank(), dist.local_rank(), dist.world_size(), dist.is_main_process()) == (-1, -1, 1, True)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert (dist.rank(), dist.local_rank(), dist.world_size(), dist.is_main_process()) == (3, 1, 4, False)
    monkeypatch.setenv("RANK", "0")
    assert dist.is_main_process()


def test_single_process_helpers_are_no_ops(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not dist.is_distributed()
    assert dist.init_distributed(torch.device("cpu")) == torch.device("cpu")
    assert dist.broadcast_object({"a": 1}) == {"a": 1}
    t = torch.arange(3)
    assert dist.broadcast_tensor_(t) is t
    with dist.main_process_first():
        pass
    m = nn.Linear(2, 2)
    assert dist.wrap_ddp(m, torch.device("cpu"), sync_bn=True) is m
    assert dist.unwrap(nn.DataParallel(m)) is m and dist.unwrap(m) is m


def test_each_torchrun_rank_gets_its_own_gpu(monkeypatch):
    """--device '' or '0,1' under torchrun: rank k trains on GPU k (faked CUDA: no GPU on the CI machine)."""
    from utils.devices import DeviceError, select_device

    current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    for k in ("LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    assert select_device("", verbose=False) == torch.device("cuda:0")
    # one process trains on the first listed GPU: an odd batch is fine, and that GPU becomes the current device
    assert select_device("1,0", batch_size=5, verbose=False) == torch.device("cuda:1")
    assert current == [torch.device("cuda:0"), torch.device("cuda:1")]
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert select_device("", verbose=False) == torch.device("cuda:1")
    assert select_device("1,0", verbose=False) == torch.device("cuda:0")
    with pytest.raises(DeviceError, match="--device 0: 1 GPU\\(s\\) for LOCAL_RANK 1; give one per process"):
        select_device("0", verbose=False)
    with pytest.raises(DeviceError, match="--batch-size 5 is not a multiple of the 2 processes"):
        select_device("0,1", batch_size=5, verbose=False)


def test_nccl_group_is_bound_to_the_rank_gpu(monkeypatch):
    """--device 2,3: rank 0 must bind NCCL to cuda:2, not let the first barrier guess cuda:0 from its rank."""
    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", d)))
    monkeypatch.setattr(torch.distributed, "is_nccl_available", lambda: True)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda backend, **kw: calls.append((backend, kw)))
    assert dist.init_distributed(torch.device("cuda:2")) == torch.device("cuda:2")
    assert calls[0] == ("set_device", torch.device("cuda:2"))
    assert calls[1][0] == "nccl" and calls[1][1]["device_id"] == torch.device("cuda:2")
    dist.init_distributed(torch.device("cpu"))
    assert calls[2][0] == "gloo" and "device_id" not in calls[2][1]


def test_torchrun_with_one_process_starts_no_group_and_shards_nothing(monkeypatch):
    """torchrun --nproc_per_node 1 sets LOCAL_RANK=0 with WORLD_SIZE=1: no group, so no DistributedSampler."""
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert dist.init_distributed(torch.device("cpu")) == torch.device("cpu") and not dist.is_distributed()
    assert dist.sampler_rank() == -1 and dist.local_world_size() == 1


def _download_rank(rank: int, folder: str, source: str) -> None:
    """One of two gloo ranks building the model from an official name that is not on disk yet."""
    import io
    import time
    import urllib.request

    from utils.train.setup import build_model

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", YOLO_OFFLINE="0")
    os.chdir(folder)
    torch.distributed.init_process_group("gloo", init_method=f"file://{folder}/pg", rank=rank, world_size=2)
    payload = Path(source).read_bytes()

    def fake_urlopen(url, timeout=None):  # the stubbed downloader: slow enough for the ranks to overlap
        with open("downloads.log", "a") as fh:
            fh.write(f"{rank}\n")
        time.sleep(1.0)
        return io.BytesIO(payload)

    urllib.request.urlopen = fake_urlopen
    try:
        model, _ = build_model("yolov5n.pt", "", 80)
        assert len(model.state_dict()) > 300
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_ranks_download_weights_once(yolov5n_pt, tmp_path):
    """Every rank used to download the same file at once, renaming the same .part file over each other."""
    import torch.multiprocessing as mp

    mp.spawn(_download_rank, args=(str(tmp_path), str(yolov5n_pt)), nprocs=2, join=True)
    assert (tmp_path / "downloads.log").read_text().split() == ["0"]  # rank 0 downloaded; rank 1 found the file
    assert (tmp_path / "yolov5n.pt").read_bytes() == yolov5n_pt.read_bytes()
