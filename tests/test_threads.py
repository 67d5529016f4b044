"""The thread settings the programs choose at start-up (model/threads.py), the line that reports them,
and the benchmark that compares them with OpenMP's defaults beside busy processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT, SUBPROCESS_ENV, flags, tiny_overrides
from model.config import load_config
from model.bench.load import busy_processes
from model.threads import (BUSY_CORES, MEASURED, SWITCH, WAIT_DEFAULTS, busy_cores, configure_threads, cpu_ticks,
                           describe_threads, wait_policy)
from model.training.trainer import train


def test_threads_sleep_on_a_busy_machine_and_spin_on_an_idle_one():
    env: dict[str, str] = {}
    assert configure_threads(env, busy=BUSY_CORES + 1) == WAIT_DEFAULTS and env["OMP_WAIT_POLICY"] == "PASSIVE"
    assert env[MEASURED] == f"{BUSY_CORES + 1:.1f}"
    env = {}
    assert configure_threads(env, busy=BUSY_CORES / 2) == {} and "OMP_WAIT_POLICY" not in env  # OpenMP's defaults
    assert env[MEASURED] == f"{BUSY_CORES / 2:.1f}"


def test_the_users_wait_setting_is_kept_whatever_the_load():
    for users in ({"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "1000"}, {SWITCH: "0"}):
        env = dict(users)
        assert configure_threads(env, busy=BUSY_CORES + 1) == {} and env == users


def test_the_cpu_counters_are_read_as_busy_and_total_ticks(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 5 20 800 30 1 2 3 0 0\ncpu0 50 2 10 400 15 0 1 1 0 0\n")
    assert cpu_ticks(str(stat)) == (100 + 5 + 20 + 1 + 2 + 3, 100 + 5 + 20 + 800 + 30 + 1 + 2 + 3)
    assert cpu_ticks(str(tmp_path / "missing")) is None


@pytest.mark.skipif(cpu_ticks() is None, reason="counts busy cores from Linux's /proc/stat")
def test_busy_processes_are_counted_as_busy_cores():
    with busy_processes(1):
        assert busy_cores(0.3) >= BUSY_CORES  # one process spinning on a core


def test_the_wait_policy_is_named_as_set():
    assert "sleep" in wait_policy({"OMP_WAIT_POLICY": "passive"})
    assert "spin" in wait_policy({"OMP_WAIT_POLICY": "ACTIVE"})
    assert "5000" in wait_policy({"GOMP_SPINCOUNT": "5000"})
    assert "default" in wait_policy({})


def test_describe_threads_says_threads_and_kernels():
    import torch

    line = describe_threads(True)
    assert line.startswith(f"threads: {torch.get_num_threads()} of {os.cpu_count()} cores") and "C kernels on" in line
    assert "C kernels off" in describe_threads(False) and "C kernels" not in describe_threads(None)


def test_training_says_its_threads_at_start_up(char_data_dir, tmp_path, capsys):
    train(*load_config(None, tiny_overrides(char_data_dir, tmp_path / "out", max_iters=2)))
    lines = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("threads: ") and "C kernels " in line for line in lines) == 1, lines


@pytest.mark.slow
def test_train_py_sets_the_wait_policy_before_torch_loads(char_data_dir, tmp_path):
    env = {k: v for k, v in {**os.environ, **SUBPROCESS_ENV}.items() if k not in ("OMP_WAIT_POLICY", MEASURED)}
    with busy_processes(os.cpu_count() or 1):  # every core busy: the program chooses to sleep
        result = subprocess.run([sys.executable, "train.py", *flags(tiny_overrides(char_data_dir, tmp_path / "o1",
                                 max_iters=2))], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "idle threads sleep (OMP_WAIT_POLICY=PASSIVE)" in result.stdout, result.stdout
    assert "cores busy with other work at start" in result.stdout, result.stdout
    env = {**os.environ, **SUBPROCESS_ENV, "OMP_WAIT_POLICY": "ACTIVE"}  # the user's own choice is kept
    result = subprocess.run([sys.executable, "train.py", *flags(tiny_overrides(char_data_dir, tmp_path / "o2",
                             max_iters=2))], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert "idle threads spin (OMP_WAIT_POLICY=ACTIVE)" in result.stdout, result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.needs_kernels
@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the loaded libraries from /proc")
def test_the_c_kernels_share_torchs_openmp_runtime():
    code = ("import json, torch; from model.kernels import build; assert build.library() is not None; "
            "print(json.dumps(sorted({l.split()[-1] for l in open('/proc/self/maps') if 'gomp' in l or 'libomp' in l})))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    runtimes = json.loads(result.stdout)
    assert len(runtimes) == 1, runtimes  # the kernels' libgomp.so.1 is the copy torch loaded


@pytest.mark.slow
def test_the_load_benchmark_runs_on_a_tiny_setting():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "model.bench", "load", "--busy=1", "--max_iters=1", "--new_tokens=2", "--model=tiny"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("idle, default: threads: ") and "OpenMP's default" in line for line in lines), lines
    assert any(line.startswith("1 busy, chosen: threads: ") and "cores busy" in line for line in lines), lines
    assert any(line.startswith("1 busy, chosen, decoding: threads: ") and "cores busy" in line for line in lines), lines
    rows = [line.split() for line in lines if line.startswith(("idle ", "1 busy "))]
    assert len(rows) == 4, result.stdout  # default and chosen, idle and beside the busy process
    numbers = [[float(cell.rstrip("x")) for cell in row[-5:]] for row in rows]
    assert all(value > 0 for row in numbers for value in row), result.stdout
    assert len({row[-1] for row in numbers}) == 1, result.stdout  # the setting changes the speed, never the loss
