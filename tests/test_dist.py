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

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert select_device("", verbose=False) == torch.device("cuda:0")
    assert select_device("", batch_size=5, verbose=False) == torch.device("cuda:0")  # one process: no split
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert select_device("", verbose=False) == torch.device("cuda:1")
    assert select_device("1,0", verbose=False) == torch.device("cuda:0")
    with pytest.raises(DeviceError, match="--device 0: 1 GPU\\(s\\) for LOCAL_RANK 1; give one per process"):
        select_device("0", verbose=False)
