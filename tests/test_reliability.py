"""A run survives SIGKILL at any moment, stops cleanly on SIGINT/SIGTERM and never applies a NaN step;
a huge generation can be interrupted; the memory check counts parameters like the model does."""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import run_forever, start, tiny_overrides, wait_for_line
from model import checkpoint
from model.config import GPTConfig, TrainConfig, load_config
from model.errors import Interrupted, TinyGPTError
from model.files import remove_stale_temporaries
from model.nn.gpt import GPT
from model.nn.report import count_parameters
from model.training.signals import GracefulStop, StopRequested
from model.training.trainer import Trainer, train


# -- signals --------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_saves_a_checkpoint_and_resume_continues(sig, char_data_dir, tmp_path):
    out = tmp_path / "out"
    proc = start("train.py", *run_forever(char_data_dir, out, eval_interval=10**6))  # no periodic saves
    wait_for_line(proc, "iter 3:")
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith(f"{sig.name} received: stopped after iteration "), lines[0]
    stopped_at = int(lines[0].split("iteration ")[1].split()[0])
    assert stopped_at >= 3
    assert checkpoint.load_checkpoint(out / "ckpt.pt")["iter_num"] == stopped_at

    values = tiny_overrides(char_data_dir, out, init_from="resume", max_iters=stopped_at + 2, lr_decay_iters=10**6)
    summary = train(*load_config(None, values), quiet=True)
    assert summary["iter_num"] == stopped_at + 2
    assert checkpoint.load_checkpoint(out / "ckpt.pt")["iter_num"] == stopped_at + 2


def test_a_second_signal_stops_at_once_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM)
    with GracefulStop() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # the handler runs between bytecodes of the main thread
        assert stop.requested and stop.interrupted(7, Path("ckpt.pt")).exit_code == 143
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.slow
def test_sigkill_at_random_moments_never_loses_the_checkpoint(char_data_dir, tmp_path):
    """Kill -9 a run that saves every iteration, as soon as a save has started (until one kill lands
    mid-save) and at random moments; every time ckpt.pt must load and the next run must resume from it."""
    out = tmp_path / "out"
    rng = random.Random(0)
    last_iter, killed_during_save = 0, 0
    rounds = 0
    # aim at a save until one kill lands mid-write (a kill can arrive just after a fast save ends), then
    # kill at random moments; at least three rounds, at most eight
    while rounds < 3 or (killed_during_save == 0 and rounds < 8):
        aim_at_save = killed_during_save == 0
        rounds += 1
        init = "resume" if (out / "ckpt.pt").exists() else "scratch"
        proc = start("train.py", *run_forever(char_data_dir, out, eval_interval=1, eval_iters=1, init_from=init))
        wait_for_line(proc, "iter ")
        while not (out / "ckpt.pt").exists():  # the first round: until there is something to lose
            assert proc.poll() is None
            time.sleep(0.01)
        saving = lambda: any(p.name.endswith(f".tmp{proc.pid}") for p in out.iterdir())  # noqa: E731
        if aim_at_save:  # catch a save in the act: kill when its temporary file appears
            deadline = time.time() + 30
            while not saving() and time.time() < deadline:
                time.sleep(0.0005)
        else:
            time.sleep(rng.uniform(0.0, 0.5))
        proc.kill()
        proc.communicate(timeout=30)
        killed_during_save += saving()  # a killed save leaves its temporary file behind
        assert proc.returncode == -signal.SIGKILL
        ckpt = checkpoint.load_checkpoint(out / "ckpt.pt")  # raises if torn
        assert ckpt["iter_num"] >= last_iter
        last_iter = ckpt["iter_num"]
        if (out / "best.pt").exists():
            checkpoint.load_checkpoint(out / "best.pt")
    assert killed_during_save >= 1

    values = tiny_overrides(char_data_dir, out, init_from="resume", max_iters=last_iter + 2, lr_decay_iters=10**6)
    assert train(*load_config(None, values), quiet=True)["iter_num"] == last_iter + 2
    assert [p.name for p in out.iterdir() if ".tmp" in p.name] == []  # the killed saves' leftovers are gone


def test_only_temporaries_of_dead_processes_are_removed(tmp_path):
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    dead = tmp_path / f".ckpt.pt.tmp{finished.pid}"
    alive = tmp_path / f".best.pt.tmp{os.getpid()}"
    keep = tmp_path / "ckpt.pt"
    for path in (dead, alive, keep):
        path.write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path) == [dead]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, keep.name])


@pytest.mark.slow
def test_interrupting_a_huge_generation_keeps_the_output(trained):
    proc = start("sample.py", f"--out_dir={trained}", "--start=ROMEO:", "--num_samples=1",
                 f"--max_new_tokens={10**12}")
    received = ""
    while len(received) < 50:
        received += proc.stdout.read(1)
        assert proc.poll() is None, proc.stderr.read()
    proc.send_signal(signal.SIGINT)
    rest, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert stderr.strip() == "interrupted"
    assert (received + rest).startswith("ROMEO:") and len(received + rest) >= 50


# -- NaN and inf ----------------------------------------------------------------------------------
def resumed_trainer(char_data_dir: Path, out: Path, **extra) -> Trainer:
    """A trainer resuming at iteration 4 of a run that saved ckpt.pt and best.pt at iterations 2 and 4."""
    train(*load_config(None, tiny_overrides(char_data_dir, out, max_iters=4, eval_interval=2)), quiet=True)
    values = tiny_overrides(char_data_dir, out, init_from="resume", max_iters=8, eval_interval=2, **extra)
    return Trainer(*load_config(None, values), quiet=False)


def poison_loss_at(trainer: Trainer, bad_iter: int) -> None:
    def hook(module, inputs, output):
        if module.training and trainer.iter_num == bad_iter:
            return output * float("nan")

    trainer.model.lm_head.register_forward_hook(hook)


@pytest.mark.slow
@pytest.mark.parametrize("grad_clip", [1.0, 0.0])
def test_nan_loss_stops_naming_the_iteration_and_keeps_the_checkpoints(char_data_dir, tmp_path, grad_clip):
    out = tmp_path / "out"
    trainer = resumed_trainer(char_data_dir, out, grad_clip=grad_clip)
    saved = {name: (out / name).read_bytes() for name in ("ckpt.pt", "best.pt")}
    poison_loss_at(trainer, 5)
    with pytest.raises(TinyGPTError, match=r"^iteration 5: the loss is nan; stopped"):
        trainer.run()
    assert {name: (out / name).read_bytes() for name in saved} == saved


@pytest.mark.slow
@pytest.mark.parametrize("grad_clip", [1.0, 0.0])
def test_inf_gradient_stops_naming_the_iteration(char_data_dir, tmp_path, grad_clip):
    out = tmp_path / "out"
    trainer = resumed_trainer(char_data_dir, out, grad_clip=grad_clip)
    saved = (out / "ckpt.pt").read_bytes()
    weight = trainer.model.transformer.wpe.weight
    weight.register_hook(lambda grad: grad * float("inf") if trainer.iter_num == 5 else grad)
    with pytest.raises(TinyGPTError, match=r"^iteration 5: the gradient norm is (inf|nan); stopped"):
        trainer.run()
    assert (out / "ckpt.pt").read_bytes() == saved


@pytest.mark.slow
def test_on_nan_skip_drops_the_step_and_finishes(char_data_dir, tmp_path, capsys):
    out = tmp_path / "out"
    trainer = resumed_trainer(char_data_dir, out, on_nan="skip")
    poison_loss_at(trainer, 5)
    summary = trainer.run()
    assert "iteration 5: the loss is nan; skipped this step (on_nan=skip)" in capsys.readouterr().out
    assert summary["iter_num"] == 8 and math.isfinite(summary["full_val_loss"])
    # had the NaN step been applied, AdamW would have turned every weight into NaN
    final = checkpoint.load_checkpoint(out / "ckpt.pt")
    assert final["iter_num"] == 8 and all(t.isfinite().all() for t in final["model"].values())


def test_on_nan_must_be_stop_or_skip():
    with pytest.raises(TinyGPTError, match="on_nan must be one of stop, skip"):
        TrainConfig(on_nan="ignore")


# -- memory ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("tie_weights", [True, False])
@pytest.mark.parametrize("mlp_ratio", [2, 4])
def test_parameter_formula_matches_the_model(bias, tie_weights, mlp_ratio):
    config = GPTConfig(n_layer=3, n_head=2, n_embd=16, block_size=8, vocab_size=11, bias=bias,
                       tie_weights=tie_weights, mlp_ratio=mlp_ratio)
    assert count_parameters(config) == sum(p.numel() for p in GPT(config).parameters())


# -- a stop request during long work between steps -----------------------------------------------
def stop_after(calls: int):
    """A check_stop that requests the stop on its calls-th call, counting the calls made."""
    count = []

    def check() -> None:
        count.append(1)
        if len(count) >= calls:
            raise StopRequested

    return check, count


def test_evaluation_sample_and_full_validation_check_for_a_stop_request(trained, char_data_dir):
    from model.data.dataset import TokenDataset
    from model.training.evaluate import estimate_loss, split_loss
    from model.training.logger import sample_text

    model, tok, _ = checkpoint.load_model(trained / "ckpt.pt")
    dataset = TokenDataset(char_data_dir / "tiny")
    ctx = contextlib.nullcontext()
    check, count = stop_after(3)
    with pytest.raises(StopRequested):
        sample_text(model, tok, 10**9, "cpu", 0, check)
    assert len(count) == 3  # after the third token, not after a billion
    check, count = stop_after(2)
    with pytest.raises(StopRequested):
        split_loss(model, dataset, "val", 8, 1, ctx, "cpu", check_stop=check)
    assert len(count) == 2
    check, count = stop_after(5)
    with pytest.raises(StopRequested):
        estimate_loss(model, dataset, 1, 8, 10**6, ctx, "cpu", 0, check_stop=check)
    assert len(count) == 5


def test_a_huge_eval_iters_allocates_nothing_for_it(trained, char_data_dir):
    """The loss estimate keeps a running sum: one float per batch of 10**12 would need terabytes
    before the first batch; this evaluation starts at once and stops at the second batch's check."""
    from model.data.dataset import TokenDataset
    from model.training.evaluate import estimate_loss

    model, _, _ = checkpoint.load_model(trained / "ckpt.pt")
    dataset = TokenDataset(char_data_dir / "tiny")
    check, count = stop_after(2)
    with pytest.raises(StopRequested):
        estimate_loss(model, dataset, 1, 8, 10**12, contextlib.nullcontext(), "cpu", 0, check_stop=check)
    assert len(count) == 2


@pytest.mark.parametrize("eval_only", [False, True], ids=["training", "eval_only"])
def test_a_signal_during_the_first_evaluation_stops_before_any_step(char_data_dir, tmp_path, eval_only):
    out = tmp_path / "out"
    values = tiny_overrides(char_data_dir, out, eval_iters=10**6, eval_only=eval_only)  # an evaluation of hours
    trainer = Trainer(*load_config(None, values), quiet=True)
    with trainer.stop:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler runs between bytecodes of the main thread
        started = time.time()
        with pytest.raises(Interrupted) as stopped:
            trainer.run()
    assert time.time() - started < 30 and stopped.value.exit_code == 130
    if eval_only:
        assert str(stopped.value) == "SIGINT received: stopped the evaluation at iteration 0"
        assert not (out / "ckpt.pt").exists()
    else:
        assert str(stopped.value).startswith("SIGINT received: stopped after iteration 0 and saved ")
        assert checkpoint.load_checkpoint(out / "ckpt.pt")["iter_num"] == 0


@pytest.mark.slow
def test_one_sigint_stops_a_run_busy_with_a_huge_evaluation_sample(char_data_dir, tmp_path):
    out = tmp_path / "out"
    proc = start("train.py", *run_forever(char_data_dir, out, wandb_log=True, wandb_mode="offline",
                                          sample_tokens=10**6, eval_interval=10**6))
    wait_for_line(proc, "step 0:")  # printed after the loss estimate, before the sample of a million tokens
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("SIGINT received: stopped after iteration 0 and saved "), stderr
    assert "Traceback" not in stderr
    assert checkpoint.load_checkpoint(out / "ckpt.pt")["iter_num"] == 0
