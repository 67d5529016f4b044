"""Safety, measured: kill -9 a training run at random moments, stop one with SIGTERM, time what the
per-step safety checks cost, and compare the up-front memory estimate with a real run's memory.

    python -m model.bench safety [--rounds=10] [--seed=0]

The run saves ckpt.pt at every iteration (eval_interval=1); even rounds kill it at a random moment,
odd rounds as soon as a save has started. After each kill the checkpoint must load and the next
round resumes from it.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
TRAIN = "from model.cli import train_main; raise SystemExit(train_main())"


def start_training(flags: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", TRAIN, *flags], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for line in proc.stdout:  # wait until the loop runs
        if line.startswith("iter "):
            return proc
    raise SystemExit(f"training did not start: {proc.stderr.read()}")


def kill_rounds(flags: list[str], out: Path, rounds: int, rng: random.Random) -> None:
    from model.checkpoint import LATEST, load_checkpoint

    print(f"{'round':>5} {'killed':>14} {'mid-save':>8} {'ckpt.pt loads':>13} {'iter_num':>8} {'load ms':>7}")
    mid_save = loaded = 0
    for r in range(rounds):
        init = "resume" if (out / LATEST).exists() else "scratch"
        proc = start_training(flags + [f"--init_from={init}"])
        while not (out / LATEST).exists():  # first round: until there is a checkpoint to lose
            time.sleep(0.01)
        # a save in progress has a temporary file named after the process; killed, it stays behind
        saving = lambda: any(p.name.endswith(f".tmp{proc.pid}") for p in out.iterdir())  # noqa: E731
        if r % 2:  # odd rounds aim at a save: kill as soon as its temporary file appears
            t0 = time.perf_counter()
            while not saving() and time.perf_counter() - t0 < 30:
                time.sleep(0.0005)
            when = "at a save"
        else:
            delay = rng.uniform(0.0, 1.0)
            time.sleep(delay)
            when = f"after {delay:.2f}s"
        proc.kill()
        proc.communicate()
        killed_mid_save = saving()
        t0 = time.perf_counter()
        try:
            iter_num, ok = load_checkpoint(out / LATEST)["iter_num"], True
        except Exception as e:  # reported, not raised: this is what the benchmark measures
            iter_num, ok = f"{type(e).__name__}", False
        load_ms = (time.perf_counter() - t0) * 1000
        mid_save += killed_mid_save
        loaded += ok
        print(f"{r:>5} {when:>14} {'yes' if killed_mid_save else 'no':>8} {'yes' if ok else 'NO':>13} {iter_num:>8} {load_ms:>7.1f}")
    leftovers = sum(".tmp" in p.name for p in out.iterdir())
    print(f"SIGKILL: {loaded}/{rounds} checkpoints loadable, {mid_save} kills during a save, "
          f"{leftovers} temporary files left (the next run removes them)")


def sigterm_round(flags: list[str], out: Path) -> None:
    from model.checkpoint import LATEST, load_checkpoint

    proc = start_training(flags + ["--init_from=resume"])
    t0 = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate()
    seconds = time.perf_counter() - t0
    iter_num = load_checkpoint(out / LATEST)["iter_num"]
    print(f"SIGTERM: exit {proc.returncode} after {seconds:.2f}s, ckpt.pt at iteration {iter_num}; "
          f"stderr: {stderr.strip()!r}")


def check_costs(values: dict[str, str]) -> None:
    """Time one training step against the NaN/inf check and the token-id check it now includes."""
    import timeit

    import torch

    from model.config import load_config
    from model.training.trainer import Trainer

    # a new run in the folder of the killed ones: it only times steps, and never saves
    trainer = Trainer(*load_config(None, {**values, "init_from": "scratch", "max_iters": "0", "overwrite": "True"}),
                      quiet=True)
    g = torch.Generator().manual_seed(0)
    n = 20
    step = timeit.timeit(lambda: trainer.train_step(1e-4), number=n) / n
    _, loss = trainer.model(*trainer.dataset.get_batch("train", 8, trainer.model_config.block_size, g))
    loss.backward()
    params, loss = list(trainer.model.parameters()), loss.detach()

    def clip_and_flag() -> None:  # the norm, clipping and the step's NaN flag
        trainer.guard.skip(0, loss, torch.nn.utils.clip_grad_norm_(params, 1.0))

    clip = timeit.timeit(clip_and_flag, number=n) / n
    norm = timeit.timeit(lambda: trainer.guard.check(), number=n) / n  # reading the flags (a sync)
    x, _ = trainer.dataset.get_batch("train", 8, trainer.model_config.block_size, g)
    ids = timeit.timeit(lambda: trainer.dataset._check_ids(x.numpy(), "train"), number=1000) / 1000
    print(f"per step ({trainer.model.num_params() / 1e6:.2f}M params, batch 8 x {trainer.model_config.block_size}): "
          f"train step {step * 1e3:.2f} ms | clipping with the NaN flag {clip * 1e6:.0f} us, reading the flags "
          f"{norm * 1e6:.0f} us | token-id check {ids * 1e6:.1f} us")


MEMORY_PROBE = dict(n_layer="6", n_head="6", n_embd="384", block_size="256", batch_size="16")
"""nanoGPT's Shakespeare 'baby GPT' (10.7M parameters), at a batch size that fits a laptop."""


def memory_probe(values: dict[str, str]) -> None:
    """Run in a fresh process: the estimate next to the growth of peak RSS over three training steps."""
    import resource

    from model.config import load_config
    from model.training.memory import estimate_training_memory
    from model.training.trainer import Trainer

    model_config, config = load_config(None, {**values, **MEMORY_PROBE, "init_from": "scratch"})
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    trainer = Trainer(model_config, config, quiet=True)
    for _ in range(3):
        trainer.train_step(1e-4)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    e = estimate_training_memory(trainer.model_config, config, trainer.dtype)
    print(f"memory ({e.n_params / 1e6:.1f}M params, batch {config.batch_size} x {model_config.block_size}): "
          f"estimate {e.total_bytes / 1e6:,.0f} MB (state {e.state_bytes / 1e6:,.0f} MB + activations "
          f"{e.activation_bytes / 1e6:,.0f} MB) | measured peak RSS growth {grown / 1e6:,.0f} MB")


def main(argv: list[str] | None = None) -> int:
    from model.cli import OneLineArgumentParser
    from model.data.dataset import prepare

    parser = OneLineArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory_probe", default=None, help=argparse.SUPPRESS)  # data_dir, for the subprocess
    args = parser.parse_args(argv)
    if args.memory_probe:
        memory_probe(dict(data_dir=args.memory_probe, out_dir=str(Path(args.memory_probe).parent / "probe"),
                          device="cpu", dataset="shakespeare_char"))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        data_dir, out = Path(tmp) / "data", Path(tmp) / "out"
        prepare("shakespeare_char", data_dir)
        values = dict(data_dir=str(data_dir), out_dir=str(out), device="cpu", max_iters="1000000",
                      lr_decay_iters="1000000", eval_interval="1", eval_iters="1", log_interval="1", batch_size="8")
        flags = [f"--{k}={v}" for k, v in values.items()]
        kill_rounds(flags, out, args.rounds, random.Random(args.seed))
        sigterm_round(flags, out)
        check_costs(values)
        subprocess.run([sys.executable, "-m", "model.bench", "safety", f"--memory_probe={data_dir}"], cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
    return 0
