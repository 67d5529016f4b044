"""Checks that need an NVIDIA GPU; `python -m model.bench gpu` runs them (skipped without one).

They make their own data (no ../shared, no network), so they run from a bare source tree."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")]


@pytest.fixture
def gpu_data_dir(tmp_path: Path) -> Path:
    from model.data.dataset import prepare

    words = ["the", "king", "shall", "speak", "of", "love", "and", "war", "tomorrow", "night"]
    rng = random.Random(0)
    text = "\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(3000))
    (tmp_path / "corpus.txt").write_text(text)
    prepare("words", tmp_path / "data", input_path=str(tmp_path / "corpus.txt"), tokenizer="char")
    return tmp_path / "data"


def overrides(data_dir: Path, out_dir: Path, **extra) -> list[str]:
    values = dict(dataset="words", data_dir=str(data_dir), out_dir=str(out_dir), device="cuda", n_layer=2, n_head=2,
                  n_embd=64, block_size=64, batch_size=8, max_iters=10, eval_interval=5, eval_iters=2,
                  log_interval=5, warmup_iters=2, lr_decay_iters=10, dropout=0.1, compile=False)
    values.update(extra)
    return [f"--{k}={v}" for k, v in values.items()]


def test_auto_picks_bf16_where_native_else_float16():
    from model.device import resolve_dtype

    native = torch.cuda.is_bf16_supported(including_emulation=False)
    assert resolve_dtype("auto", "cuda") == (torch.bfloat16 if native else torch.float16)


@pytest.mark.parametrize("compile", [False, True])
def test_training_steps_never_wait_for_the_gpu(gpu_data_dir, tmp_path, compile):
    from model.config import load_config
    from model.training.trainer import Trainer

    trainer = Trainer(*load_config(None, overrides(gpu_data_dir, tmp_path / "out", compile=compile,
                                                   gradient_accumulation_steps=2)), quiet=True)
    for _ in range(3):  # compilation and first-call allocations may sync
        trainer.train_step(1e-3)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any synchronizing CUDA call raises
    try:
        for _ in range(3):
            loss, norm = trainer.train_step(1e-3)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert loss.is_cuda and math.isfinite(float(loss)) and float(norm) > 0


def test_attention_runs_on_a_fused_kernel():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from model.config import GPTConfig
    from model.nn.gpt import GPT

    model = GPT(GPTConfig(n_layer=2, n_head=4, n_embd=128, block_size=128, vocab_size=100)).cuda()
    x = torch.randint(0, 100, (4, 128), device="cuda")
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]), \
            torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16):
        _, loss = model(x, x)  # raises if the call can't take a fused kernel (e.g. an explicit mask)
        loss.backward()
    assert torch.isfinite(loss)


def test_resume_on_cuda_repeats_the_uninterrupted_run_exactly(gpu_data_dir, tmp_path):
    """Dropout draws from the GPU's generator: its state per rank is in the checkpoint."""
    from model.cli import train_main

    def losses(out: Path) -> dict[int, float]:
        records = map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
        return {r["iter"]: r["loss"] for r in records if "loss" in r}

    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert train_main(overrides(gpu_data_dir, whole, log_interval=1) + ["--quiet"]) == 0
    assert train_main(overrides(gpu_data_dir, parts, log_interval=1, max_iters=5) + ["--quiet"]) == 0
    assert train_main(overrides(gpu_data_dir, parts, log_interval=1, init_from="resume") + ["--quiet"]) == 0
    # the same dropout masks; only GPU kernels' float summation order (atomics) may differ in the last bits
    assert losses(parts) == pytest.approx(losses(whole), rel=1e-4)
    assert "cuda" in torch.load(parts / "ckpt.pt", weights_only=True)["rng"][0]


def test_sampling_on_cuda_loads_only_the_weights_there(gpu_data_dir, tmp_path, capsys):
    from model.checkpoint import load_model
    from model.cli import sample_main, train_main

    out = tmp_path / "out"
    assert train_main(overrides(gpu_data_dir, out) + ["--quiet"]) == 0
    model, _, ckpt = load_model(out, "cuda")
    assert all(p.is_cuda for p in model.parameters())
    moments = [t for state in ckpt["optimizer"]["state"].values() for t in state.values() if isinstance(t, torch.Tensor)]
    assert moments and not any(t.is_cuda for t in moments)
    assert sample_main(["--out_dir", str(out), "--num_samples=2", "--max_new_tokens=20", "--quiet"]) == 0
    assert len(capsys.readouterr().out) > 20
