"""Device selection and timing."""

from __future__ import annotations

import functools
import multiprocessing
import os
import sys
import time
from pathlib import Path

import torch

from utils.errors import UserError
from utils.log import LOGGER
from utils.train import dist


class DeviceError(UserError):
    """An impossible ``--device`` request; the message is one line."""


def select_device(device: str | int | torch.device = "", batch_size: int = 0, verbose: bool = True) -> torch.device:
    """Turn ``--device`` ('' | 'cpu' | '0' | '0,1' | 'cuda:0' | 'mps') into a torch.device.

    '' picks CUDA device 0 when present (device LOCAL_RANK under torchrun), else the CPU; a list such as '0,1' gives
    rank k its k-th entry. Asking for CUDA on a machine without it raises
    ``DeviceError`` with one line; under torchrun ``batch_size`` must be a multiple of the process count. A CUDA
    device becomes the current device (``torch.cuda.set_device``).
    """
    if isinstance(device, torch.device):
        return device
    spec = str(device).strip().lower().replace("cuda:", "").replace("none", "").replace(" ", "")
    if spec == "cpu":
        dev = torch.device("cpu")
    elif spec == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise DeviceError("--device mps: Apple MPS is not available on this machine")
        dev = torch.device("mps")
    elif spec == "" and not torch.cuda.is_available():
        dev = torch.device("cpu")
    else:
        local_rank = int(os.environ.get("LOCAL_RANK", -1))  # torchrun: one GPU per local rank
        ids = spec.split(",") if spec else [str(i) for i in range(torch.cuda.device_count())]
        if not all(i.isdigit() for i in ids):
            raise DeviceError(f"--device {device}: expected '', 'cpu', 'mps' or CUDA indices such as '0' or '0,1'")
        if not torch.cuda.is_available():
            raise DeviceError(
                f"--device {device}: CUDA was requested but is not available on this machine (use --device cpu)"
            )
        n = torch.cuda.device_count()
        bad = [i for i in ids if int(i) >= n]
        if bad:
            raise DeviceError(f"--device {device}: CUDA device {bad[0]} does not exist ({n} device(s) visible)")
        world = dist.world_size()  # one process trains on one GPU whatever --device lists
        if spec and len(ids) > 1 and world > 1 and batch_size > 0 and batch_size % world:
            raise DeviceError(f"--batch-size {batch_size} is not a multiple of the {world} processes (GPUs)")
        if local_rank >= len(ids):
            raise DeviceError(
                f"--device {device or repr('')}: {len(ids)} GPU(s) for LOCAL_RANK {local_rank}; give one per process"
            )
        dev = torch.device(f"cuda:{ids[max(local_rank, 0)]}")
        torch.cuda.set_device(dev)  # else pinned-memory threads and cuDNN handles open a context on GPU 0 too
    if verbose:
        desc = "CPU" if dev.type == "cpu" else (torch.cuda.get_device_name(dev) if dev.type == "cuda" else "MPS")
        LOGGER.info(
            f"torch-{torch.__version__} {dev.type.upper()}{'' if dev.index is None else ':' + str(dev.index)} ({desc})"
        )
    return dev


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AMX or AVX512-BF16 in /proc/cpuinfo's flags).

    Only there does bf16 pay: oneDNN runs yolov5n's convolutions 2-3x faster than fp32; elsewhere bf16 is emulated
    and slower than fp32. False where the flags cannot be read (non-Linux).
    """
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="ignore").split()
    except OSError:
        return False
    return bool({"amx_bf16", "avx512_bf16"} & set(flags)) and torch.backends.mkldnn.is_available()


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The mixed-precision compute type for training on ``device``: fp16 on CUDA (with a GradScaler), bf16 on a CPU
    with native bf16 (fp32's exponent range, so no loss scaling), else None (fp32: emulated bf16 is slower)."""
    if device.type == "cuda":
        return torch.float16
    return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else None


def sync_time(device: torch.device | None = None) -> float:
    """``time.perf_counter`` after waiting for queued CUDA work, so timings measure the work itself."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


class Profile:
    """Accumulating timer: ``with dt: ...`` adds the elapsed seconds to ``dt.t``."""

    def __init__(self, device: torch.device | None = None):
        self.t = 0.0
        self.device = device

    def __enter__(self) -> Profile:
        self.start = sync_time(self.device)
        return self

    def __exit__(self, *exc) -> None:
        self.dt = sync_time(self.device) - self.start
        self.t += self.dt


def speed_line(speed_ms: tuple[float, ...], shape: tuple[int, ...] | None) -> str:
    """YOLOv5's ``Speed:`` line: milliseconds per image for pre-process, inference and NMS at input ``shape``."""
    return f"Speed: %.1fms pre-process, %.1fms inference, %.1fms NMS per image at shape {shape}" % tuple(speed_ms)


def print_speed(speed_ms: tuple[float, ...], shape: tuple[int, ...] | None) -> None:
    """Log the ``Speed:`` line (``speed_line``)."""
    LOGGER.info(speed_line(speed_ms, shape))


def fork_helpers() -> tuple[multiprocessing.context.BaseContext | None, int]:
    """``(fork context, cores)`` for spreading single-threaded work (plots, dataset generation) over helper
    processes: the context only on Linux with at least 2 cores, else ``(None, cores)`` and the work runs in this
    process. Fork, so helpers start without re-importing anything (macOS and Windows default to spawn, and
    fork is unsafe with macOS's system libraries)."""
    cores = os.cpu_count() or 1
    if sys.platform != "linux" or cores < 2:
        return None, cores
    return multiprocessing.get_context("fork"), cores


def image_input(im, device: torch.device, half: bool = False) -> torch.Tensor:
    """uint8 image(s) ``[3, H, W]`` or ``[B, 3, H, W]`` (tensor or ndarray, RGB, letterboxed) -> ``[B, 3, H, W]``
    in 0-1 on ``device``, fp16 when ``half`` else fp32; the float copy is the only one (scaled in place)."""
    x = torch.as_tensor(im).to(device, non_blocking=True)
    x = x.half() if half else x.float()
    x /= 255
    return x[None] if x.ndim == 3 else x


@functools.cache
def _glibc():
    """The C library when it is glibc (``mallopt``/``malloc_trim``), else None (macOS, Windows, musl)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018 (both exist only in glibc)
    except (OSError, AttributeError):
        return None
    return libc


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


@functools.cache
def keep_freed_memory(limit: int = 1 << 30) -> bool:
    """Let glibc hand freed tensor memory to the next tensor instead of back to the OS; True where it applies.

    By default blocks over 32 MB (a batch's activations: 8 x 16 x 320 x 320 fp32 is 52 MB) are ``mmap``ed one by
    one and unmapped when freed, and the heap is trimmed above 128 kB of free space, so every layer of every
    forward pays the kernel to zero fresh pages: on this project's 2-core CPU a steady-state yolov5n forward at
    8 x 640 took 68 ms per image fp32 and 33-39 ms bf16 that way, against 29-34 and 19-24 ms with the memory kept.
    Here blocks up to ``limit`` come from the heap and up to ``limit`` of free heap is kept (``evaluate`` returns
    it at the end of a ``val.py`` pass: ``release_free_memory``). Called once by the scripts (``run_cli``) and the
    hub entry points, before the model is loaded.
    """
    libc = _glibc()
    if libc is None:
        return False
    ok = libc.mallopt(_M_MMAP_THRESHOLD, limit) and libc.mallopt(_M_TRIM_THRESHOLD, limit)
    return bool(ok and libc.mallopt(_M_TOP_PAD, 64 << 20))  # grow the heap 64 MB at a time, not page by page


def release_free_memory() -> None:
    """Hand the C heap's free pages back to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    CPU tensors are plain ``malloc`` blocks that glibc keeps for reuse once freed (``keep_freed_memory``);
    ``evaluate`` returns them when a ``val.py`` pass ends. Not after every batch: the next batch then pays to fault
    the pages in again (``val.py --half`` at 640: 30.7 vs 21.1 ms per image); nor after a training epoch's
    validation (``EvalOptions.release_memory``), whose next epoch would fault its activations in again (the default
    job: 3.9 M page faults with it, 1.9 M without, for 1.44 vs 1.60-1.64 GB peak RSS).
    """
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
