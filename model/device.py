"""Choosing a device and a numeric precision, and measuring what the device's arithmetic can do."""

from __future__ import annotations

import contextlib
import functools
import json
import time
from pathlib import Path

import torch

from model.config import DTYPES, check_device
from model.errors import TinyGPTError


def resolve_device(name: str = "auto") -> str:
    """The device to run on: `name`, or for 'auto' CUDA, then MPS, then the CPU; a device that is
    misspelt or missing here is refused in one line."""
    check_device("device", name)
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


CPUINFO = Path("/proc/cpuinfo")
NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
"""CPU instructions that compute in bfloat16 directly (AVX-512 BF16, Intel AMX): with them, CPU autocast
in bfloat16 trains faster than float32 along the same loss curve (BENCHMARKS.md)."""


def cpu_flags(cpuinfo: Path | None = None) -> set[str]:
    """The instruction-set flags of this machine's CPU (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        text = (cpuinfo or CPUINFO).read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):  # x86 says flags, ARM says Features
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_has_native_bf16(cpuinfo: Path | None = None) -> bool:
    return any(flag in cpu_flags(cpuinfo) for flag in NATIVE_BF16_CPU_FLAGS)


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """'auto' is the fastest precision that trains like float32 on this device:
      - a GPU that computes in bfloat16 natively (Ampere and later): bfloat16;
      - an older GPU (V100, T4, where bfloat16 is only emulated, slowly): float16, with a GradScaler;
      - a CPU with native bfloat16 instructions (AVX-512 BF16 or AMX): bfloat16 autocast;
      - any other CPU, and MPS: float32."""
    if name == "auto":
        if device.startswith("cuda"):
            native = torch.cuda.is_bf16_supported(including_emulation=False)
            return torch.bfloat16 if native else torch.float16
        if device == "cpu" and cpu_has_native_bf16():
            return torch.bfloat16
        return torch.float32
    return dtype_named(name)


def dtype_named(name: str) -> torch.dtype:
    """The torch.dtype of a precision's name (one of DTYPES)."""
    if name not in DTYPES:
        raise TinyGPTError(f"dtype must be one of auto, {', '.join(DTYPES)}; got '{name}'")
    return getattr(torch, name)


def resolve_inference_dtype(name: str | torch.dtype, model: torch.nn.Module) -> torch.dtype:
    """The precision to sample, serve, score or draw a loaded model in. 'auto' keeps the precision
    the model was loaded in, which is its checkpoint's (as transformers' and vLLM's dtype="auto"):
    float32 for GPT-2 and for tinygpt's checkpoints, so that default outputs equal transformers';
    bfloat16 or float16 must be asked for. (Training's 'auto', resolve_dtype, is another choice: the
    fastest precision that trains like float32.)"""
    if isinstance(name, torch.dtype):
        return name
    if name == "auto":
        return next(model.parameters()).dtype
    return dtype_named(name)


def describe_precision(requested: str, device: str, dtype: torch.dtype) -> str:
    """One line saying which precision a run uses and, for 'auto', why."""
    name = str(dtype).split(".")[-1]
    if requested != "auto":
        return f"dtype {name}"
    if device.startswith("cuda"):
        why = "bf16 is native on this GPU" if dtype == torch.bfloat16 else "this GPU lacks fast bf16; float16 with a GradScaler"
    elif dtype == torch.bfloat16:
        why = "this CPU has native bf16 instructions (AVX-512 BF16 / AMX)"
    else:
        why = "no native bf16 on this device"
    return f"dtype {name} (auto: {why})"


def allow_tf32(device: str) -> None:
    """Let float32 matmuls and convolutions on an NVIDIA GPU use TF32 tensor cores (10-bit mantissa
    products, float32 accumulation): several times faster, and training is insensitive to it."""
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


GPU_PEAK_FLOPS_FILE = Path(__file__).with_name("gpu_peak_flops.json")
"""Datasheet peaks of common GPUs (its "about" field says what the numbers are)."""


@functools.cache
def gpu_peak_table() -> list[dict]:
    return json.loads(GPU_PEAK_FLOPS_FILE.read_text(encoding="utf-8"))["gpus"]


def gpu_peak_flops(device_name: str, dtype: torch.dtype) -> float | None:
    """The datasheet peak FLOP/s of the GPU called device_name (as torch.cuda.get_device_name() says
    it, e.g. "NVIDIA A100-SXM4-80GB") in dtype; None for a GPU or precision the table doesn't know."""
    import re

    key = str(dtype).split(".")[-1]
    for peaks in gpu_peak_table():
        if re.search(peaks["name"], device_name):
            return peaks.get(key)
    return None


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
