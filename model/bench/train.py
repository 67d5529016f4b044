"""Training speed on this machine: peak matmul throughput, tokens/s, MFU and time to a target loss.

    python -m model.bench train configs/shakespeare_char_cpu.toml --target_loss=1.90
    python -m model.bench train configs/shakespeare_char.toml --compare=--dtype=float32 \\
        --compare=--dtype=bfloat16 --max_iters=200

The first form trains the config once and reports steady-state tokens/s, model FLOPs utilisation
(MFU) against the matmul peak measured in the same run, and the training wall time (compilation,
evaluations and checkpoints included) at which the full-validation loss first reaches the target. The
second trains the same config under each --compare setting in turn and puts their tokens/s side by
side, with both training-loss curves in one plot. Results go to RESULT_DIR/train.json and a PNG.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import shlex
import statistics
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from model.cli import OneLineArgumentParser, guarded
from model.config import TrainConfig, load_config, split_config_args
from model.device import measure_peak_flops, resolve_device, resolve_dtype
from model.errors import TinyGPTError
from model.files import write_json
from model.nn.report import count_parameters
from model.training.metrics import METRICS, read_metrics

BENCH_FLAGS = ["--log_interval=1"]
"""Every iteration's loss and speed go to metrics.jsonl (they are what the benchmark measures)."""


def steady_tokens_per_sec(records: list[dict[str, Any]]) -> float:
    """Median tokens/s over the iterations after the first 10% (at least 3), which pay for warm-up
    and compilation."""
    speeds = [r["tokens_per_sec"] for r in records if "tokens_per_sec" in r]
    if not speeds:
        raise TinyGPTError("no iterations were timed; raise max_iters")
    skip = max(3, len(speeds) // 10) if len(speeds) > 6 else 0
    return statistics.median(speeds[skip:])


def time_to_loss(full_val: list[dict[str, float]], target: float) -> tuple[float | None, int | None]:
    """Training wall time and iteration of the first full-validation loss <= target (None if never)."""
    for point in full_val:
        if point["loss"] <= target:
            return point["train_time"], point["iter"]
    return None, None


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def dtype_name(train_config: TrainConfig, device: str) -> str:
    """The precision a run trains in, 'auto' resolved: 'float32', 'bfloat16' or 'float16'."""
    return str(resolve_dtype(train_config.dtype, device)).removeprefix("torch.")


def measured_peak(peaks: dict[str, float], device: str, dtype: str, matmul_size: int) -> float:
    """The peak matmul FLOP/s of `device` in `dtype`, measured on first use and kept in `peaks`."""
    if dtype not in peaks:
        peaks[dtype] = measure_peak_flops(device, getattr(torch, dtype), matmul_size)
    return peaks[dtype]


def train_once(config_path: str | None, overrides: list[str], setting: list[str], out_dir: Path,
               peaks: dict[str, float], matmul_size: int) -> dict[str, Any]:
    """Train once in out_dir (fresh metrics) and summarise speed, MFU and losses from its metrics.jsonl.

    The trainer is given the peak FLOP/s measured here (one per dtype, measured on first use), so the
    MFU in its metrics.jsonl and the one reported here are the same number.
    """
    from model.training.trainer import Trainer

    model_config, train_config = load_config(config_path, overrides + setting + BENCH_FLAGS +
                                             [f"--out_dir={out_dir}", "--overwrite=True"])  # the previous setting's run
    device = resolve_device(train_config.device)
    dtype = dtype_name(train_config, device)
    peak = measured_peak(peaks, device, dtype, matmul_size)
    trainer = Trainer(model_config, dataclasses.replace(train_config, peak_flops=peak), quiet=True)
    summary = trainer.run()
    records = read_metrics(out_dir / METRICS)
    tokens_per_sec = steady_tokens_per_sec(records)
    return {
        "setting": " ".join(setting),
        "dtype": dtype,
        "iterations": summary["iter_num"],
        "tokens_per_iter": train_config.gradient_accumulation_steps * train_config.batch_size * model_config.block_size,
        "tokens_per_sec": tokens_per_sec,
        "flops_per_token": trainer.mfu.flops_per_token,
        "mfu": trainer.mfu(tokens_per_sec),
        "parameters": count_parameters(trainer.model_config),
        "final_full_val_loss": summary["full_val_loss"],
        "train_time": summary["train_time"],
        "full_val": [{"iter": r["iter"], "train_time": r["train_time"], "loss": r["full_val_loss"]}
                     for r in records if "full_val_loss" in r],
        "train_loss": [(r["iter"], r["loss"]) for r in records if "loss" in r],
        "estimated_val": estimated_val_curve(records),
    }


def estimated_val_curve(records: list[dict[str, Any]]) -> list[dict[str, float]]:
    """The periodic (random-batch) val estimates, on the training clock. The logger's clock starts a
    moment before training; records that carry both clocks give the offset."""
    both = [r for r in records if "train_time" in r]
    offset = both[0]["wall_time"] - both[0]["train_time"] if both else 0.0
    return [{"iter": r["iter"], "train_time": r["wall_time"] - offset, "loss": r["val_loss"]}
            for r in records if "val_loss" in r]


def plot_time_to_loss(run: dict[str, Any], target: float, path: Path) -> None:
    from matplotlib.figure import Figure

    from model.training.plots import save_figure

    fig = Figure(figsize=(6, 4), dpi=120)
    ax = fig.subplots()
    for points, style, label in ((run["full_val"], "o-", "full-validation loss"),
                                 (run["estimated_val"], ".:", "val estimate (random batches)")):
        ax.plot([p["train_time"] for p in points], [p["loss"] for p in points], style, label=label)
    ax.axhline(target, color="grey", linestyle="--", label=f"target {target}")
    ax.set_xlabel("training wall time (s), compile and evaluations included")
    ax.set_ylabel("loss")
    ax.set_title(f"{run['parameters'] / 1e6:.2f}M params, {run['tokens_per_sec']:,.0f} tok/s, {run['dtype']}")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def plot_compare(runs: list[dict[str, Any]], path: Path) -> None:
    from matplotlib.figure import Figure

    from model.training.plots import save_figure

    fig = Figure(figsize=(6, 4), dpi=120)
    ax = fig.subplots()
    for run in runs:
        iters, losses = zip(*run["train_loss"])
        label = f"{run['setting'] or 'defaults'}: {run['tokens_per_sec']:,.0f} tok/s"
        ax.plot(iters, losses, label=label, alpha=0.8)
    ax.set_xlabel("iteration")
    ax.set_ylabel("training loss")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def curve_gap(a: list[tuple[int, float]], b: list[tuple[int, float]], window: int = 20) -> dict[str, float]:
    """How far apart two loss curves are, against how noisy each is: mean |a - b| of the per-iteration
    losses after the first `window` iterations, and each curve's mean |loss - its running mean|."""
    la, lb = [x for _, x in a][window:], [x for _, x in b][window:]
    n = min(len(la), len(lb))
    if n == 0:
        return {}

    def noise(xs: list[float]) -> float:
        smooth = [statistics.fmean(xs[max(0, i - window) : i + 1]) for i in range(len(xs))]
        return statistics.fmean(abs(x - s) for x, s in zip(xs, smooth))

    return {
        "mean_abs_gap": statistics.fmean(abs(x - y) for x, y in zip(la[:n], lb[:n])),
        "noise_a": noise(la[:n]),
        "noise_b": noise(lb[:n]),
        "final_gap": statistics.fmean(la[n - window :]) - statistics.fmean(lb[n - window :]),
    }


@guarded
def main(argv: list[str] | None = None) -> int:
    parser = OneLineArgumentParser(
        prog="python -m model.bench train",
        usage="%(prog)s [CONFIG.toml] [--key=value ...] [options]",
        description="Measure peak matmul FLOP/s, then train CONFIG (default: built-in defaults) and report "
        "tokens/s, MFU and time to a loss. Other --key=value flags are config overrides.",
    )
    parser.add_argument("--target_loss", type=float, default=1.90, help="full-validation loss to time")
    parser.add_argument("--compare", action="append", default=None, metavar="FLAGS",
                        help="a setting ('--dtype=bfloat16 --batch_size=32'); give two or more to compare")
    parser.add_argument("--result_dir", default="out-bench-train", help="JSON, plots and run folders go here")
    parser.add_argument("--matmul_size", type=int, default=1024, help="matrix size for the peak FLOP/s probe")
    parser.add_argument("--reference_tokens_per_sec", type=float, default=None,
                        help="also show each setting's speed against this (e.g. nanoGPT's figure from BENCHMARKS.md)")
    args, rest = parser.parse_known_args(argv)
    config_path, overrides, _ = split_config_args(rest)
    if args.compare is not None and len(args.compare) < 2:
        raise TinyGPTError("--compare needs at least two settings, e.g. --compare=--dtype=float32 --compare=--dtype=bfloat16")
    _, train_config = load_config(config_path, overrides)  # fail on a bad config before the slow part
    result_dir = Path(args.result_dir)
    result_dir.mkdir(parents=True, exist_ok=True)
    from model.device import keep_freed_memory

    keep_freed_memory()  # as train.py does

    device = resolve_device(train_config.device)
    peaks: dict[str, float] = {}
    for dtype in ("float32", "bfloat16"):
        measured_peak(peaks, device, dtype, args.matmul_size)
    print(f"peak matmul ({args.matmul_size}^3): fp32 {peaks['float32'] / 1e9:,.0f} GFLOP/s, "
          f"bf16 {peaks['bfloat16'] / 1e9:,.0f} GFLOP/s", flush=True)
    result: dict[str, Any] = {"machine": machine(), "config": config_path, "overrides": overrides,
                              "peak_flops": peaks, "target_loss": args.target_loss}

    settings = [shlex.split(s) for s in args.compare] if args.compare else [[]]
    runs = []
    for i, setting in enumerate(settings):
        run = train_once(config_path, overrides, setting, result_dir / f"run{i}", peaks, args.matmul_size)
        run["time_to_target"], run["iter_at_target"] = time_to_loss(run["full_val"], args.target_loss)
        runs.append(run)
        reached = (f"full-val <= {args.target_loss} at {run['time_to_target']:.1f}s (iter {run['iter_at_target']})"
                   if run["time_to_target"] is not None else f"full-val never reached {args.target_loss}")
        print(f"{run['setting'] or 'run'}: {run['tokens_per_sec']:,.0f} tok/s, MFU {run['mfu']:.1%} ({run['dtype']}), "
              f"trained {run['iterations']} iters in {run['train_time']:.1f}s, final full-val {run['final_full_val_loss']:.4f}, "
              f"{reached}", flush=True)
    result["runs"] = runs

    if args.compare:
        base = runs[0]["tokens_per_sec"]
        reference = args.reference_tokens_per_sec
        for run in runs:
            versus = f", x{run['tokens_per_sec'] / reference:.2f} vs reference ({reference:,.0f} tok/s)" if reference else ""
            print(f"  {run['setting']:40s} {run['tokens_per_sec']:>10,.0f} tok/s  x{run['tokens_per_sec'] / base:.2f} vs first{versus}")
        result["curve_gap"] = curve_gap(runs[0]["train_loss"], runs[-1]["train_loss"])
        print("loss curves, first vs last: " + ", ".join(f"{k} {v:.4f}" for k, v in result["curve_gap"].items()))
        plot_compare(runs, result_dir / "train_compare.png")
        print(f"plot: {result_dir / 'train_compare.png'}")
    else:
        plot_time_to_loss(runs[0], args.target_loss, result_dir / "train_time_to_loss.png")
        print(f"plot: {result_dir / 'train_time_to_loss.png'}")
    write_json(result_dir / "train.json", result)
    print(f"result: {result_dir / 'train.json'}")
    return 0
