"""A fast path for decoding one sequence at a time on a CPU: each linear layer as row dot products.

Decoding one token multiplies a single row x (in,) by every weight matrix W (out, in). That reads
every weight once and does two flops per weight, so its speed is the speed at which the weights
stream from memory. PyTorch hands F.linear on a one-row input to the BLAS as a matrix product, which
on a laptop-class CPU reaches well under half of the memory bandwidth. model/kernels/rowdot.c
computes the same product as one loop over the rows of W, split across the cores, each row a
vectorised dot product with x: the access pattern that keeps every core's memory stream busy.
bf16 weights are widened to float32 in registers, so they halve the bytes read and still
accumulate in float32.

The C files in model/kernels (these kernels and the decoding step of model/fastdecode.py; for
training on a CPU, the dropout and residual dropout-add of model/dropout.py, the attention softmax
of model/softmax.py, and the GELU and LayerNorm of model/layers.py) are compiled into one library
with the system's C compiler on first use (a few seconds) and cached under ~/.cache/tinygpt (or
$TINYGPT_CACHE). Without a C compiler, `kernels()` returns None and each of those keeps PyTorch's
own ops; nothing else changes.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch import Tensor
from torch.utils._python_dispatch import _get_current_dispatch_mode

KERNELS = Path(__file__).parent
SOURCES = sorted(KERNELS.glob("*.c"))  # all built into one library
HEADERS = sorted(KERNELS.glob("*.h"))  # part of the cache key: an edited header means a rebuild
# first the fastest build; each later one drops a flag some compilers lack (-march=native on some
# ARM clangs, OpenMP on Apple's clang: then the kernel runs on one core, still vectorised)
FLAG_SETS = (
    ["-O3", "-march=native", "-fopenmp"],
    ["-O3", "-fopenmp"],
    ["-O3", "-march=native", "-fopenmp-simd"],
    ["-O3", "-fopenmp-simd"],
)


def cache_dir() -> Path:
    return Path(os.environ.get("TINYGPT_CACHE") or Path.home() / ".cache" / "tinygpt")


def cpu_identity() -> str:
    """The CPU's model and instruction-set flags: a -march=native build is only for CPUs that match
    (a home folder shared by machines of a cluster must not hand an AVX-512 build to an older CPU)."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f if line.startswith(("model name", "flags", "Features"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor()


def _build(compiler: str) -> Path | None:
    """Compile SOURCES into a shared library in the cache (once per source, compiler and CPU)."""
    source = b"".join(path.read_bytes() for path in SOURCES + HEADERS)
    for flags in FLAG_SETS:
        identity = " ".join([compiler, *flags, platform.machine(), cpu_identity()])
        key = hashlib.sha256(source + identity.encode()).hexdigest()[:16]
        lib = cache_dir() / f"rowdot-{key}.so"
        if lib.exists():
            return lib
        lib.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=lib.parent) as tmp:  # build aside, then move in whole
            out = Path(tmp) / lib.name
            try:
                result = subprocess.run([compiler, *flags, "-shared", "-fPIC", *map(str, SOURCES), "-o", str(out)],
                                        capture_output=True)
            except OSError:  # no such compiler
                return None
            if result.returncode == 0 and out.exists():
                os.replace(out, lib)
                return lib
    return None


@functools.cache
def kernels() -> ctypes.CDLL | None:
    """The compiled row-dot kernels (built on first use), or None when they can't be built here."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        return None
    try:
        lib_path = _build(compiler)
        if lib_path is None:
            return None
        lib = ctypes.CDLL(str(lib_path))
    except OSError as e:
        print(f"warning: C kernels unavailable ({e}); decoding and training use PyTorch's own ops", file=sys.stderr)
        return None
    for fn in (lib.rowdot_f32, lib.rowdot_bf16):
        fn.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 2
        fn.restype = None
    dropout_args = [ctypes.c_int64, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_float]
    for fn in (lib.dropout_f32, lib.dropout_bf16, lib.dropout_f32_to_bf16):
        fn.argtypes = [ctypes.c_void_p] * 2 + dropout_args
        fn.restype = None
    for fn in (lib.dropout_add_f32, lib.dropout_add_bf16):
        fn.argtypes = [ctypes.c_void_p] * 3 + dropout_args
        fn.restype = None
    for fn in (lib.gelu_tanh_f32, lib.gelu_tanh_bf16):
        fn.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64]
        fn.restype = None
    lib.layernorm_forward_bf16.argtypes = [ctypes.c_void_p] * 6 + [ctypes.c_int64] * 2 + [ctypes.c_float]
    lib.layernorm_backward_bf16.argtypes = [ctypes.c_void_p] * 7 + [ctypes.c_int64] * 2 + [ctypes.c_int]
    lib.layernorm_forward_bf16.restype = lib.layernorm_backward_bf16.restype = None
    softmax_args = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 4 + [ctypes.c_float, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_float]
    for fn in (lib.softmax_forward_f32, lib.softmax_forward_bf16):
        fn.argtypes = softmax_args
        fn.restype = None
    for fn in (lib.softmax_backward_f32, lib.softmax_backward_bf16):
        fn.argtypes = softmax_args + [ctypes.c_int]
        fn.restype = None
    return lib


def eager_on_cpu(x: Tensor) -> bool:
    """Whether x is a real CPU tensor in eager mode: not traced by torch.compile, not seen through a
    dispatch mode (FLOP counting, fake tensors), which the C kernels (raw pointers) would bypass."""
    return x.device.type == "cpu" and not torch.compiler.is_compiling() and _get_current_dispatch_mode() is None


def kernels_usable(x: Tensor) -> bool:
    """Whether the C kernels can take x (float32 or bfloat16, eager, on a CPU, and built here)."""
    return x.dtype in (torch.float32, torch.bfloat16) and eager_on_cpu(x) and kernels() is not None
