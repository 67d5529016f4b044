"""The thread settings the programs choose at start-up (model/threads.py), the line that reports them,
and the benchmark that compares them with OpenMP's defaults beside busy processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT, SUBPROCESS_ENV, flags, start, tiny_overrides
from model.config import load_config
from model.threads import SWITCH, WAIT_DEFAULTS, configure_threads, describe_threads, wait_policy
from model.training.trainer import train


def test_idle_threads_are_set_to_sleep_unless_the_user_chose():
    env: dict[str, str] = {}
    assert configure_threads(env) == WAIT_DEFAULTS and env["OMP_WAIT_POLICY"] == "PASSIVE"
    for users in ({"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "1000"}, {SWITCH: "0"}):
        env = dict(users)
        assert configure_threads(env) == {} and env == users


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
    proc = start("train.py", *flags(tiny_overrides(char_data_dir, tmp_path / "out", max_iters=2)))
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "idle threads sleep (OMP_WAIT_POLICY=PASSIVE)" in out, out
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
    assert any(line.startswith("default: threads: ") and "OpenMP's default" in line for line in lines), lines
    assert any(line.startswith("chosen (") and "OMP_WAIT_POLICY=PASSIVE" in line for line in lines), lines
    rows = [line.split() for line in lines if line.startswith(("idle ", "1 busy "))]
    assert len(rows) == 4, result.stdout  # default and chosen, idle and beside the busy process
    numbers = [[float(cell.rstrip("x")) for cell in row[-5:]] for row in rows]
    assert all(value > 0 for row in numbers for value in row), result.stdout
    assert len({row[-1] for row in numbers}) == 1, result.stdout  # the setting changes the speed, never the loss
