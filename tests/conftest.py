"""Shared fixtures: offline environment, a small prepared dataset, tiny configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
SHAKESPEARE = SHARED / "data" / "tinyshakespeare.txt"

# Tests never touch the network: tiktoken reads its cache from ../shared, wandb stays offline.
if (SHARED / "tiktoken").is_dir():
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken"))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
if SHAKESPEARE.is_file():
    os.environ.setdefault("TINYSHAKESPEARE_PATH", str(SHAKESPEARE))


@pytest.fixture(scope="session")
def shakespeare_text() -> str:
    if not SHAKESPEARE.is_file():
        pytest.skip("../shared/data/tinyshakespeare.txt is not available")
    return SHAKESPEARE.read_text(encoding="utf-8")


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


def tiny_overrides(data_dir: Path, out_dir: Path, **extra) -> dict:
    """Config values for a run that takes a second or two on a CPU."""
    values = dict(
        dataset="tiny", data_dir=str(data_dir), out_dir=str(out_dir), device="cpu",
        n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=8,
        max_iters=20, eval_interval=10, eval_iters=2, log_interval=5, warmup_iters=2, lr_decay_iters=20,
    )
    values.update(extra)
    return {k: str(v) for k, v in values.items()}


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


@pytest.fixture
def one_thread():
    """Run a test with one torch thread. Tiny models gain nothing from more, and OpenMP threads that
    spin-wait for each other make every op crawl (40x seen) when the machine is busy with other work."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
