"""Exact resume: N steps in one go equal N/2 steps, stop, and N/2 more from the checkpoint, bit for bit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import final_weights, run_torchrun, tiny_overrides, train_losses
from model.config import load_config
from model.training.trainer import train

pytestmark = pytest.mark.slow  # a training run stopped and resumed, and one under torchrun

# Dropout and gradient accumulation on, and an eval interval that doesn't divide the stopping point,
# so the RNG streams, the sampler position and the schedule all have to be restored to match.
SETTINGS = dict(dropout=0.1, gradient_accumulation_steps=2, log_interval=1, eval_interval=7,
                warmup_iters=3, lr_decay_iters=12, dtype="float32")


def run(data_dir: Path, out_dir: Path, **extra) -> None:
    model_config, train_config = load_config(None, tiny_overrides(data_dir, out_dir, **SETTINGS, **extra))
    train(model_config, train_config, quiet=True)


def test_stopped_and_resumed_run_equals_uninterrupted_run(tmp_path: Path, char_data_dir: Path):
    run(char_data_dir, tmp_path / "straight", max_iters=12)
    run(char_data_dir, tmp_path / "resumed", max_iters=6)
    halfway = torch.load(tmp_path / "resumed" / "ckpt.pt", weights_only=True)
    run(char_data_dir, tmp_path / "resumed", max_iters=12, init_from="resume")

    assert halfway["iter_num"] == 6
    assert {"model", "optimizer", "config", "rng", "data_position"} <= halfway.keys()
    assert halfway["data_position"]["windows_drawn"] == 6 * 2 * 8
    assert {"torch", "numpy", "python"} <= halfway["rng"][0].keys()

    straight, resumed = train_losses(tmp_path / "straight"), train_losses(tmp_path / "resumed")
    assert sorted(straight) == list(range(1, 13))
    assert resumed == straight  # exact float equality, every step
    a, b = final_weights(tmp_path / "straight"), final_weights(tmp_path / "resumed")
    assert all(torch.equal(a[name], b[name]) for name in a)


def test_resume_is_exact_per_rank_under_torchrun(tmp_path: Path, char_data_dir: Path):
    """Each rank has its own dropout stream; the checkpoint must bring back every rank's."""
    common = dict(SETTINGS, batch_size=4)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    for out_dir, extra in ((straight, dict(max_iters=8)), (resumed, dict(max_iters=4)),
                           (resumed, dict(max_iters=8, init_from="resume"))):
        done = run_torchrun(2, tiny_overrides(char_data_dir, out_dir, **common, **extra))
        assert done.returncode == 0, done.stderr[-3000:]
    rng = torch.load(straight / "ckpt.pt", weights_only=True)["rng"]
    assert len(rng) == 2 and not torch.equal(rng[0]["torch"], rng[1]["torch"])
    assert train_losses(resumed) == train_losses(straight)
    a, b = final_weights(straight), final_weights(resumed)
    assert all(torch.equal(a[name], b[name]) for name in a)
