"""How the CPU threads of PyTorch (and of the C kernels) wait for work: set once, as a program starts.

PyTorch runs its CPU ops on an OpenMP thread pool (GNU libgomp). By default an idle pool thread keeps
spinning on its core for a while, waiting for the next op, instead of sleeping. On an otherwise idle
machine that saves a wake-up between ops; on a machine whose cores are also busy with other programs
(a browser, a build, another training run) the spinning threads take the cores from the very thread
they wait for, and from everything else, and a run becomes several times slower. With
OMP_WAIT_POLICY=PASSIVE an idle thread sleeps at once and is woken by the next op
(`python -m model.bench load` measures both, on an idle machine and beside busy processes).

The C kernels (model/kernels/) are built with -fopenmp against the same soname, libgomp.so.1, so
the dynamic loader hands them the copy torch has already loaded: one OpenMP runtime and one pool,
waiting the same way.

libgomp reads its environment once, when it is loaded (on `import torch`), so `configure_threads`
must run before that: the programs' entry points call it first thing (model/cli.py `guarded`), never an
import of the library. A variable the user set (any OMP_* or GOMP_* wait setting) is left alone, and
TINYGPT_THREAD_DEFAULTS=0 keeps OpenMP's own defaults.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

WAIT_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}
"""What this project sets, unless the user chose otherwise: idle OpenMP threads sleep instead of spin."""
USER_WAIT_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
"""The variables that already say how OpenMP threads wait; if the user set any, nothing is added."""
SWITCH = "TINYGPT_THREAD_DEFAULTS"
"""Environment variable: 0 keeps OpenMP's own defaults (threads spin while they wait)."""


def thread_defaults_enabled(environ: MutableMapping[str, str] = os.environ) -> bool:
    return environ.get(SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


def configure_threads(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Set WAIT_DEFAULTS in `environ` unless the user set a wait policy, switched the defaults off, or
    torch (hence libgomp) is already loaded in this process, when setting them would change nothing but
    the environment of later subprocesses. Returns what it set."""
    if environ is os.environ and "torch" in sys.modules:
        return {}
    if not thread_defaults_enabled(environ) or any(name in environ for name in USER_WAIT_SETTINGS):
        return {}
    for name, value in WAIT_DEFAULTS.items():
        environ[name] = value
    return dict(WAIT_DEFAULTS)


def wait_policy(environ: MutableMapping[str, str] = os.environ) -> str:
    """How idle OpenMP threads wait in this process, in a few words."""
    policy = environ.get("OMP_WAIT_POLICY", "").strip().upper()
    if policy == "PASSIVE":
        return "idle threads sleep (OMP_WAIT_POLICY=PASSIVE)"
    if policy == "ACTIVE":
        return "idle threads spin (OMP_WAIT_POLICY=ACTIVE)"
    if "GOMP_SPINCOUNT" in environ:
        return f"idle threads spin {environ['GOMP_SPINCOUNT']} times, then sleep (GOMP_SPINCOUNT)"
    return "idle threads spin a while before they sleep (OpenMP's default)"


def describe_threads(kernels: bool | None) -> str:
    """The start-up line: threads in use, how they wait, and whether the C kernels run (None: not a CPU)."""
    import torch

    line = f"threads: {torch.get_num_threads()} of {os.cpu_count()} cores, {wait_policy()}"
    if kernels is not None:
        line += "; C kernels " + ("on" if kernels else "off (PyTorch's ops)")
    return line
