"""Exact resume: N steps in one go equal N/2 steps, stop, and N/2 more from the checkpoint, bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import final_weights, flags, run_torchrun, tiny_overrides, train_losses
from model.checkpoint import load_checkpoint
from model.cli import train_main
from model.config import load_config
from model.data.dataset import TokenDataset
from model.training.optim import learning_rate
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
    assert set(halfway["data_position"]) == {"batch_generator"}
    # older checkpoints also count the windows drawn so far; the count is not needed and must not hurt
    torch.save({**halfway, "data_position": {**halfway["data_position"], "windows_drawn": 6 * 2 * 8}},
               tmp_path / "resumed" / "ckpt.pt")
    run(char_data_dir, tmp_path / "resumed", max_iters=12, init_from="resume")

    assert halfway["iter_num"] == 6
    assert {"model", "optimizer", "config", "rng", "data_position"} <= halfway.keys()
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


# -- what a resumed run takes from its checkpoint -----------------------------------------------
def logged_lr(out_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["iter"]: r["lr"] for r in records if "lr" in r}


@pytest.mark.parametrize("flag", ["--activation=relu2", "--norm=rmsnorm", "--pos_embedding=rope", "--qk_norm=True",
                                  "--mlp_ratio=2", "--bias=False"])
def test_resume_refuses_an_architecture_flag_that_differs(capsys, trained, char_data_dir, flag):
    values = tiny_overrides(char_data_dir, trained, init_from="resume", max_iters=3)
    assert train_main(flags(values) + [flag, "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    key = flag[2:].split("=")[0]
    assert len(err) == 1 and err[0].startswith(f"error: {key}=") and "contradicts" in err[0], err
    assert load_checkpoint(trained / "ckpt.pt")["iter_num"] == 2  # nothing trained


def test_resume_refuses_a_flag_set_to_its_default_also_beside_the_datasets_vocab_size(capsys, trained, char_data_dir):
    """--n_layer=4 is the default but was given, so it contradicts the checkpoint's 2 layers; what was given
    is remembered through every copy of the config (here the one that leaves vocab_size to the checkpoint)."""
    vocab_size = TokenDataset(char_data_dir / "tiny").vocab_size
    values = tiny_overrides(char_data_dir, trained, init_from="resume", max_iters=3, n_layer=4, vocab_size=vocab_size)
    assert train_main(flags(values) + ["--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: n_layer=4 contradicts"), err
    assert load_checkpoint(trained / "ckpt.pt")["iter_num"] == 2  # nothing trained


def test_resume_takes_every_architecture_option_from_the_checkpoint(capsys, char_data_dir, tmp_path):
    arch = dict(pos_embedding="rope", norm="rmsnorm", activation="relu2", qk_norm=True, bias=False, mlp_ratio=2)
    out = tmp_path / "out"
    assert train_main(flags(tiny_overrides(char_data_dir, out, max_iters=2, **arch)) + ["--quiet"]) == 0
    resume = tiny_overrides(char_data_dir, out, init_from="resume", max_iters=3)
    assert train_main(flags(resume) + ["--quiet"]) == 0  # none of them repeated: all taken from the checkpoint
    stored = load_checkpoint(out / "ckpt.pt")
    assert stored["iter_num"] == 3
    assert {k: stored["model_config"][k] for k in arch} == arch
    # an explicit flag is an explicit flag, even when it names the default
    assert train_main(flags(resume) + ["--pos_embedding=learned", "--quiet"]) == 1
    assert "pos_embedding=learned contradicts" in capsys.readouterr().err


def test_resume_continues_the_checkpoints_lr_schedule(char_data_dir, tmp_path):
    out = tmp_path / "out"
    first = tiny_overrides(char_data_dir, out, max_iters=2, warmup_iters=0, lr_decay_iters=2, min_lr=2e-4,
                           learning_rate=2e-3, log_interval=1)
    assert train_main(flags(first) + ["--quiet"]) == 0
    assert logged_lr(out)[2] == pytest.approx(learning_rate(1, load_config(None, first)[1]))
    resume = tiny_overrides(char_data_dir, out, init_from="resume", max_iters=4, log_interval=1)
    for key in ("warmup_iters", "lr_decay_iters"):  # not repeated: the defaults (100, 2000) must not apply
        del resume[key]
    assert train_main(flags(resume) + ["--quiet"]) == 0
    lrs = logged_lr(out)
    assert lrs[3] == lrs[4] == 2e-4  # past lr_decay_iters: min_lr, not a jump back up
    config = load_checkpoint(out / "ckpt.pt")["config"]
    assert (config["lr_decay_iters"], config["warmup_iters"], config["min_lr"], config["learning_rate"]) == (2, 0, 2e-4, 2e-3)


def test_an_explicit_schedule_or_dropout_override_is_applied_and_printed(capsys, trained, char_data_dir):
    values = tiny_overrides(char_data_dir, trained, init_from="resume", max_iters=4, lr_decay_iters=40,
                            dropout=0.1, log_interval=1)
    del values["warmup_iters"]  # taken from the checkpoint (2)
    assert train_main(flags(values)) == 0
    printed = capsys.readouterr().out
    assert "note: resuming with lr_decay_iters=40 (the checkpoint's run had 20)" in printed
    assert "note: resuming with dropout=0.1 (the checkpoint's run had 0.0)" in printed
    stored = load_checkpoint(trained / "ckpt.pt")
    assert stored["config"]["lr_decay_iters"] == 40 and stored["model_config"]["dropout"] == 0.1
    schedule = load_config(None, {"lr_decay_iters": "40", "warmup_iters": "2"})[1]
    assert logged_lr(trained)[4] == pytest.approx(learning_rate(3, schedule))


def test_resumed_run_continues_the_wandb_run(char_data_dir, tmp_path, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    calls = []
    real_init = wandb.init
    monkeypatch.setattr(wandb, "init", lambda **kwargs: calls.append(kwargs) or real_init(**kwargs))
    out = tmp_path / "out"
    values = tiny_overrides(char_data_dir, out, max_iters=2, wandb_log=True, wandb_mode="offline", sample_tokens=4)
    assert train_main(flags(values) + ["--quiet"]) == 0
    run_id = load_checkpoint(out / "ckpt.pt")["wandb_run_id"]
    assert run_id and calls[0]["id"] is None
    assert [p.name.rsplit("-", 1)[1] for p in out.glob("wandb/offline-run-*")] == [run_id]

    assert train_main(flags({**values, "init_from": "resume", "max_iters": "3"}) + ["--quiet"]) == 0
    assert calls[1]["id"] == run_id and calls[1]["resume"] == "allow"
    wandb.teardown()
    assert [p.name.rsplit("-", 1)[1] for p in out.glob("wandb/offline-run-*")] == [run_id, run_id]
    assert load_checkpoint(out / "ckpt.pt")["wandb_run_id"] == run_id
