import pytest
import torch

from models.yolo import DetectionModel
from utils.devices import autocast_dtype, cpu_has_native_bf16
from utils.train.hyps import load_hyp
from utils.train.loss import YoloLoss, scale_loss_gains


def test_autocast_dtype_per_device(monkeypatch):
    assert autocast_dtype(torch.device("cuda", 0)) == torch.float16
    assert autocast_dtype(torch.device("mps")) is None
    monkeypatch.setattr("utils.devices.cpu_has_native_bf16", lambda: True)
    assert autocast_dtype(torch.device("cpu")) == torch.bfloat16
    monkeypatch.setattr("utils.devices.cpu_has_native_bf16", lambda: False)
    assert autocast_dtype(torch.device("cpu")) is None


def test_cpu_has_native_bf16_reads_cpuinfo_flags():
    try:
        flags = open("/proc/cpuinfo").read().split()
    except OSError:
        pytest.skip("no /proc/cpuinfo")
    assert cpu_has_native_bf16() == bool({"amx_bf16", "avx512_bf16"} & set(flags))


def test_bf16_autocast_training_step_keeps_fp32_master_weights():
    """What train.py --amp does on a bf16 CPU: bf16 compute, fp32 weights and gradients, loss close to fp32's."""
    torch.manual_seed(0)
    model = DetectionModel("yolov5n.yaml", nc=5).train()
    hyp = scale_loss_gains(load_hyp("data/hyps/hyp.shapes.yaml"), 3, 5, 64)
    loss_fn = YoloLoss(hyp, model.detect.anchors, model.detect.stride, 5)
    x = torch.rand(2, 3, 64, 64)
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.3, 0.4], [1, 3, 0.3, 0.6, 0.2, 0.2]])
    loss32, _ = loss_fn(model(x), targets)
    with torch.autocast("cpu", torch.bfloat16):
        preds = model(x)
        loss16, _ = loss_fn(preds, targets)
    assert preds[0].dtype == torch.bfloat16 and loss16.dtype == torch.float32
    assert loss16.item() == pytest.approx(loss32.item(), rel=0.05)
    loss16.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    assert all(p.dtype == torch.float32 for p in model.parameters())
