"""AutoBatch: the largest training batch that fits a fraction of the CUDA memory (``--batch-size -1``)."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from utils.log import LOGGER

PREFIX = "AutoBatch: "


def autobatch(
    model: nn.Module, imgsz: int, device: torch.device, fraction: float = 0.6, default: int = 16, amp: bool = True
) -> int:
    """Batch size whose training step (forward + backward) uses about ``fraction`` of the free CUDA memory.

    Peak memory is measured for batches of 1, 2, 4, 8 and 16 images of ``imgsz`` x ``imgsz`` and fitted with a line;
    the batch size is read off the line. Falls back to ``default`` when the measurement fails.
    """
    if device.type != "cuda":
        LOGGER.info(
            f"{PREFIX}--batch-size -1 measures CUDA memory; on {device.type.upper()} using --batch-size {default}"
        )
        return default
    gb = 1 << 30
    props = torch.cuda.get_device_properties(device)
    total = props.total_memory / gb
    free = torch.cuda.mem_get_info(device)[0] / gb  # what the driver can still hand out (other processes included)
    LOGGER.info(
        f"{PREFIX}Computing optimal batch size for --imgsz {imgsz} ({props.name} {total:.2f}G total, {free:.2f}G free)"
    )
    probe = copy.deepcopy(model).to(device).train()
    sizes, used = [], []
    for b in (1, 2, 4, 8, 16):
        try:
            torch.cuda.reset_peak_memory_stats(device)
            x = torch.rand(b, 3, imgsz, imgsz, device=device)
            with torch.autocast("cuda", enabled=amp):
                out = probe(x)
            sum(o.float().sum() for o in out).backward()
            probe.zero_grad(set_to_none=True)
            sizes.append(b)
            used.append(torch.cuda.max_memory_allocated(device) / gb)
        except torch.cuda.OutOfMemoryError:
            break
        finally:
            torch.cuda.empty_cache()
    del probe
    if len(sizes) < 2:
        LOGGER.warning(f"{PREFIX}WARNING ⚠️ could not measure memory use, using default --batch-size {default}")
        return default
    slope, intercept = np.polyfit(sizes, used, 1)
    b = int((free * fraction - intercept) / slope) if slope > 0 else default
    b = max(1, min(b, 1024))
    LOGGER.info(
        f"{PREFIX}Using batch-size {b} for {props.name} {total * fraction:.2f}G/{total:.2f}G ({fraction:.0%}) ✅"
    )
    return b
