"""Training loss of the anchor-based YOLOv5 head: CIoU box loss, objectness BCE and class BCE.

Coordinate space: everything inside the loss is in *grid units* of the level being scored (pixels / stride).
Targets arrive as ``xywhn`` normalised to the network input (0-1) and are scaled to each level's grid.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
from torchvision.ops import complete_box_iou_loss

from utils.boxes import xywh2xyxy

# Objectness weight per level, small strides first: small objects are many and easy to miss, so P3 counts more.
_BALANCE_P5 = [4.0, 1.0, 0.4]
_BALANCE_MANY = [4.0, 1.0, 0.25, 0.06, 0.02]

# Cell offsets (in units of the bias g): own cell, then left, up, right, down neighbour. Subtracting the offset
# from the target centre moves it into that neighbour, whose prediction can still reach it since xy spans
# (-0.5, 1.5) of a cell.
_NEIGHBOUR_OFFSETS = [[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]]

MIN_HEIGHT = 1e-4  # box heights below this are raised to it in bbox_ciou (a box of no size made its CIoU NaN)


def smooth_bce_targets(eps: float = 0.0) -> tuple[float, float]:
    """Positive and negative class targets under label smoothing ``eps``: ``(1 - eps/2, eps/2)``."""
    return 1.0 - 0.5 * eps, 0.5 * eps


def bbox_ciou(box1: torch.Tensor, box2: torch.Tensor) -> torch.Tensor:
    """Complete IoU of paired boxes: ``box1``, ``box2`` Tensor[N, 4] ``xywh`` (any units); returns Tensor[N].

    Delegates to ``torchvision.ops.complete_box_iou_loss`` (which returns ``1 - CIoU``). Its formula is the one
    YOLOv5 trains with, eps placements included: IoU = inter / (union + 1e-7), centre distance over the enclosing
    diagonal squared (+1e-7), aspect term ``v = 4/pi^2 (atan(w2/h2) - atan(w1/h1))^2`` weighted by
    ``alpha = v / (1 - IoU + v + 1e-7)`` computed without gradient. tests/test_loss.py checks it against a
    hand-written formula.

    Heights are raised to at least ``MIN_HEIGHT`` first (YOLOv5 clamps them for the same reason): torchvision
    divides by them unguarded, so a box of no size (a width/height logit driven far negative, e.g. by a high
    learning rate, makes ``(2 sigmoid)^2`` underflow to 0) gave ``atan(0 / 0)``: a NaN loss, and NaN gradients
    in every weight from that step on. The floor is in the caller's units; the loss passes grid cells with centres
    within (-0.5, 1.5), where float32 keeps 1e-4 through the conversion to corners (a floor of 1e-7 would round
    away there) and ``w / h^2`` of the aspect term's gradient stays finite.
    """
    box1, box2 = (torch.cat((b[:, :3], b[:, 3:4].clamp(min=MIN_HEIGHT)), 1) for b in (box1, box2))
    return 1.0 - complete_box_iou_loss(xywh2xyxy(box1), xywh2xyxy(box2), reduction="none", eps=1e-7)


class FocalLoss(nn.Module):
    """Focal loss wrapper around an elementwise BCE-with-logits loss (Lin et al. 2017).

    Multiplies each element by ``alpha_t * (1 - p_t) ** gamma``, which down-weights the easy negatives that
    dominate objectness maps. The wrapped loss is switched to ``reduction='none'`` and its original reduction is
    applied afterwards.
    """

    def __init__(self, loss_fcn: nn.BCEWithLogitsLoss, gamma: float = 1.5, alpha: float = 0.25):
        super().__init__()
        self.loss_fcn = loss_fcn
        self.gamma = gamma
        self.alpha = alpha
        self.reduction = loss_fcn.reduction
        self.loss_fcn.reduction = "none"

    def forward(self, pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
        loss = self.loss_fcn(pred, true)
        prob = pred.sigmoid()
        p_t = true * prob + (1 - true) * (1 - prob)
        alpha_t = true * self.alpha + (1 - true) * (1 - self.alpha)
        loss = loss * alpha_t * (1.0 - p_t) ** self.gamma
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss


def scale_loss_gains(hyp: dict, nl: int, nc: int, imgsz: int) -> dict:
    """Copy of ``hyp`` with the loss gains rescaled from the 3-level / 80-class / 640-px setting they were tuned for.

    box *= 3/nl; cls *= nc/80 * 3/nl; obj *= (imgsz/640)^2 * 3/nl (objectness cells grow with image area).
    """
    out = dict(hyp)
    layers = 3 / nl
    out["box"] = hyp["box"] * layers
    out["cls"] = hyp["cls"] * nc / 80 * layers
    out["obj"] = hyp["obj"] * (imgsz / 640) ** 2 * layers
    return out


def _float32_context(device: torch.device):
    """Disable autocast so the loss is computed in float32 even inside a mixed-precision forward."""
    if device.type in ("cuda", "cpu"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


class YoloLoss:
    """YOLOv5 training loss for an anchor-based head.

    Args:
        hyp: hyper-parameters; uses ``box``, ``obj``, ``cls`` (gains), ``cls_pw``, ``obj_pw`` (BCE positive weights),
            ``anchor_t`` (anchor matching ratio threshold), ``fl_gamma`` (focal loss if > 0) and optional
            ``label_smoothing``.
        anchors: Tensor[nl, na, 2] anchor (w, h) in stride units (pixels / stride), as the head stores them.
        strides: Tensor[nl] stride of each level in pixels.
        nc: number of classes.
        autobalance: adapt the per-level objectness weights during training (normalised to the stride-16 level).

    Call with ``preds`` (list of nl raw-logit tensors Tensor[bs, na, ny, nx, nc + 5]) and ``targets``
    Tensor[n, 6] rows (image_index, cls, x, y, w, h) with xywh normalised to the network input. Returns
    ``(loss, items)``: scalar ``(lbox + lobj + lcls) * bs`` and detached Tensor[3] ``(lbox, lobj, lcls)``.
    """

    gr = 1.0  # objectness target = gr * IoU + (1 - gr)
    bias = 0.5  # a neighbour cell is used when the centre lies within this fraction of a cell from its border

    def __init__(
        self, hyp: dict, anchors: torch.Tensor, strides: torch.Tensor, nc: int, autobalance: bool = False
    ) -> None:
        self.hyp = hyp
        self.nc = nc
        self.anchors = anchors.detach().float().clone()
        self.strides = torch.as_tensor(strides).detach().float().clone()
        self.nl, self.na = self.anchors.shape[:2]
        self.anchor_t = float(hyp["anchor_t"])
        self.cp, self.cn = smooth_bce_targets(hyp.get("label_smoothing", 0.0))
        self.balance = list(_BALANCE_P5 if self.nl == 3 else _BALANCE_MANY[: self.nl])
        self.autobalance = autobalance
        stride_list = self.strides.tolist()
        self.ssi = stride_list.index(16) if autobalance and 16 in stride_list else 0
        self.bce_cls: nn.Module = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([float(hyp["cls_pw"])]))
        self.bce_obj: nn.Module = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([float(hyp["obj_pw"])]))
        gamma = float(hyp.get("fl_gamma", 0.0))
        if gamma > 0:
            self.bce_cls = FocalLoss(self.bce_cls, gamma)
            self.bce_obj = FocalLoss(self.bce_obj, gamma)

    def _to(self, device: torch.device) -> None:
        self.anchors = self.anchors.to(device)
        self.bce_cls.to(device)
        self.bce_obj.to(device)

    def __call__(self, preds: list[torch.Tensor], targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        device = preds[0].device
        if self.anchors.device != device:
            self._to(device)
        with _float32_context(device):
            preds = [p.float() for p in preds]
            targets = targets.to(device=device, dtype=torch.float32)
            return self._compute(preds, targets)

    def _compute(self, preds: list[torch.Tensor], targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        device = preds[0].device
        lcls = torch.zeros(1, device=device)
        lbox = torch.zeros(1, device=device)
        lobj = torch.zeros(1, device=device)
        tcls, tbox, indices, anch = self.build_targets(preds, targets)

        for i, pi in enumerate(preds):
            b, a, gj, gi = indices[i]
            tobj = torch.zeros(pi.shape[:4], dtype=pi.dtype, device=device)
            n = b.shape[0]
            if n:
                pxy, pwh, _, pcls = pi[b, a, gj, gi].split((2, 2, 1, self.nc), 1)
                pxy = pxy.sigmoid() * 2 - 0.5
                pwh = (pwh.sigmoid() * 2) ** 2 * anch[i]
                iou = bbox_ciou(torch.cat((pxy, pwh), 1), tbox[i])
                lbox = lbox + (1.0 - iou).mean()

                # Objectness learns to predict the box quality; where several targets share a cell one write wins.
                tobj[b, a, gj, gi] = (1.0 - self.gr) + self.gr * iou.detach().clamp(0).to(tobj.dtype)

                if self.nc > 1:  # with a single class the objectness already says everything
                    t = torch.full_like(pcls, self.cn)
                    t[torch.arange(n, device=device), tcls[i]] = self.cp
                    lcls = lcls + self.bce_cls(pcls, t)

            obji = self.bce_obj(pi[..., 4], tobj)
            lobj = lobj + obji * self.balance[i]
            if self.autobalance:
                self.balance[i] = self.balance[i] * 0.9999 + 0.0001 / obji.detach().item()

        if self.autobalance:
            self.balance = [x / self.balance[self.ssi] for x in self.balance]
        lbox = lbox * self.hyp["box"]
        lobj = lobj * self.hyp["obj"]
        lcls = lcls * self.hyp["cls"]
        bs = preds[0].shape[0]
        return (lbox + lobj + lcls).sum() * bs, torch.cat((lbox, lobj, lcls)).detach()

    def build_targets(
        self, preds: list[torch.Tensor], targets: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[tuple[torch.Tensor, ...]], list[torch.Tensor]]:
        """Assign targets to (image, anchor, cell) positions on every level.

        Args:
            preds: list of nl Tensor[bs, na, ny, nx, no]; only their shapes are read.
            targets: Tensor[n, 6] (image_index, cls, x, y, w, h), xywh normalised to the network input.

        Returns:
            Per level lists: ``tcls`` Tensor[m] class ids; ``tbox`` Tensor[m, 4] target (x, y, w, h) in grid units
            with xy relative to the assigned cell's corner (so in (-0.5, 1.5)); ``indices`` tuples
            (image, anchor, gj, gi) of Tensor[m]; ``anch`` Tensor[m, 2] matched anchor w, h in grid units.
            A target matches an anchor when both its w and h are within ``anchor_t`` times the anchor's (either
            way); each match is scored in its own cell and the 2 neighbours (one in x, one in y) nearest its centre.
        """
        device = targets.device
        na, nt = self.na, targets.shape[0]
        tcls, tbox, indices, anch = [], [], [], []
        gain = torch.ones(7, device=device)
        # One copy of every target per anchor, with the anchor index as a 7th column: (na, nt, 7).
        ai = torch.arange(na, device=device, dtype=torch.float32).view(na, 1).repeat(1, nt)
        targets = torch.cat((targets.repeat(na, 1, 1), ai[..., None]), 2)
        off = torch.tensor(_NEIGHBOUR_OFFSETS, device=device, dtype=torch.float32) * self.bias

        for i in range(self.nl):
            anchors, shape = self.anchors[i], preds[i].shape
            gain[2:6] = torch.tensor(shape, device=device, dtype=torch.float32)[[3, 2, 3, 2]]  # nx, ny, nx, ny
            t = targets * gain  # xywh in grid units
            if nt:
                ratio = t[..., 4:6] / anchors[:, None]
                matched = torch.max(ratio, 1 / ratio).max(2)[0] < self.anchor_t
                t = t[matched]
                gxy = t[:, 2:4]
                gxi = gain[[2, 3]] - gxy  # distance from the far border
                # Near the low side of its cell (fraction < 0.5) also use the cell before; near the high side the
                # cell after. `> 1` keeps the neighbour inside the grid.
                left, up = ((gxy % 1 < self.bias) & (gxy > 1)).T
                right, down = ((gxi % 1 < self.bias) & (gxi > 1)).T
                use = torch.stack((torch.ones_like(left), left, up, right, down))
                t = t.repeat((5, 1, 1))[use]
                offsets = (torch.zeros_like(gxy)[None] + off[:, None])[use]
            else:
                t = targets[0]
                offsets = torch.zeros_like(t[:, 2:4])

            bc, gxy, gwh, a = t.split((2, 2, 2, 1), 1)
            a = a.long().view(-1)
            b, c = bc.long().T
            gij = (gxy - offsets).long()
            # A centre exactly on the far border would index one past the grid; the clamped cell is also the
            # one the target's xy is measured from.
            gij[:, 0].clamp_(0, shape[3] - 1)
            gij[:, 1].clamp_(0, shape[2] - 1)
            gi, gj = gij.T
            indices.append((b, a, gj, gi))
            tbox.append(torch.cat((gxy - gij, gwh), 1))
            anch.append(anchors[a])
            tcls.append(c)
        return tcls, tbox, indices, anch


__all__ = ["FocalLoss", "YoloLoss", "bbox_ciou", "scale_loss_gains", "smooth_bce_targets"]
