"""Data parallelism under torchrun (gloo on the CPU): 2 ranks x batch B train like 1 process x batch 2B."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import final_weights, run_torchrun, tiny_overrides, train_losses
from model.config import load_config
from model.data.dataset import TokenDataset
from model.training.trainer import train


def test_ranks_take_their_slice_of_one_global_batch(char_data_dir: Path):
    dataset = TokenDataset(char_data_dir / "tiny")
    x, y = dataset.get_batch("train", 8, 16, torch.Generator().manual_seed(3))
    parts = [dataset.get_batch("train", 4, 16, torch.Generator().manual_seed(3), rank, 2) for rank in (0, 1)]
    assert torch.equal(torch.cat([p[0] for p in parts]), x)
    assert torch.equal(torch.cat([p[1] for p in parts]), y)
    assert not torch.equal(parts[0][0], parts[1][0])


@pytest.mark.slow
@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp"])
def test_two_ranks_train_like_one_process_with_twice_the_batch(tmp_path: Path, char_data_dir: Path, fsdp: bool):
    common = dict(max_iters=6, log_interval=1, eval_interval=100, gradient_accumulation_steps=2, dtype="float32",
                  warmup_iters=2, lr_decay_iters=6)
    single = tmp_path / "single"
    model_config, train_config = load_config(None, tiny_overrides(char_data_dir, single, batch_size=8, **common))
    train(model_config, train_config, quiet=True)

    ranks = tmp_path / "ranks"
    done = run_torchrun(2, tiny_overrides(char_data_dir, ranks, batch_size=4, fsdp=fsdp, **common))
    assert done.returncode == 0, done.stderr[-3000:]

    expected, got = train_losses(single), train_losses(ranks)
    assert sorted(got) == list(range(1, 7))
    assert sorted(expected) == sorted(got)
    for it in expected:
        assert got[it] == pytest.approx(expected[it], abs=1e-5), it
    a, b = final_weights(single), final_weights(ranks)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-5, rtol=0, msg=name)
    # only rank 0 wrote: one metrics line per step plus the evaluations, no duplicates
    lines = [len((out / "metrics.jsonl").read_text().splitlines()) for out in (single, ranks)]
    assert lines[0] == lines[1]


@pytest.mark.slow
def test_when_a_rank_dies_the_survivor_names_it_in_one_line(tmp_path: Path, char_data_dir: Path):
    """Two ranks started as torchrun starts them (RANK, WORLD_SIZE, MASTER_ADDR/PORT); rank 1 is killed
    mid-training, and rank 0, whose next all-reduce fails, says which rank died instead of gloo's traceback."""
    import os
    import socket
    import subprocess
    import sys

    from helpers import ROOT, SUBPROCESS_ENV, run_forever, wait_for_line

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, **SUBPROCESS_ENV, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2"}
    args = run_forever(char_data_dir, tmp_path / "out", eval_interval=10**6)
    ranks = [subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)})
             for rank in (0, 1)]
    try:
        wait_for_line(ranks[0], "iter 3:", timeout=120)
        ranks[1].kill()
        ranks[1].communicate(timeout=60)
        _, stderr = ranks[0].communicate(timeout=60)
    finally:
        for proc in ranks:
            proc.kill()
            proc.wait()
    assert ranks[0].returncode == 1, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith("error: rank 1 of 2 died"), lines[0]
