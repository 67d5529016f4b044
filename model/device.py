"""Choosing a device and a numeric precision, and measuring what the device's arithmetic can do."""

from __future__ import annotations

import contextlib
import time

import torch

from model.config import DTYPES
from model.errors import TinyGPTError


def resolve_device(name: str = "auto") -> str:
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TinyGPTError(f"device '{name}' requested but CUDA is not available; use --device=cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise TinyGPTError("device 'mps' requested but MPS is not available; use --device=cpu")
    return name


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """'auto' means bfloat16 on GPUs that support it, float32 elsewhere (the safe choice on a CPU)."""
    if name == "auto":
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if name not in DTYPES:
        raise TinyGPTError(f"dtype must be one of auto, {', '.join(DTYPES)}; got '{name}'")
    return getattr(torch, name)


def autocast(device: str, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed precision for the forward pass: weights and optimizer stay float32, matmuls run in dtype."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=dtype)


def synchronize(device: str) -> None:
    """Wait until the device has finished the work queued so far (a no-op on a CPU)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elif device == "mps":
        torch.mps.synchronize()


@torch.no_grad()
def measure_peak_flops(device: str, dtype: torch.dtype, size: int = 1024, seconds: float = 0.25) -> float:
    """FLOP/s of the fastest of repeated (size x size) @ (size x size) matmuls within `seconds`: the
    ceiling that model FLOPs utilisation (MFU) is measured against when the user gives none."""
    # a generator of its own: drawing from the global one would shift dropout masks after a resume
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    a @ b  # warm-up: first-call allocation and kernel selection are not arithmetic
    synchronize(device)
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == float("inf"):
        t0 = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best


def keep_freed_memory() -> bool:
    """Let glibc's malloc reuse the memory that large tensors free instead of handing it back to
    the OS. By default every allocation above a threshold is a fresh mmap and every free an munmap,
    so each training step page-faults its activations into existence again, a large share of a small
    model's step on a CPU. Costs nothing but a process that keeps its peak memory until it exits.
    Returns False where malloc isn't glibc's."""
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux" or not platform.libc_ver()[0] == "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
        # no mmap for big blocks (they come from the heap and return to it), and don't trim the heap
        return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    except (OSError, AttributeError):
        return False
