"""One run per out_dir: a lock file that names the run holding it.

Two runs writing into one folder would mix their files (ckpt.pt from one, config.json from the
other, metrics.jsonl interleaving both). So a training run holds out_dir/.lock from start to exit;
the file names its process, and a second run on the folder stops at once, naming that process.

On POSIX the file is also locked with flock(), which the kernel releases when the process ends,
however it ends: a lock left behind by a crash (kill -9, out of memory, power cut) is stale, and the
next run takes it over; and two runs started at the same instant can't both win. Where flock is
missing (Windows) or refused (some network filesystems), the process id written in the file decides
instead: a lock whose process is gone is stale.
"""

from __future__ import annotations

import datetime
import errno
import os
import socket
import sys
from pathlib import Path

from model.errors import TinyGPTError
from model.files import process_alive

LOCK_NAME = ".lock"

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


class OutDirLock:
    """Context manager holding out_dir/.lock; `acquire` raises TinyGPTError when another run has it."""

    def __init__(self, out_dir: str | Path):
        self.path = Path(out_dir) / LOCK_NAME
        self.fd: int | None = None

    def __enter__(self) -> "OutDirLock":
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    def acquire(self) -> None:
        try:
            self.fd = self._lock_with_flock() if fcntl is not None else None
            if self.fd is None:
                self.fd = self._lock_with_pid()
            owner = f"{os.getpid()} {socket.gethostname()} {datetime.datetime.now():%Y-%m-%d %H:%M:%S} "
            os.ftruncate(self.fd, 0)
            command = " ".join([Path(sys.executable).name, *sys.argv])[:500]
            os.write(self.fd, (owner + command + "\n").encode())
        except OSError as e:
            self.release()
            raise TinyGPTError(f"cannot lock out_dir {self.path.parent}: {e.strerror or e}") from None

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # before closing, so no one locks a file that is on its way out
            removed = True
        except OSError:  # Windows doesn't remove an open file
            removed = False
        os.close(self.fd)
        self.fd = None
        if not removed:
            self.path.unlink(missing_ok=True)

    def _lock_with_flock(self) -> int | None:
        """The locked file's descriptor; None when this filesystem doesn't do flock."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise self._in_use() from None
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    return None
                raise
            # the run before us removes the file as it releases it: make sure we locked the file that is there
            try:
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)

    def _lock_with_pid(self) -> int:
        for _ in range(2):
            try:
                return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                pid = self._owner_pid()
                if pid is not None and pid != os.getpid() and (os.name == "nt" or process_alive(pid)):
                    raise self._in_use() from None
                self.path.unlink(missing_ok=True)  # stale: its run is gone
        raise self._in_use()

    def _owner(self) -> str:
        try:
            return self.path.read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            return ""

    def _owner_pid(self) -> int | None:
        first = self._owner().split(" ", 1)[0]
        return int(first) if first.isdigit() else None

    def _in_use(self) -> TinyGPTError:
        fields = self._owner().split(" ", 4)
        if len(fields) == 5:
            pid, host, day, time, command = fields
            who = f"process {pid} on {host}, started {day} {time}: {command}"
        else:
            who = "another process"
        return TinyGPTError(
            f"out_dir {self.path.parent} is in use by another run ({who}); wait for it to finish, stop it, "
            f"or choose another out_dir (if that run is gone, delete {self.path})"
        )
