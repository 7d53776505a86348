"""The prune hook: global L1 unstructured sparsity through ``torch.nn.utils.prune``.

One magnitude threshold is taken over every ranked Conv2d weight at once (``global_unstructured`` with
``L1Unstructured``), so layers end up with different sparsities. Run it on the fused model: folding BatchNorm
into the conv scales each output channel by gamma / sigma, which puts all weights on the scale they act at;
ranking raw conv weights (BN apart) removes whole layers' worth of weights whose BN would have amplified them.

Unstructured zeros save storage (see ``sparse_state_dict``), not dense compute time.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune

from utils.errors import UsageError
from utils.log import LOGGER


def prunable_convs(model: nn.Module, exclude: list[str] | None = None) -> list[tuple[str, nn.Conv2d]]:
    """Every Conv2d of ``model`` whose qualified name does not start with a prefix in ``exclude``."""
    exclude = [e.rstrip(".") for e in exclude or []]
    return [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and not any(n == e or n.startswith(e + ".") for e in exclude)
    ]


def global_l1_prune(
    model: nn.Module, amount: float, exclude: list[str] | None = None, verbose: bool = False
) -> dict[str, float]:
    """Zero the ``amount`` fraction of smallest-magnitude conv weights across the whole model.

    The masks stay as forward pre-hooks (``weight = weight_orig * weight_mask``) until ``make_permanent``.
    Prints ``Pruned: 30.0% of conv weights zero (per layer 1.2%-74.5%)``; returns per-layer sparsity.
    """
    if not 0 < amount < 1:
        raise UsageError(f"--prune {amount}: expected a fraction between 0 and 1")
    convs = prunable_convs(model, exclude)
    if not convs:
        raise UsageError(f"--prune-exclude {exclude}: every conv layer is excluded, nothing to prune")
    LOGGER.info(f"Pruning model... {amount:g} global sparsity")
    nhwc = [
        m.weight.is_contiguous(memory_format=torch.channels_last) and not m.weight.is_contiguous() for _, m in convs
    ]
    for _, m in convs:  # global_unstructured flattens with view(), which needs contiguous (NCHW) weights
        m.weight.data = m.weight.data.contiguous()
    prune.global_unstructured([(m, "weight") for _, m in convs], pruning_method=prune.L1Unstructured, amount=amount)
    for (_, m), was_nhwc in zip(convs, nhwc):
        if was_nhwc:  # keep the fast layout for weight_orig and weight_mask
            m.to(memory_format=torch.channels_last)
    per_layer = {n: float((m.weight == 0).float().mean()) for n, m in convs}
    zeros = sum(int((m.weight == 0).sum()) for _, m in convs)
    total = sum(m.weight.numel() for _, m in convs)
    lo, hi = min(per_layer.values()), max(per_layer.values())
    LOGGER.info(f"Pruned: {100 * zeros / total:.1f}% of conv weights zero (per layer {100 * lo:.1f}%-{100 * hi:.1f}%)")
    if verbose:
        LOGGER.info(f"{'layer':>28s} {'weights':>10s} {'sparsity':>9s}")
        for n, m in convs:
            LOGGER.info(f"{n:>28s} {m.weight.numel():>10d} {100 * per_layer[n]:>8.1f}%")
    return per_layer


def conv_sparsity(model: nn.Module) -> float:
    """Fraction of zero weights over all Conv2d weights of ``model``."""
    convs = prunable_convs(model)
    return sum(int((m.weight == 0).sum()) for _, m in convs) / max(sum(m.weight.numel() for _, m in convs), 1)


def make_permanent(model: nn.Module) -> nn.Module:
    """Remove the prune hooks, baking the masks into plain ``weight`` parameters."""
    for _, m in prunable_convs(model):
        if prune.is_pruned(m) and hasattr(m, "weight_mask"):
            prune.remove(m, "weight")
    return model


def sparse_state_dict(
    state: dict[str, torch.Tensor], min_sparsity: float = 0.05, dtype: torch.dtype = torch.float16
) -> tuple[dict, dict]:
    """Split a state dict into dense tensors and sparse-encoded ones.

    A floating tensor with at least ``min_sparsity`` zeros is stored as a packed bitmask (1 bit per element)
    plus its non-zero values in ``dtype``: at 30% sparsity and fp16 that is 1.5 bytes per weight instead of 2.
    Returns ``(dense, sparse)`` where ``sparse[name] = {"shape", "mask" (uint8), "values"}``.
    """
    dense, sparse = {}, {}
    for k, v in state.items():
        if v.is_floating_point() and v.numel() >= 64 and float((v == 0).float().mean()) >= min_sparsity:
            nz = (v != 0).flatten().cpu().numpy()
            sparse[k] = {
                "shape": list(v.shape),
                "mask": torch.from_numpy(np.packbits(nz)),
                "values": v.flatten()[torch.from_numpy(nz)].to(dtype).cpu(),
            }
        else:
            dense[k] = v.to(dtype) if v.is_floating_point() else v
    return dense, sparse


def dense_from_sparse(sparse: dict) -> dict[str, torch.Tensor]:
    """Inverse of ``sparse_state_dict`` for the sparse part (fp32 tensors)."""
    out = {}
    for k, e in sparse.items():
        n = int(np.prod(e["shape"]))
        mask = torch.from_numpy(np.unpackbits(e["mask"].numpy())[:n].astype(bool))
        t = torch.zeros(n, dtype=torch.float32)
        t[mask] = e["values"].float()
        out[k] = t.view(e["shape"])
    return out
