"""The GPU check: CUDA, fp16 and DDP end to end on coco128 and yolov5n.pt, printed as one table.

    python -m pytest tests/gpu -q -rs

On a machine without CUDA it skips with the reason. On a CUDA machine it runs each step below (about 5 minutes on
one recent GPU), prints the table (step, figures, status) and fails if any step failed:

- ``val.py`` fp32 and ``--half`` at 640: mAP50 and mAP50-95 of --half within 0.003 of fp32;
- ``detect.py --half`` on coco128's image folder: the same number of boxes as fp32, within 2%;
- an Ensemble (2x yolov5n) with ``--augment --half``: within 0.003 of the single model with ``--augment`` in fp32;
- ``train.py`` 2 epochs from yolov5n.pt with AMP on ``--device 0`` (one process), 320 px;
- ``torchrun --nproc_per_node 2 train.py --device 0,1 --rect`` (NCCL) when two GPUs exist, else a skipped row;
- AutoBatch (``--batch-size -1``) on a 30%-pruned model;
- ``export.py --half --device 0`` to ONNX and TorchScript, ``val.py`` on both (within 0.003 of fp32), and the
  TorchScript file loaded and run on the CPU (and on cuda:1 when present): it must hold no device constant;
- ``benchmarks.py --half --device 0``: every row validated or skipped with a reason, none failed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device here (torch.cuda.is_available() is False): GPU check skipped"
)
MAP_TOL = 0.003


class Table:
    """Rows of (step, figures, status); a step that raises is a failed row with its one-line reason."""

    def __init__(self):
        self.rows: list[tuple[str, str, str]] = []

    def step(self, name: str, fn: Callable[[], tuple[str, bool]]) -> None:
        t0 = time.time()
        try:
            figures, ok = fn()
            status = "✅" if ok else "❌"
        except Exception as e:  # the table must show every step, so one failure does not stop the others
            lines = str(e).strip().splitlines()
            figures, status = "", f"❌ {type(e).__name__}: {lines[0][:150] if lines else ''}"
        self.rows.append((name, f"{figures} ({time.time() - t0:.0f} s)", status))

    def skip(self, name: str, reason: str) -> None:
        self.rows.append((name, "", f"skipped: {reason}"))

    def text(self) -> str:
        w = [max(len(r[i]) for r in [("step", "figures", "status"), *self.rows]) for i in range(3)]
        lines = [f"{a:<{w[0]}}  {b:<{w[1]}}  {c}" for a, b, c in [("step", "figures", "status"), *self.rows]]
        return "\n".join(lines)

    @property
    def failed(self) -> list[str]:
        return [r[0] for r in self.rows if r[2].startswith("❌")]


def _val(weights, tmp: Path, name: str, **kw):
    import val

    kw = {"data": "coco128", "batch_size": 32, "workers": 4, "noplots": True, **kw}
    return val.run(weights=[str(w) for w in weights], project=tmp, name=name, exist_ok=True, **kw)[0]


def _maps(r) -> str:
    return f"mAP50 {r.map50:.3f} mAP50-95 {r.map:.3f}"


def _close(a, b) -> bool:
    return abs(a.map - b.map) <= MAP_TOL and abs(a.map50 - b.map50) <= MAP_TOL


def _boxes(run_dir: Path) -> int:
    return sum(len(f.read_text().splitlines()) for f in (run_dir / "labels").glob("*.txt"))


def _train_map50(save_dir: Path) -> list[float]:
    from utils.plots import read_csv_columns

    return [round(float(x), 3) for x in read_csv_columns(save_dir / "results.csv")["metrics/mAP_0.5"]]


def run_checks(
    weights: Path, coco128: Path, tmp: Path, device: str = "0", half: bool = True, imgsz: int = 640
) -> Table:
    """The table's steps on ``device`` (``half=False, imgsz=64, device='cpu'`` exercises the plumbing on a CPU)."""
    import detect
    import export
    import train

    t = Table()
    fp32 = {}
    dev = torch.device(f"cuda:{device}" if device.isdigit() else device)
    vkw = {"device": device, "imgsz": imgsz}

    def val_half():
        fp32["val"] = _val([weights], tmp, "fp32", **vkw)
        r = _val([weights], tmp, "half", half=half, **vkw)
        return f"fp32 {_maps(fp32['val'])}; --half {_maps(r)}", _close(r, fp32["val"])

    def detect_half():
        src = str(coco128 / "images" / "train2017")
        kw = {"source": src, "save_txt": True, "nosave": True, "project": tmp, **vkw}
        n32 = _boxes(detect.run(weights=str(weights), name="det32", **kw))
        n16 = _boxes(detect.run(weights=str(weights), name="det16", half=half, **kw))
        return f"{n16} boxes with --half, {n32} in fp32", n32 > 0 and abs(n16 - n32) <= 0.02 * n32

    def ensemble_tta_half():
        single = _val([weights], tmp, "tta32", augment=True, **vkw)
        ens = _val([weights, weights], tmp, "ens_tta16", augment=True, half=half, **vkw)
        return f"2x ensemble + TTA --half {_maps(ens)}; single + TTA fp32 {_maps(single)}", _close(ens, single)

    def train_amp():
        save_dir = train.run(data="coco128", weights=str(weights), imgsz=[imgsz // 2], epochs=2, batch_size=16, device=device,
                             workers=4, noplots=True, project=tmp, name="amp", exist_ok=True)  # fmt: skip
        m = _train_map50(save_dir)
        return f"mAP50 per epoch {m}", len(m) == 2 and m[-1] > 0.3

    def torchrun_two():
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "train.py",
               "--data", "coco128", "--weights", str(weights), "--img", "320", "--epochs", "1", "--batch-size", "32",
               "--device", "0,1", "--rect", "--workers", "4", "--noplots", "--project", str(tmp), "--name", "ddp",
               "--exist-ok"]  # fmt: skip
        p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ})
        if p.returncode:
            raise RuntimeError((p.stderr or p.stdout).strip().splitlines()[-1])
        m = _train_map50(tmp / "ddp")
        return f"NCCL, --rect: mAP50 {m}", len(m) == 1

    def autobatch_pruned():
        from utils.inference.prune import global_l1_prune
        from utils.train.autobatch import autobatch
        from utils.train.setup import build_model

        model, _ = build_model(str(weights), "", 80)
        global_l1_prune(model, 0.3)
        b = autobatch(model.to(dev), imgsz, dev)
        return f"batch {b} for a 30%-pruned yolov5n at {imgsz}", b > 16

    def export_half():
        from utils.inference.backends import load_backend

        done = export.run(weights=str(weights), include=["onnx", "torchscript"], imgsz=[imgsz], device=device, half=half,
                          save_dir=tmp / "export")  # fmt: skip
        figures, ok = [], True
        for flag in ("onnx", "torchscript"):
            r = _val([done[flag]], tmp, f"val_{flag}", half=half, **vkw)  # dynamic shapes: the same batches
            figures.append(f"{flag} {_maps(r)}")
            ok &= _close(r, fp32["val"]) if "val" in fp32 else False
        ts = torch.jit.load(str(done["torchscript"]), map_location="cpu")
        ok &= not [n for n in ts.inlined_graph.nodes() if n.kind() == "prim::Constant" and n.outputsSize() == 1
                   and n.output().type().kind() == "DeviceObjType"]  # fmt: skip
        x = torch.rand(1, 3, 320, 320)
        for other in ["cpu"] + (["cuda:1"] if torch.cuda.device_count() > 1 else []):
            y = load_backend(done["torchscript"], torch.device(other))(x.to(other))
            ok &= bool(torch.isfinite(y).all())
            figures.append(f"{device} TorchScript runs on {other}")
        return "; ".join(figures), ok

    def benchmarks_half():
        import benchmarks

        rows = benchmarks.run(weights=[str(weights)], data="coco128", imgsz=imgsz, device=device, half=half,
                              project=tmp / "bench", workers=4)  # fmt: skip
        bad = [r["Format"] for r in rows if r["Status"].startswith("❌")]
        ran = [f"{r['Format']} {r['mAP50-95']}" for r in rows if r["mAP50-95"] is not None]
        return f"mAP50-95: {', '.join(ran)}" + (f"; failed: {bad}" if bad else ""), not bad

    t.step(f"val.py --half ({imgsz})", val_half)
    t.step("detect.py --half (folder)", detect_half)
    t.step("Ensemble + --augment --half", ensemble_tta_half)
    t.step(f"train.py AMP --device {device}, 2 epochs", train_amp)
    if torch.cuda.device_count() > 1:
        t.step("torchrun --nproc_per_node 2", torchrun_two)
    else:
        t.skip("torchrun --nproc_per_node 2", f"{torch.cuda.device_count()} GPU here, needs 2")
    t.step("AutoBatch, --prune 0.3", autobatch_pruned)
    t.step("export.py --half: ONNX, TorchScript", export_half)
    t.step("benchmarks.py --half", benchmarks_half)
    return t


def test_gpu_check(yolov5n_pt, coco128, tmp_path, capsys):
    table = run_checks(yolov5n_pt, coco128, tmp_path)
    with capsys.disabled():
        print(f"\n\nGPU check on {torch.cuda.get_device_name(0)} (torch {torch.__version__}):\n{table.text()}\n")
    assert not table.failed, f"failed: {table.failed}"
