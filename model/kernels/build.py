"""Building the C kernels of this folder into one shared library, and the switch that turns them off.

Every .c file here is compiled, with the system's C compiler, into one library on first use (a few
seconds) and cached under ~/.cache/tinygpt (or $TINYGPT_CACHE), keyed by the sources, the compiler,
its flags and the CPU. `library()` returns it loaded with ctypes, or None:
  - when the kernels are switched off: environment variable TINYGPT_KERNELS=0, or `set_enabled(False)`
    (the training config's `kernels = false`); then nothing is built or loaded;
  - without a C compiler;
  - when the build failed: one warning line names the log file holding the compiler's output, and a
    marker in the cache stops later processes from trying the same sources with the same compiler
    again (an edited source or another compiler tries anew).
Whatever the reason, every op keeps PyTorch's own implementation; nothing else changes.
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

KERNELS = Path(__file__).parent
SOURCES = sorted(KERNELS.glob("*.c"))  # all built into one library
HEADERS = sorted(KERNELS.glob("*.h"))  # part of the cache key: an edited header means a rebuild
# first the fastest build; each later one drops a flag some compilers lack (-march=native on some
# ARM clangs, OpenMP on Apple's clang: then every kernel runs on one core, still vectorised)
FLAG_SETS = (
    ("-O3", "-march=native", "-fopenmp"),
    ("-O3", "-fopenmp"),
    ("-O3", "-march=native", "-fopenmp-simd"),
    ("-O3", "-fopenmp-simd"),
)
COMPILE_TIMEOUT = 300
"""Seconds one compiler call may take before the build counts as failed."""
SWITCH = "TINYGPT_KERNELS"
"""Environment variable: 0 turns every C kernel off (training and sampling alike)."""

_switched_off = False


def enabled() -> bool:
    """Whether the C kernels may be used: not switched off by TINYGPT_KERNELS=0 or set_enabled(False)."""
    return not _switched_off and os.environ.get(SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


def set_enabled(on: bool) -> None:
    """Switch the C kernels off (or back on, unless TINYGPT_KERNELS=0) for this process."""
    global _switched_off
    _switched_off = not on


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


def find_compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def compiler_identity(compiler: str) -> str:
    """The compiler's path and version banner, so that an upgraded compiler builds (and retries) anew."""
    try:
        result = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30)
        return f"{compiler}\n{result.stdout}"
    except (OSError, subprocess.SubprocessError):
        return compiler


def _key(sources: bytes, *parts: str) -> str:
    return hashlib.sha256(sources + "\n".join(parts).encode()).hexdigest()[:16]


def _build(compiler: str) -> Path | None:
    """The library in the cache, compiled first if needed; None when it can't be built (a marker then
    records the failure, so later calls with the same sources and compiler don't try again)."""
    sources = b"".join(path.read_bytes() for path in SOURCES + HEADERS)
    identity = compiler_identity(compiler)
    machine = platform.machine() + cpu_identity()
    libs = [cache_dir() / f"kernels-{_key(sources, identity, *flags, machine)}.so" for flags in FLAG_SETS]
    for lib in libs:
        if lib.exists():
            return lib
    attempt = _key(sources, identity, *(" ".join(flags) for flags in FLAG_SETS), machine)
    failed, log = cache_dir() / f"kernels-{attempt}.failed", cache_dir() / f"kernels-{attempt}.log"
    if failed.exists():
        warn_failed(log)
        return None
    cache_dir().mkdir(parents=True, exist_ok=True)
    outputs = []
    for flags, lib in zip(FLAG_SETS, libs):
        with tempfile.TemporaryDirectory(dir=lib.parent) as tmp:  # build aside, then move in whole
            out = Path(tmp) / lib.name
            command = [compiler, *flags, "-shared", "-fPIC", *map(str, SOURCES), "-o", str(out)]
            try:
                result = subprocess.run(command, capture_output=True, text=True, timeout=COMPILE_TIMEOUT)
            except FileNotFoundError:  # no such compiler: nothing to record
                return None
            except (OSError, subprocess.TimeoutExpired) as e:
                outputs.append(f"$ {' '.join(command)}\n{e}\n")
                continue
            if result.returncode == 0 and out.exists():
                os.replace(out, lib)
                return lib
            outputs.append(f"$ {' '.join(command)}\n{result.stdout}{result.stderr}(exit status {result.returncode})\n")
    log.write_text("\n".join(outputs), encoding="utf-8")
    failed.write_text(str(log), encoding="utf-8")
    warn_failed(log)
    return None


def warn_failed(log: Path) -> None:
    print(f"warning: the C kernels failed to build (compiler output in {log}); using PyTorch's own ops",
          file=sys.stderr)


@functools.cache
def _load() -> ctypes.CDLL | None:
    compiler = find_compiler()
    if compiler is None:
        return None
    path = _build(compiler)
    if path is None:
        return None
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        print(f"warning: the C kernels failed to load ({e}); using PyTorch's own ops", file=sys.stderr)
        return None
    declare(lib)
    return lib


def library() -> ctypes.CDLL | None:
    """The compiled kernels (built on first use), or None when switched off or not buildable here."""
    return _load() if enabled() else None


def replaces_threaded_ops() -> bool:
    """Whether the kernels may stand in for PyTorch ops that run on several threads: only when built
    with OpenMP (each kernel then splits its work across PyTorch's threads). A build without OpenMP
    runs on one core, so it only replaces ops that are single-threaded in PyTorch too (dropout's mask)."""
    lib = library()
    return lib is not None and bool(lib.kernels_use_openmp())


def declare(lib: ctypes.CDLL) -> None:
    """The C signatures of the library's exported functions, as ctypes needs them."""
    P, I64, U64, U32, F32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_float
    signatures = {
        ("rowdot_f32", "rowdot_bf16"): [P] * 4 + [I64] * 3,
        ("dropout_f32", "dropout_bf16", "dropout_f32_to_bf16"): [P] * 2 + [I64, U64, U32, F32],
        ("dropout_add_f32", "dropout_add_bf16"): [P] * 3 + [I64, U64, U32, F32],
        ("gelu_tanh_f32", "gelu_tanh_bf16"): [P] * 3 + [I64],
        ("layernorm_forward_bf16",): [P] * 6 + [I64] * 2 + [F32],
        ("layernorm_backward_bf16",): [P] * 7 + [I64] * 2 + [ctypes.c_int],
        ("softmax_forward_f32", "softmax_forward_bf16"): [P] * 3 + [I64] * 4 + [F32, U64, U32, F32],
        ("softmax_backward_f32", "softmax_backward_bf16"): [P] * 3 + [I64] * 4 + [F32, U64, U32, F32, ctypes.c_int],
    }
    for names, argtypes in signatures.items():
        for name in names:
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = argtypes, None
    lib.kernels_use_openmp.argtypes, lib.kernels_use_openmp.restype = [], ctypes.c_int
    lib.decode_struct_layout.argtypes, lib.decode_struct_layout.restype = [P], I64
