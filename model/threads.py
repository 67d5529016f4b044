"""How the CPU threads of PyTorch (and of the C kernels) wait for work: chosen once, as a program starts,
from how busy the machine is at that moment.

PyTorch runs its CPU ops on an OpenMP thread pool (GNU libgomp). By default an idle pool thread keeps
spinning on its core for a while, waiting for the next op, instead of sleeping. On an otherwise idle
machine that saves a wake-up between ops, and spinning is the faster choice. On a machine whose cores
are also busy with other programs (a browser, a build, another training run) the spinning threads take
the cores from the very thread they wait for, and from everything else, and a run becomes several
times slower; there OMP_WAIT_POLICY=PASSIVE (an idle thread sleeps at once and is woken by the next op)
is the faster choice. Neither setting wins on both machines (`python -m model.bench load` measures
both, idle and beside busy processes), so the programs look before they choose: they count, over a
short window, how much of the CPU other programs use (`busy_cores`), and ask for passive waiting only
when at least BUSY_CORES of work is already running; on an idle machine OpenMP's defaults stay.

The C kernels (model/kernels/) are built with -fopenmp against the same soname, libgomp.so.1, so
the dynamic loader hands them the copy torch has already loaded: one OpenMP runtime and one pool,
waiting the same way.

libgomp reads its environment once, when it is loaded (on `import torch`), so `configure_threads`
must run before that: the programs' entry points call it first thing (model/cli.py `guarded`), never an
import of the library. The choice holds for the whole run: a server started on an idle machine keeps
spinning if the machine becomes busy later (set OMP_WAIT_POLICY=PASSIVE for a long-lived process on a
shared machine). A variable the user set (any OMP_* or GOMP_* wait setting) is left alone, and
TINYGPT_THREAD_DEFAULTS=0 keeps OpenMP's own defaults.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import MutableMapping

WAIT_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}
"""What this project sets on a busy machine, unless the user chose otherwise: idle OpenMP threads sleep."""
BUSY_CORES = 0.5
"""Other programs' CPU use, in cores, from which the machine counts as busy and threads wait passively."""
LOOK_SECONDS = 0.1
"""How long `busy_cores` watches the CPU counters (the kernel counts them in 10 ms ticks)."""
USER_WAIT_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
"""The variables that already say how OpenMP threads wait; if the user set any, nothing is added."""
SWITCH = "TINYGPT_THREAD_DEFAULTS"
"""Environment variable: 0 keeps OpenMP's own defaults (threads spin while they wait) whatever the load."""
MEASURED = "TINYGPT_BUSY_CORES"
"""Where `configure_threads` leaves what it measured, for the start-up line (and the processes it starts)."""


def thread_defaults_enabled(environ: MutableMapping[str, str] = os.environ) -> bool:
    return environ.get(SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


def cpu_ticks(stat: str = "/proc/stat") -> tuple[int, int] | None:
    """(busy, total) CPU time of all cores since boot, in ticks, from Linux's /proc/stat; None elsewhere."""
    try:
        with open(stat) as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])  # user nice system idle iowait irq softirq steal


def busy_cores(seconds: float = LOOK_SECONDS) -> float | None:
    """How many cores' worth of work other programs are doing right now (this process sleeps while it
    watches), from /proc/stat over `seconds`; on other systems the 1-minute load average. None if the
    system says neither."""
    before = cpu_ticks()
    if before is None:
        try:
            return os.getloadavg()[0]
        except (AttributeError, OSError):
            return None
    time.sleep(seconds)
    after = cpu_ticks()
    if after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1]) * (os.cpu_count() or 1)


def configure_threads(environ: MutableMapping[str, str] = os.environ, busy: float | None = None) -> dict[str, str]:
    """Set WAIT_DEFAULTS in `environ` when the machine is busy (`busy` cores of other work, measured
    here unless given), unless the user set a wait policy, switched the defaults off, or torch (hence
    libgomp) is already loaded in this process, when setting them would change nothing but the
    environment of later subprocesses. Returns what it set."""
    if environ is os.environ and "torch" in sys.modules:
        return {}
    if not thread_defaults_enabled(environ) or any(name in environ for name in USER_WAIT_SETTINGS):
        return {}
    busy = busy_cores() if busy is None else busy
    if busy is None:
        return {}
    environ[MEASURED] = f"{busy:.1f}"
    if busy < BUSY_CORES:
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
    if MEASURED in os.environ:
        line += f" ({os.environ[MEASURED]} cores busy with other work at start)"
    if kernels is not None:
        line += "; C kernels " + ("on" if kernels else "off (PyTorch's ops)")
    return line
