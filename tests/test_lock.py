"""One run per out_dir: a second run on a folder in use stops at once, naming the run that holds it;
the lock goes with its run, also when the run crashes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from helpers import flags, run_forever, start, tiny_overrides, wait_for_line
from model.cli import train_main
from model.training import lock as lock_module
from model.training.lock import LOCK_NAME, OutDirLock


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def dead_pid() -> int:
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    return finished.pid


def test_a_second_run_on_a_folder_in_use_stops_naming_the_first(capsys, char_data_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    values = tiny_overrides(char_data_dir, out, max_iters=2)
    with OutDirLock(out):  # as a run in progress holds it
        assert train_main(flags(values) + ["--quiet"]) == 1
        line = one_error_line(capsys)
        assert f"out_dir {out} is in use by another run (process {os.getpid()} on " in line, line
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing of the second run written
    assert not (out / LOCK_NAME).exists()  # released
    assert train_main(flags(values) + ["--quiet"]) == 0
    assert not (out / LOCK_NAME).exists()  # the run released it as it finished


def test_the_lock_is_released_when_a_run_fails(capsys, char_data_dir, tmp_path):
    out = tmp_path / "out"
    values = tiny_overrides(char_data_dir, out, init_from="resume")  # no checkpoint to resume from
    assert train_main(flags(values) + ["--quiet"]) == 1
    assert "checkpoint not found" in one_error_line(capsys)
    assert not (out / LOCK_NAME).exists()
    with OutDirLock(out):
        pass


def test_a_lock_left_by_a_crashed_run_is_taken_over(char_data_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).write_text(f"{dead_pid()} somehost 2020-01-01 00:00:00 python train.py\n")
    assert train_main(flags(tiny_overrides(char_data_dir, out, max_iters=2)) + ["--quiet"]) == 0


def test_without_flock_the_pid_decides(tmp_path, monkeypatch):
    """Where flock is missing (Windows) the process id in the file tells a live run from a crashed one."""
    monkeypatch.setattr(lock_module, "fcntl", None)
    (tmp_path / LOCK_NAME).write_text(f"{dead_pid()} somehost 2020-01-01 00:00:00 python train.py\n")
    with OutDirLock(tmp_path):  # stale: taken over
        assert (tmp_path / LOCK_NAME).read_text().startswith(f"{os.getpid()} ")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / LOCK_NAME).write_text(f"{sleeper.pid} somehost 2020-01-01 00:00:00 python train.py\n")
        with pytest.raises(Exception, match=f"in use by another run \\(process {sleeper.pid} on somehost"):
            OutDirLock(tmp_path).acquire()
    finally:
        sleeper.kill()
        sleeper.wait()
    with OutDirLock(tmp_path):  # its process is gone now
        pass


@pytest.mark.slow
def test_two_runs_at_once_and_a_crash(char_data_dir, tmp_path):
    """A second train.py on the folder of a running one exits at once, naming it; after the first is
    killed with SIGKILL, its lock is stale and a new run resumes."""
    out = tmp_path / "out"
    first = start("train.py", *run_forever(char_data_dir, out, eval_interval=2))
    try:
        wait_for_line(first, "iter 3:")
        second = start("train.py", *flags(tiny_overrides(char_data_dir, out, max_iters=2)))
        stdout, stderr = second.communicate(timeout=60)
        assert second.returncode == 1, stderr
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and f"in use by another run (process {first.pid} on " in lines[0], stderr
        assert "train.py" in lines[0]
    finally:
        first.kill()
        first.communicate(timeout=60)
    assert first.returncode == -signal.SIGKILL
    assert (out / LOCK_NAME).read_text().startswith(f"{first.pid} ")  # left behind by the crash
    values = tiny_overrides(char_data_dir, out, init_from="resume", max_iters=10**6, lr_decay_iters=10**6)
    again = start("train.py", *flags({**values, "max_iters": "0"}), "--eval_only=True", "--quiet")
    stdout, stderr = again.communicate(timeout=120)
    assert again.returncode == 0, stderr
    assert not (out / LOCK_NAME).exists()
