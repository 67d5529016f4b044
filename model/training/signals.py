"""Stopping a training run cleanly on Ctrl-C (SIGINT) or `kill` (SIGTERM, as sent by schedulers).

Python's default reaction to Ctrl-C is a KeyboardInterrupt wherever the program happens to be, which
would throw away everything since the last evaluation. Instead, while a `GracefulStop` is active, the
first signal only raises a flag: the training loop finishes the step it is in, saves ckpt.pt and
exits with 128 + the signal number (130 for SIGINT, 143 for SIGTERM), like a shell does. A second
signal means the user insists: it stops at once (checkpoints are written atomically, so the previous
one is still whole), and says which checkpoint remains, from which iteration.

Under torchrun a signal may reach one rank only, or reach the ranks a step apart. The ranks agree after
every step (`agreed`, one small all-reduce), so all of them stop after the same step, take part in one
save together and exit with the same status. Once that save is written, further signals (torchrun
sends SIGTERM to the ranks still running when one exits) change nothing.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from pathlib import Path

from model.errors import Interrupted

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequested(Exception):
    """Raised by `GracefulStop.check` inside long work (an evaluation, a sample) once a stop is requested,
    so that the training loop can save and exit within seconds, not at the end of that work."""


class GracefulStop:
    """Context manager that turns SIGINT/SIGTERM into a flag the training loop polls via `requested`.

    Outside the main thread (where Python cannot install signal handlers) it does nothing.
    """

    def __init__(self, single_process: bool = True) -> None:
        self.signum: int | None = None
        self.saved = False
        # Several ranks must agree on where they stop (`agreed`, after a step): one rank leaving an
        # evaluation early would leave the others waiting in its collectives, so `check` is for one process.
        self.single_process = single_process
        self._previous: dict[int, object] = {}
        self.last_checkpoint: tuple[Path, int] | None = None  # the resumable checkpoint on disk, its iteration

    def __enter__(self) -> "GracefulStop":
        self.signum = None
        self.saved = False
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.saved:
            return  # the stop's checkpoint is written: the run is exiting anyway, with this status
        if self.signum is not None:  # second signal: stop now, without the final save
            raise KeyboardInterrupt(self.forced_stop_message(signum))
        self.signum = signum

    def checkpoint_written(self, path: Path, iter_num: int) -> None:
        """Record the resumable checkpoint now on disk, for the message of a forced stop."""
        self.last_checkpoint = (path, iter_num)

    def forced_stop_message(self, signum: int) -> str:
        """What a second signal leaves behind: the last checkpoint written (whole: writes are atomic)."""
        name = signal.Signals(signum).name
        if self.last_checkpoint is None:
            return f"second {name}: stopped at once, before this run wrote a checkpoint"
        path, iter_num = self.last_checkpoint
        return (f"second {name}: stopped at once without saving; {path} remains, from iteration {iter_num} "
                f"(continue with --init_from=resume)")

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def mark_saved(self) -> None:
        """The stop's checkpoint is written: from now on signals are ignored while the run exits."""
        self.saved = True

    def agreed(self, agreed_max: Callable[[int], int]) -> bool:
        """Whether any rank was asked to stop, given the ranks' all-reduce of a maximum (a single process
        passes its own value through); every rank then takes that request as its own."""
        signum = agreed_max(self.signum or 0)
        if signum:
            self.signum = signum
        # the agreed value, not the local flag: a signal landing after the all-reduce is this rank's
        # alone until the next step's agreement, and a rank acting on it now would stop alone
        return bool(signum)

    def check(self) -> None:
        """Raise StopRequested if a stop was requested: for loops that take long between training steps
        (in a single process; several ranks stop together after a step)."""
        if self.single_process and self.signum is not None:
            raise StopRequested

    def interrupted(self, iter_num: int, saved: Path | None) -> Interrupted:
        """The exception that ends the run once the checkpoint at `saved` is written (None: nothing to save)."""
        name = signal.Signals(self.signum).name
        if saved is None:
            return Interrupted(f"{name} received: stopped the evaluation at iteration {iter_num}", 128 + self.signum)
        return Interrupted(
            f"{name} received: stopped after iteration {iter_num} and saved {saved}; "
            f"continue with --init_from=resume",
            128 + self.signum,
        )
