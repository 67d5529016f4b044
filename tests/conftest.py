"""Shared fixtures: offline environment, a small prepared dataset, tiny configs; the skips that
helpers.py's markers ask for. Shared functions and constants are in helpers.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Set before torch is first imported (helpers imports it): OpenMP threads that spin while they wait for
# each other make every op crawl when the machine is busy with other work (a shared CI runner, the
# rest of the suite's subprocesses); waiting passively costs the tests' tiny ops next to nothing.
# Subprocesses (train.py, torchrun) inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from helpers import SHARED, gpt2_unavailable, kernels_unavailable, shakespeare_path, tiny_overrides  # noqa: E402

# Tests never touch the network when ../shared has what they need: tiktoken reads its cache from
# there, wandb stays offline.
if (SHARED / "tiktoken").is_dir():
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken"))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


def pytest_configure(config: pytest.Config) -> None:
    """One torch thread for the whole suite: its tiny models gain nothing from more, and one thread has
    no other thread to wait for when the machine is busy with other work. (Subprocesses the tests
    start set OMP_NUM_THREADS=1 for the same reason.)

    Ctrl-C reaches the programs the tests start, as it would from a terminal, also when pytest itself
    was started in the background by a script (`cmd &` without job control, or nohup), which leaves
    SIGINT ignored and so ignored in every child: the tests that interrupt a program test the program."""
    import signal

    import torch

    torch.set_num_threads(1)
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


SKIP_UNLESS = {"needs_gpt2": gpt2_unavailable, "needs_kernels": kernels_unavailable}
"""Marker name -> the check that says why a test with that marker can't run here (None: it can)."""


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker, unavailable in SKIP_UNLESS.items():
        if item.get_closest_marker(marker) is not None and (reason := unavailable()):
            pytest.skip(reason)


@pytest.fixture(scope="session")
def shakespeare_text() -> str:
    """Tiny Shakespeare (see helpers.shakespeare_path for where it comes from)."""
    from model.data.dataset import read_corpus

    return read_corpus(shakespeare_path())


@pytest.fixture
def corpus(tmp_path: Path, shakespeare_text: str) -> Path:
    """The first 50k characters of Tiny Shakespeare as a local file."""
    path = tmp_path / "corpus.txt"
    path.write_text(shakespeare_text[:50_000], encoding="utf-8")
    return path


@pytest.fixture
def char_data_dir(tmp_path: Path, corpus: Path) -> Path:
    """A data_dir holding a prepared character-level dataset named 'tiny'."""
    from model.data.dataset import prepare

    data_dir = tmp_path / "data"
    prepare("tiny", data_dir, input_path=str(corpus), tokenizer="char")
    return data_dir


@pytest.fixture(scope="module")
def trained_once(tmp_path_factory, shakespeare_text) -> Path:
    """out_dir of a two-iteration run (block_size 32) on a dataset with char_data_dir's vocabulary."""
    from model.cli import train_main
    from model.data.dataset import prepare

    root = tmp_path_factory.mktemp("trained")
    (root / "corpus.txt").write_text(shakespeare_text[:50_000], encoding="utf-8")  # as the `corpus` fixture
    prepare("tiny", root / "data", input_path=str(root / "corpus.txt"), tokenizer="char")
    values = tiny_overrides(root / "data", root / "out", max_iters=2, eval_interval=1, eval_iters=1)
    assert train_main([f"--{k}={v}" for k, v in values.items()] + ["--quiet"]) == 0
    return root / "out"


@pytest.fixture
def trained(trained_once: Path, tmp_path: Path) -> Path:
    """A fresh copy of trained_once's out_dir, free to modify."""
    import shutil

    return Path(shutil.copytree(trained_once, tmp_path / "out"))


