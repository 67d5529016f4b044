"""One command to measure a GPU: our training and decoding next to transformers' GPT-2, plus the GPU tests.

    python -m model.bench gpu --out=gpu-results              # on a machine with an NVIDIA GPU
    python -m model.bench gpu --device=cpu --tiny --out=DIR  # the same code on a tiny config (CI)

In one run, on one GPU:
  1. the GPU-marked tests (tests/test_on_gpu.py: no host sync in a training step, fused attention,
     bf16/compile training, sampling and exact resume on CUDA), when pytest is installed;
  2. training GPT-2 124M (block 1024, the precision dtype=auto picks, torch.compile) on random tokens:
     our Trainer's own training step (prefetched batches, the NaN guard, a vocabulary padded to 50,304)
     against transformers' GPT2LMHeadModel (SDPA attention, the same precision, torch.compile, fused
     AdamW, gradient clipping), tokens/s and MFU against the GPU's datasheet peak;
  3. greedy decoding tokens/s at batch 1 and 8, our generate() against transformers' generate(), both
     holding the same random weights.
Everything is printed side by side and written to OUT/gpu.json. Without a GPU (and without
--device=cpu) it says so and exits 0. Nothing here needs the network, wandb or datasets.
"""

from __future__ import annotations

import importlib.util
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Shape:
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    batch_size: int
    steps: int
    """Timed training steps (after `warmup`, which pays for compilation)."""
    warmup: int
    new_tokens: int
    """Tokens decoded per timed generation."""


GPT2_124M = Shape(n_layer=12, n_head=12, n_embd=768, block_size=1024, batch_size=8, steps=20, warmup=5, new_tokens=256)
TINY = Shape(n_layer=2, n_head=4, n_embd=64, block_size=64, batch_size=4, steps=4, warmup=2, new_tokens=16)
GPT2_VOCAB = 50257
PROMPT_TOKENS = 16
DECODE_BATCHES = (1, 8)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def random_token_dataset(folder: Path, n_tokens: int, seed: int = 0) -> None:
    """A prepared dataset of uniformly random GPT-2 token ids (the speed of a step doesn't depend on
    which tokens it sees), with GPT-2's tokenizer in meta.json, as data/prepare.py would write it."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_tokens), ("val", n_tokens // 8)):
        rng.integers(0, GPT2_VOCAB, n, dtype=np.uint16).tofile(folder / f"{split}.bin")
    meta = {"vocab_size": GPT2_VOCAB, "dtype": "uint16", "train_tokens": n_tokens, "val_tokens": n_tokens // 8,
            "tokenizer": {"kind": "tiktoken", "name": "gpt2", "vocab_size": GPT2_VOCAB}}
    (folder / "meta.json").write_text(json.dumps(meta))


def time_steps(step, device: str, warmup: int, steps: int) -> float:
    """Seconds per step, after warm-up steps (compilation, allocator); one sync at each end."""
    for _ in range(warmup):
        step()
    synchronize(device)
    t = time.perf_counter()
    for _ in range(steps):
        last = step()
    float(last)  # the last step's loss: everything queued has run
    synchronize(device)
    return (time.perf_counter() - t) / steps


def train_ours(shape: Shape, device: str, work: Path) -> dict[str, Any]:
    from model.config import load_config
    from model.training.trainer import Trainer

    random_token_dataset(work / "data" / "random", (shape.steps + shape.warmup + 2) * shape.batch_size * (shape.block_size + 1))
    values = dict(dataset="random", data_dir=str(work / "data"), out_dir=str(work / "out"), device=device,
                  n_layer=shape.n_layer, n_head=shape.n_head, n_embd=shape.n_embd, block_size=shape.block_size,
                  batch_size=shape.batch_size, dropout=0.0, learning_rate=6e-4, weight_decay=0.1, beta2=0.95,
                  grad_clip=1.0)
    trainer = Trainer(*load_config(None, {k: str(v) for k, v in values.items()}), quiet=True)
    seconds = time_steps(lambda: trainer.train_step(6e-4)[0], device, shape.warmup, shape.steps)
    tokens_per_sec = shape.batch_size * shape.block_size / seconds
    return {"name": "tinygpt", "dtype": str(trainer.dtype).split(".")[-1], "compile": trainer.compile,
            "vocab_rows": trainer.model_config.vocab_size, "tokens_per_sec": tokens_per_sec,
            "seconds_per_step": seconds, "flops_per_token": trainer.mfu.flops_per_token,
            "peak_flops": trainer.mfu.peak_flops, "mfu": trainer.mfu(tokens_per_sec)}


def hf_gpt2(shape: Shape):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=shape.n_layer, n_head=shape.n_head, n_embd=shape.n_embd, n_positions=shape.block_size,
                        vocab_size=GPT2_VOCAB, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        attn_implementation="sdpa")
    return GPT2LMHeadModel(config)


def train_reference(shape: Shape, device: str, dtype: torch.dtype, compile: bool, flops_per_token: float,
                    peak_flops: float | None) -> dict[str, Any]:
    """transformers' GPT-2 trained the way its users would on this GPU, in the same precision."""
    from model.device import autocast
    from model.training.trainer import loss_scaler

    torch.manual_seed(0)
    model = hf_gpt2(shape).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1,
                                  fused=device.split(":")[0] in ("cuda", "cpu"))
    scaler = loss_scaler(device, dtype)
    forward = torch.compile(model) if compile else model
    x = torch.randint(0, GPT2_VOCAB, (shape.batch_size, shape.block_size), device=device)

    def step() -> torch.Tensor:
        with autocast(device, dtype):
            loss = forward(input_ids=x, labels=x).loss
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    seconds = time_steps(step, device, shape.warmup, shape.steps)
    tokens_per_sec = shape.batch_size * shape.block_size / seconds
    return {"name": "transformers GPT2LMHeadModel (sdpa)", "dtype": str(dtype).split(".")[-1], "compile": compile,
            "vocab_rows": GPT2_VOCAB, "tokens_per_sec": tokens_per_sec, "seconds_per_step": seconds,
            "flops_per_token": flops_per_token, "peak_flops": peak_flops,
            "mfu": tokens_per_sec * flops_per_token / peak_flops if peak_flops else None}


def decode(shape: Shape, device: str, dtype: torch.dtype) -> list[dict[str, Any]]:
    """Greedy decoding tokens/s, ours and transformers', the same random weights, best of 3."""
    from model.huggingface import gpt_from_hf
    from model.sampling.generate import generate, prepare_for_sampling

    torch.manual_seed(0)
    theirs = hf_gpt2(shape).eval()
    ours = prepare_for_sampling(gpt_from_hf(theirs.config.to_dict(), theirs.state_dict()).to(device), dtype)
    theirs = theirs.to(device=device, dtype=dtype)
    rows = []
    for batch in DECODE_BATCHES:
        prompt = torch.randint(0, GPT2_VOCAB, (batch, PROMPT_TOKENS), device=device)

        def run_ours():
            return torch.stack(list(generate(ours, prompt, shape.new_tokens, temperature=0.0)), dim=1)

        def run_theirs():
            with torch.inference_mode():
                out = theirs.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=shape.new_tokens,
                                      min_new_tokens=shape.new_tokens, do_sample=False, pad_token_id=0)
            return out[:, PROMPT_TOKENS:]

        best = {"tinygpt": float("inf"), "transformers": float("inf")}
        tokens = {}
        for _ in range(4):  # the first round warms up (kernels, caches) and is not counted
            for name, fn in (("tinygpt", run_ours), ("transformers", run_theirs)):
                synchronize(device)
                t = time.perf_counter()
                tokens[name] = fn()
                synchronize(device)
                if _ > 0:
                    best[name] = min(best[name], time.perf_counter() - t)
        same = float((tokens["tinygpt"].cpu() == tokens["transformers"].cpu()).float().mean())
        for name, seconds in best.items():
            rows.append({"name": name, "batch": batch, "new_tokens": shape.new_tokens, "dtype": str(dtype).split(".")[-1],
                         "tokens_per_sec": batch * shape.new_tokens / seconds, "same_greedy_tokens": same})
    return rows


def gpu_tests(device: str) -> dict[str, Any]:
    """tests/test_on_gpu.py in a subprocess (its own CUDA context, and a failure there is reported, not fatal)."""
    if not device.startswith("cuda"):
        return {"status": "skipped: they need a GPU"}
    if not (ROOT / "tests" / "test_on_gpu.py").is_file():
        return {"status": "skipped: tests/ is not here (run from the source tree)"}
    if importlib.util.find_spec("pytest") is None:
        return {"status": "skipped: pytest is not installed"}
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                           "tests/test_on_gpu.py"], cwd=ROOT, capture_output=True, text=True)
    summary = (done.stdout.strip().splitlines() or [""])[-1]
    return {"status": "passed" if done.returncode == 0 else "FAILED", "summary": summary,
            "seconds": time.perf_counter() - t, "output_tail": done.stdout[-4000:] if done.returncode else ""}


def describe_device(device: str) -> str:
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        return f"{props.name}, {props.total_memory / 2**30:.0f} GiB"
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    from model.cli import OneLineArgumentParser
    from model.device import resolve_dtype

    parser = OneLineArgumentParser(prog="python -m model.bench gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="default: cuda when there is a GPU")
    parser.add_argument("--tiny", action="store_true", help="a tiny config instead of GPT-2 124M (for CI)")
    parser.add_argument("--out", default=None, help="folder for gpu.json")
    parser.add_argument("--batch_size", type=int, default=None, help="training batch (default 8 at block 1024)")
    parser.add_argument("--skip_tests", action="store_true", help="don't run the GPU-marked tests")
    args = parser.parse_args(argv)
    device = args.device
    if device is None:
        if not torch.cuda.is_available():
            print("no NVIDIA GPU here (torch.cuda.is_available() is False): nothing to measure. "
                  "`python -m model.bench gpu --device=cpu --tiny` runs the same code on a tiny config.")
            return 0
        device = "cuda"
    if device.startswith("cuda") and not torch.cuda.is_available():
        print(f"no NVIDIA GPU here: --device={device} can't run; nothing measured.")
        return 0
    shape = TINY if args.tiny else GPT2_124M
    if args.batch_size:
        shape = Shape(**{**shape.__dict__, "batch_size": args.batch_size})
    dtype = resolve_dtype("auto", device)
    import transformers

    started = time.perf_counter()
    results: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": describe_device(device),
        "torch": torch.__version__, "transformers": transformers.__version__, "shape": shape.__dict__,
    }
    print(f"{results['device']}; torch {torch.__version__}, transformers {transformers.__version__}; "
          f"{'tiny config' if args.tiny else 'GPT-2 124M'}, block {shape.block_size}, batch {shape.batch_size}")
    results["tests"] = {"status": "skipped: --skip_tests"} if args.skip_tests else gpu_tests(device)
    print(f"GPU tests: {results['tests']['status']} {results['tests'].get('summary', '')}")
    if results["tests"].get("output_tail"):
        print(results["tests"]["output_tail"])

    work = Path(tempfile.mkdtemp(prefix="tinygpt-bench-gpu-"))
    try:
        ours = train_ours(shape, device, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    reference = train_reference(shape, device, dtype, ours["compile"], ours["flops_per_token"], ours["peak_flops"])
    results["training"] = [ours, reference]
    print(f"\ntraining, {shape.steps} steps after {shape.warmup} warm-up, peak "
          f"{fmt(ours['peak_flops'] and ours['peak_flops'] / 1e12, '.1f')} TFLOP/s:")
    print(f"{'':<38}{'dtype':>9}{'compile':>9}{'vocab rows':>12}{'tokens/s':>12}{'MFU':>8}")
    for row in results["training"]:
        print(f"{row['name']:<38}{row['dtype']:>9}{str(row['compile']):>9}{row['vocab_rows']:>12,}"
              f"{row['tokens_per_sec']:>12,.0f}{fmt(row['mfu'] and 100 * row['mfu'], '.1f'):>7}%")
    print(f"tinygpt / transformers: {ours['tokens_per_sec'] / reference['tokens_per_sec']:.2f}x")

    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    results["decoding"] = decode(shape, device, dtype)
    print(f"\ngreedy decoding, {PROMPT_TOKENS}-token prompt, {shape.new_tokens} new tokens, best of 3:")
    print(f"{'':<16}{'batch':>6}{'tokens/s':>12}{'same tokens':>13}")
    for row in results["decoding"]:
        print(f"{row['name']:<16}{row['batch']:>6}{row['tokens_per_sec']:>12,.0f}{row['same_greedy_tokens']:>12.0%}")
    results["seconds"] = time.perf_counter() - started
    print(f"\n{results['seconds']:.0f}s in all")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        from model.files import atomic_write_bytes

        atomic_write_bytes(out / "gpu.json", (json.dumps(results, indent=2) + "\n").encode())
        print(f"wrote {out / 'gpu.json'}")
    return 0 if results["tests"]["status"] != "FAILED" else 1
