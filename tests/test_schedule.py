"""The learning-rate schedule follows the run's length unless it was chosen separately, and the
evaluations' cost scales with the run when eval_iters is not set."""

from __future__ import annotations

import pytest

from helpers import ROOT, tiny_overrides
from model.config import EVAL_BUDGET, FORWARD_PER_STEP, MAX_EVAL_ITERS, TrainConfig, load_config, was_given
from model.training.optim import describe_schedule, learning_rate
from model.training.trainer import train


def schedule(tmp_path, file_text: str | None, *overrides: str) -> TrainConfig:
    path = None
    if file_text is not None:
        path = tmp_path / "run.toml"
        path.write_text(file_text)
    return load_config(path, list(overrides))[1]


@pytest.mark.parametrize("file_text, overrides, decay", [
    (None, ["--max_iters=500"], 500),  # the README's example: the defaults' 2000 = 2000 follows
    (None, [], 2000),
    ("max_iters = 300\n", [], 300),  # not set: follows the file's max_iters
    ("max_iters = 300\n", ["--max_iters=40"], 40),
    ("max_iters = 220\nlr_decay_iters = 220\n", ["--max_iters=50"], 50),  # set equal: follows
    ("lr_decay_iters = 2000\n", ["--max_iters=50"], 50),  # equal to the default max_iters: follows
    ("max_iters = 2000\nlr_decay_iters = 5000\n", ["--max_iters=100"], 5000),  # chosen separately: kept
    ("lr_decay_iters = 700\n", ["--max_iters=100"], 700),
    (None, ["--max_iters=500", "--lr_decay_iters=1000"], 1000),  # a flag: kept
    ("max_iters = 220\nlr_decay_iters = 220\n", ["--max_iters=50", "--lr_decay_iters=220"], 220),
])
def test_lr_decay_iters_follows_max_iters_unless_chosen_separately(tmp_path, file_text, overrides, decay):
    assert schedule(tmp_path, file_text, *overrides).lr_decay_iters == decay


def test_a_followed_schedule_is_not_recorded_as_given(tmp_path):
    """So that --init_from=resume --max_iters=N still takes the checkpoint's schedule (training/resume.py)."""
    config = schedule(tmp_path, None, "--max_iters=500")
    assert config.lr_decay_iters == 500 and not was_given(config, "lr_decay_iters")
    assert was_given(schedule(tmp_path, None, "--lr_decay_iters=9"), "lr_decay_iters")


def test_the_readme_example_ends_at_min_lr(tmp_path):
    config = schedule(tmp_path, None, "--max_iters=500")
    assert learning_rate(config.max_iters - 1, config) == pytest.approx(config.min_lr, rel=1e-3)


def test_the_quick_start_config_follows_a_shorter_run():
    config = load_config(ROOT / "configs" / "shakespeare_char_cpu.toml", ["--max_iters=60"])[1]
    assert config.lr_decay_iters == 60


def test_the_schedule_is_printed_at_start_up(char_data_dir, tmp_path, capsys):
    values = tiny_overrides(char_data_dir, tmp_path / "out", max_iters=3)
    del values["lr_decay_iters"]
    config = load_config(None, values)
    train(*config)
    out = capsys.readouterr().out
    assert describe_schedule(config[1]) in out
    assert "cosine decay to 0.0001 at iteration 3, the end of the run" in out
    assert "at iteration 700, beyond max_iters 3" in describe_schedule(schedule(tmp_path, None, "--max_iters=3",
                                                                               "--lr_decay_iters=700"))


def test_explicit_eval_iters_is_kept(tmp_path):
    assert schedule(tmp_path, "eval_iters = 37\n").evaluation_batches() == 37
    assert schedule(tmp_path, None, "--eval_iters=200").evaluation_batches() == 200


@pytest.mark.parametrize("max_iters, eval_interval, accumulation", [
    (2000, 250, 1), (500, 250, 1), (220, 110, 1), (5000, 500, 4), (600000, 2000, 40), (50, 10, 1),
])
def test_derived_eval_iters_keeps_evaluations_within_the_budget(tmp_path, max_iters, eval_interval, accumulation):
    config = schedule(tmp_path, None, f"--max_iters={max_iters}", f"--eval_interval={eval_interval}",
                      f"--gradient_accumulation_steps={accumulation}")
    batches = config.evaluation_batches()
    assert 1 <= batches <= MAX_EVAL_ITERS
    evaluations = max_iters // eval_interval + 1
    cost = evaluations * 2 * batches / FORWARD_PER_STEP  # in training micro-steps
    assert batches == 1 or cost <= EVAL_BUDGET * max_iters * accumulation
    assert batches == MAX_EVAL_ITERS or cost > EVAL_BUDGET * max_iters * accumulation * 0.8  # not needlessly few


def test_derived_eval_iters_grows_with_the_run(tmp_path):
    short, long = (schedule(tmp_path, None, f"--max_iters={n}").evaluation_batches() for n in (250, 20000))
    assert short < long
