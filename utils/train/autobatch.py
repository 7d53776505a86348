"""AutoBatch: the largest training batch that fits a fraction of the CUDA memory (``--batch-size -1``)."""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from utils.log import LOGGER
from utils.train.ema import detach_pruned_weights

PREFIX = "AutoBatch: "
GB = 1 << 30
# Training holds, besides what a forward/backward step allocates: the EMA copy of the weights (1x) and the optimizer
# state (momentum for SGD 1x, Adam's two moments 2x), all fp32 and of the model's size.
STATE_COPIES = 3


def autobatch(
    model: nn.Module, imgsz: int, device: torch.device, fraction: float = 0.6, default: int = 16, amp: bool = True
) -> int:
    """Batch size whose training step (forward + backward) uses about ``fraction`` of the free CUDA memory.

    Peak memory is measured for batches of 1, 2, 4, 8 and 16 images of ``imgsz`` x ``imgsz`` and fitted with a line;
    the batch size is read off the line after setting aside the EMA and optimizer state. Falls back to ``default``
    when fewer than two sizes could be measured.
    """
    if device.type != "cuda":
        LOGGER.info(
            f"{PREFIX}--batch-size -1 measures CUDA memory; on {device.type.upper()} using --batch-size {default}"
        )
        return default
    props = torch.cuda.get_device_properties(device)
    total = props.total_memory / GB
    free = torch.cuda.mem_get_info(device)[0] / GB  # what the driver can still hand out (other processes included)
    LOGGER.info(
        f"{PREFIX}Computing optimal batch size for --imgsz {imgsz} ({props.name} {total:.2f}G total, {free:.2f}G free)"
    )

    def peak_gb() -> float:
        used = torch.cuda.max_memory_allocated(device) / GB
        torch.cuda.reset_peak_memory_stats(device)
        return used

    torch.cuda.reset_peak_memory_stats(device)
    sizes, used = profile_batches(model, imgsz, device, amp, peak_gb)
    torch.cuda.empty_cache()
    state_gb = STATE_COPIES * sum(t.numel() * 4 for t in model.state_dict().values()) / GB
    b = fit_batch_size(sizes, used, free * fraction - state_gb)
    if b is None:
        LOGGER.warning(f"{PREFIX}WARNING ⚠️ could not measure memory use, using default --batch-size {default}")
        return default
    LOGGER.info(
        f"{PREFIX}Using batch-size {b} for {props.name} {total * fraction:.2f}G/{total:.2f}G ({fraction:.0%}) ✅"
    )
    return b


def profile_batches(
    model: nn.Module,
    imgsz: int,
    device: torch.device,
    amp: bool,
    peak_gb: Callable[[], float],
    sizes: tuple[int, ...] = (1, 2, 4, 8, 16),
) -> tuple[list[int], list[float]]:
    """One training step (forward + backward) of a copy of ``model`` per batch size, on ``device``.

    ``peak_gb()`` returns the peak memory since its last call (and starts a new period). Stops at the first size
    that fails: CUDA out-of-memory, or cuDNN failing to allocate its workspace (a plain RuntimeError). Returns
    (sizes measured, GB used at each). ``model`` itself is left untouched (BatchNorm statistics, gradients); a
    model pruned with ``torch.nn.utils.prune`` is copied too.
    """
    detach_pruned_weights(model)  # deepcopy refuses a pruned module's computed (non-leaf) weight
    probe = copy.deepcopy(model).to(device).train()
    done, used = [], []
    for b in sizes:
        try:
            x = torch.rand(b, 3, imgsz, imgsz, device=device)
            with torch.autocast(device.type, enabled=amp and device.type == "cuda"):
                out = probe(x)
            sum(o.float().sum() for o in out).backward()
            probe.zero_grad(set_to_none=True)
        except RuntimeError as e:
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
            LOGGER.warning(f"{PREFIX}batch {b} failed ({reason})")
            break
        done.append(b)
        used.append(peak_gb())
    del probe
    return done, used


def fit_batch_size(sizes: list[int], used_gb: list[float], budget_gb: float) -> int | None:
    """Batch size at which the line fitted to (size, GB) reaches ``budget_gb``, within 1..1024; None if unmeasured."""
    if len(sizes) < 2:
        return None
    slope, intercept = np.polyfit(sizes, used_gb, 1)
    if slope < 1e-6:  # memory that does not grow with the batch (under 1 KB per image): nothing to read off
        return None
    return max(1, min(int((budget_gb - intercept) / slope), 1024))
