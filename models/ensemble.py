"""Several detectors run as one: ``val.py --weights a.pt b.pt`` and ``detect.py --weights a.pt b.pt``.

Merge modes (``--ensemble-mode``):

* ``nms`` (default, YOLOv5's behaviour): every member's candidates are concatenated and one NMS runs over the
  union. Members may differ in architecture, stride and level count. A duplicated member changes nothing.
* ``mean`` / ``max``: element-wise mean / max of the members' decoded outputs (boxes and scores of the same
  anchor at the same cell). Needs members with identical output layouts (same levels, anchors and input);
  smoother scores than ``nms`` but meaningless across different architectures, so it is refused there.
* ``wbf``: weighted boxes fusion (the ``ensemble-boxes`` package) of each member's own NMS output: boxes the
  members agree on are averaged weighted by confidence, so localisation improves; costs one NMS per member.
"""

from __future__ import annotations

import torch
from torch import nn

from utils.boxes import xyxy2xywh
from utils.devices import sync_time
from utils.errors import UserError
from utils.nms import non_max_suppression
from utils.options import ENSEMBLE_MODES


class EnsembleError(UserError):
    """Members that cannot be combined; one line."""


class Ensemble(nn.ModuleList):
    """Members are callables returning decoded Tensor[B, N, 5 + nc] (or ``(decoded, raw)``) for one input."""

    def __init__(self, members: list[nn.Module], mode: str = "nms", paths: list[str] | None = None):
        super().__init__(members)
        if mode not in ENSEMBLE_MODES:
            raise EnsembleError(f"--ensemble-mode {mode}: expected one of {', '.join(ENSEMBLE_MODES)}")
        self.mode = mode
        self.paths = paths or [f"member{i}" for i in range(len(members))]
        first = list(members[0].names.values())
        for m, p in zip(members[1:], self.paths[1:]):
            other = list(m.names.values())
            if other != first:
                raise EnsembleError(
                    f"ensemble members disagree on class names: {self.paths[0]} has {first} but {p} has {other}"
                )
        self.names = members[0].names
        self.stride = torch.tensor([float(max(float(max(m.stride)) for m in members))])
        self.member_times = [0.0] * len(members)
        self.conf_thres, self.iou_thres = 0.001, 0.6  # used by 'wbf' for the per-member NMS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for i, m in enumerate(self):
            t0 = sync_time(x.device)
            y = m(x)
            outs.append(y[0] if isinstance(y, (tuple, list)) else y)
            self.member_times[i] += sync_time(x.device) - t0
        if self.mode == "nms":
            return torch.cat(outs, 1)
        if self.mode in ("mean", "max"):
            # checked eagerly only: traced sizes are tensors (hashed by identity, every layout looked different);
            # export's dry run has checked the layouts before tracing
            shapes = {tuple(o.shape) for o in outs} if not torch.jit.is_tracing() else set()
            if len(shapes) > 1:
                raise EnsembleError(
                    f"--ensemble-mode {self.mode} needs members with identical output layouts, got "
                    f"{sorted(shapes)}; use --ensemble-mode nms or wbf"
                )
            stacked = torch.stack(outs)
            return stacked.mean(0) if self.mode == "mean" else stacked.max(0).values
        return self._wbf(outs, x.shape[2:])

    def _wbf(self, outs: list[torch.Tensor], hw: tuple[int, int]) -> torch.Tensor:
        """Fuse each member's NMS output per image; returned as decoded candidates (obj = conf, one-hot class)."""
        from ensemble_boxes import weighted_boxes_fusion

        h, w = hw
        nc = outs[0].shape[2] - 5
        scale = torch.tensor((w, h, w, h), device=outs[0].device, dtype=torch.float32)
        per_member = [non_max_suppression(o, self.conf_thres, self.iou_thres, multi_label=True) for o in outs]
        fused = []
        for b in range(outs[0].shape[0]):
            dets = [pm[b].float() for pm in per_member]
            boxes = [(d[:, :4] / scale).clamp(0, 1).cpu().numpy() for d in dets]
            scores = [d[:, 4].cpu().numpy() for d in dets]
            labels = [d[:, 5].cpu().numpy() for d in dets]
            if sum(len(s) for s in scores):
                fb, fs, fl = weighted_boxes_fusion(
                    boxes, scores, labels, iou_thr=self.iou_thres, skip_box_thr=self.conf_thres
                )
            else:
                fb, fs, fl = [], [], []
            fb = torch.as_tensor(fb, dtype=torch.float32, device=scale.device).view(-1, 4) * scale
            cand = torch.zeros((len(fb), 5 + nc), device=scale.device)
            cand[:, :4] = xyxy2xywh(fb)
            cand[:, 4] = torch.as_tensor(fs, dtype=torch.float32, device=scale.device)
            if len(fb):
                cand[torch.arange(len(fb)), 5 + torch.as_tensor(fl, device=scale.device).long()] = 1.0
            fused.append(cand)
        n = max(len(c) for c in fused)
        out = torch.zeros((len(fused), n, 5 + nc), device=scale.device)
        for b, c in enumerate(fused):
            out[b, : len(c)] = c  # padding rows have objectness 0 and never pass NMS
        return out


def members_summary(members: list[nn.Module], paths: list[str], imgsz: int) -> str:
    """``Ensemble created with [...]`` plus the total parameters and GFLOPs (compare with one larger model)."""
    from models.yolo import model_flops

    n_p = sum(sum(p.numel() for p in m.parameters()) for m in members)
    gflops = sum(model_flops(m, imgsz) for m in members)
    return f"Ensemble created with {list(map(str, paths))}: {n_p} parameters, {gflops:.1f} GFLOPs in total"
