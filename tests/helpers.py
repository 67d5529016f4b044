"""Helpers shared by the tests (import them: `from helpers import ROOT, tiny_overrides`); fixtures live
in conftest.py.

Markers (registered in pyproject.toml) for tests that need something a machine may lack; conftest.py
skips such a test, saying why, when the thing can't be had here (checked once per session):
    @pytest.mark.needs_gpt2     tiktoken's GPT-2 files (its cache, TIKTOKEN_CACHE_DIR, or a download)
    @pytest.mark.needs_kernels  the C kernels (a C compiler that builds them, TINYGPT_KERNELS not 0)
and @pytest.mark.slow for subprocess, torchrun and kill tests and any other that takes seconds:
`pytest -m "not slow"` is the fast subset.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from model.nn.gpt import GPT

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
"""Files a developer or CI may have beside the clone (tiktoken's cache, Tiny Shakespeare); optional."""

GPT2_LOAD_TIMEOUT = 30.0
"""Seconds to wait for tiktoken to find or download GPT-2's files before the tests needing them skip."""

CHARS = "\n !',.:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
"""The vocabulary of peaky_gpt's character-level models."""

# A lone subprocess on a shared 2-core machine is much faster with one thread than fighting for two.
SUBPROCESS_ENV = {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
"""What start() adds to the environment of the programs it runs: unbuffered output (read line by
line) and one thread."""


def shakespeare_path() -> Path:
    """Tiny Shakespeare: $TINYSHAKESPEARE_PATH, else ../shared/data/tinyshakespeare.txt, else the copy
    the project ships (gzipped, read by model.data.dataset.read_corpus)."""
    from model.data.dataset import KNOWN_DATASETS, SHIPPED_DIR, TINYSHAKESPEARE_ENV

    if os.environ.get(TINYSHAKESPEARE_ENV):
        return Path(os.environ[TINYSHAKESPEARE_ENV])
    shared = SHARED / "data" / "tinyshakespeare.txt"
    if shared.is_file():
        return shared
    return SHIPPED_DIR / KNOWN_DATASETS["shakespeare_char"].shipped


@functools.cache
def gpt2_unavailable() -> str | None:
    """Why tiktoken's GPT-2 encoding can't be loaded here (None when it can). Tried once per process,
    in a thread so that a network that never answers costs GPT2_LOAD_TIMEOUT seconds, not a hang."""
    outcome: list[Exception | None] = []

    def load() -> None:
        try:
            import tiktoken

            tiktoken.get_encoding("gpt2")
            outcome.append(None)
        except Exception as e:  # any failure means: skip, and say which
            outcome.append(e)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(GPT2_LOAD_TIMEOUT)
    where = os.environ.get("TIKTOKEN_CACHE_DIR") or "tiktoken's default cache"
    if not outcome:
        return f"tiktoken's GPT-2 files are not in {where} and downloading them timed out"
    if outcome[0] is not None:
        error = outcome[0]
        return (f"tiktoken's GPT-2 files are not in {where} and could not be downloaded "
                f"({type(error).__name__}); set TIKTOKEN_CACHE_DIR to a folder holding them")
    return None


@functools.cache
def kernels_unavailable() -> str | None:
    """Why the C kernels can't be used here (None when they can)."""
    from model.kernels import build

    if build.library() is None:
        return "the C kernels are not available here (no C compiler, a failed build, or TINYGPT_KERNELS=0)"
    return None


def tiny_overrides(data_dir: Path, out_dir: Path, **extra) -> dict:
    """Config values for a run that takes a second or two on a CPU."""
    values = dict(
        dataset="tiny", data_dir=str(data_dir), out_dir=str(out_dir), device="cpu",
        n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=8,
        max_iters=20, eval_interval=10, eval_iters=2, log_interval=5, warmup_iters=2, lr_decay_iters=20,
    )
    values.update(extra)
    return {k: str(v) for k, v in values.items()}


def flags(values: dict) -> list[str]:
    """Command-line flags (--key=value) for config values."""
    return [f"--{k}={v}" for k, v in values.items()]


def run_forever(data_dir: Path, out_dir: Path, **extra) -> list[str]:
    """Flags for a tiny run that never ends on its own (log a line every iteration)."""
    values = tiny_overrides(data_dir, out_dir, max_iters=10**6, lr_decay_iters=10**6, log_interval=1, **extra)
    return flags(values)


def start(script: str, *args: str) -> subprocess.Popen:
    """Start a program of the project (train.py, sample.py) with its stdout and stderr piped."""
    env = {**os.environ, **SUBPROCESS_ENV}
    return subprocess.Popen([sys.executable, script, *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for_line(proc: subprocess.Popen, prefix: str, timeout: float = 60.0) -> str:
    """Read proc's stdout up to the first line starting with prefix and return it."""
    deadline = time.time() + timeout
    for line in proc.stdout:
        if line.startswith(prefix):
            return line
        assert time.time() < deadline, f"no line starting with {prefix!r} in {timeout}s"
    raise AssertionError(f"process ended (status {proc.wait()}) before printing {prefix!r}: {proc.stderr.read()}")


TINY_SHAPE = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50)
"""The tests' tiny GPT: two layers of two heads, 32 wide, a context of 16 and 50 tokens."""


def tiny_gpt(seed: int | None = 0, **options) -> GPT:
    """A tiny GPT (TINY_SHAPE, with any GPTConfig key changed by `options`), in eval mode, its weights
    drawn after torch.manual_seed(seed) (seed None: from the generator as it is)."""
    from model.config import GPTConfig
    from model.nn.gpt import GPT

    if seed is not None:
        torch.manual_seed(seed)
    return GPT(GPTConfig(**{**TINY_SHAPE, **options})).eval()


def peaky_gpt(seed: int = 0, **shape) -> GPT:
    """A random GPT whose next-token distributions are far from uniform, so greedy choices are
    clear-cut and a real difference in the computation (not rounding) is what changes them."""
    model = tiny_gpt(seed, **{"vocab_size": len(CHARS), **shape})
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(std=0.5)
    return model.eval()


def train_losses(out_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["iter"]: r["loss"] for r in records if "loss" in r}


def final_weights(out_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(out_dir / "ckpt.pt", weights_only=True)["model"]


def run_torchrun(nproc: int, overrides: dict[str, str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    args = [f"--{k}={v}" for k, v in overrides.items()]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "train.py", *args, "--quiet"]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
