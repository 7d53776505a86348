import subprocess
import sys

import pytest
import torch

from models.yolo import DetectionModel
from utils.devices import _glibc, autocast_dtype, cpu_has_native_bf16
from utils.files import REPO_ROOT
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


_HEAP_PROBE = """
import ctypes, sys
import torch
from utils.devices import _glibc, keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

libc = _glibc()
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "1":
    assert keep_freed_memory()
x = torch.empty(100 << 20, dtype=torch.uint8)  # an 8 x 16 x 320 x 320 fp32 activation is 52 MB
info = libc.mallinfo2()
del x
print(info.hblkhd >> 20, libc.mallinfo2().fordblks >> 20)  # MB mmapped while it lived, MB kept free after
"""


def test_keep_freed_memory_serves_large_tensors_from_the_heap_and_keeps_them():
    """Without it glibc mmaps a 100 MB tensor and unmaps it when freed (the next one pays the page faults again);
    with it the block comes from the heap and stays there for the next tensor."""
    if _glibc() is None:
        pytest.skip("not glibc: keep_freed_memory does nothing here")
    runs = {}
    for on in ("0", "1"):
        out = subprocess.run(
            [sys.executable, "-c", _HEAP_PROBE, on], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        )
        runs[on] = tuple(map(int, out.stdout.split()))
    assert runs["0"][0] >= 100 and runs["0"][1] < 100  # default: mmapped, nothing kept
    assert runs["1"][0] < 100 and runs["1"][1] >= 100  # heap block, kept free for reuse


_STARTUP_PROBE = """
import gc, sys
sys.modules["__main__"].__file__ = sys.argv[1]
import utils.startup
during = gc.isenabled()
utils.startup.resume()
print(during, gc.isenabled(), gc.get_freeze_count() > 0)
"""


@pytest.mark.parametrize("main_file, expect", [("val.py", "False True True"), ("notes/val.py", "True True False")])
def test_scripts_import_without_garbage_collection_and_resume_it(main_file, expect):
    """``python val.py``: no collection during the imports (0.5 s of the start), on again in ``run_cli``; a module
    of the same name elsewhere (a notebook, a test) is left alone."""
    path = str(REPO_ROOT / main_file)
    out = subprocess.run(
        [sys.executable, "-c", _STARTUP_PROBE, path], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == expect.split()
