"""The training benchmark: its summaries of a run, its MFU (the trainer's), and end-to-end runs on a tiny model."""

from __future__ import annotations

import json

import pytest

from model.bench import train as bench
from model.config import from_dict
from model.nn.report import flops_per_token
from model.training.metrics import read_metrics
from helpers import flags, tiny_overrides


def test_time_to_loss_is_the_first_crossing():
    points = [{"iter": 10, "train_time": 1.0, "loss": 2.5}, {"iter": 20, "train_time": 2.0, "loss": 1.85},
              {"iter": 30, "train_time": 3.0, "loss": 1.95}, {"iter": 40, "train_time": 4.0, "loss": 1.8}]
    assert bench.time_to_loss(points, 1.90) == (2.0, 20)
    assert bench.time_to_loss(points, 1.5) == (None, None)


def test_steady_tokens_per_sec_skips_warmup():
    records = [{"tokens_per_sec": 10.0}] * 5 + [{"tokens_per_sec": 100.0}] * 45
    assert bench.steady_tokens_per_sec(records) == 100.0


def test_curve_gap():
    a = [(i, 3.0 - 0.01 * i + (0.05 if i % 2 else -0.05)) for i in range(100)]
    same = bench.curve_gap(a, a)
    assert same["mean_abs_gap"] == 0 and same["final_gap"] == 0 and same["noise_a"] > 0.03
    shifted = bench.curve_gap(a, [(i, x - 0.2) for i, x in a])
    assert shifted["mean_abs_gap"] == pytest.approx(0.2) and shifted["final_gap"] == pytest.approx(0.2)


def test_bench_reports_time_to_target(char_data_dir, tmp_path, capsys):
    result_dir = tmp_path / "bench"
    args = flags(tiny_overrides(char_data_dir, tmp_path / "unused", full_eval_interval=10))
    assert bench.main(args + ["--target_loss=3.9", f"--result_dir={result_dir}", "--matmul_size=64"]) == 0
    result = json.loads((result_dir / "train.json").read_text())
    run = result["runs"][0]
    assert set(result["peak_flops"]) == {"float32", "bfloat16"} and min(result["peak_flops"].values()) > 0
    assert [p["iter"] for p in run["full_val"]] == [10, 20]
    first = next(p for p in run["full_val"] if p["loss"] <= 3.9)
    assert (run["iter_at_target"], run["time_to_target"]) == (first["iter"], first["train_time"])
    assert run["tokens_per_sec"] > 0 and run["mfu"] > 0  # (a tiny, loaded probe can read a peak below a run's speed)
    # the MFU the trainer logged and the benchmark's: the same FLOPs per token (the report's) and peak
    model_config, _ = from_dict(json.loads((result_dir / "run0" / "config.json").read_text()))
    assert run["flops_per_token"] == flops_per_token(model_config)
    peak = result["peak_flops"][run["dtype"]]
    assert run["mfu"] == pytest.approx(run["tokens_per_sec"] * run["flops_per_token"] / peak)
    logged = [r for r in read_metrics(result_dir / "run0" / "metrics.jsonl") if "mfu" in r]
    assert logged and all(r["mfu"] == pytest.approx(r["tokens_per_sec"] * run["flops_per_token"] / peak)
                          for r in logged)
    assert (result_dir / "train_time_to_loss.png").stat().st_size > 0
    assert "MFU" in capsys.readouterr().out


def test_bench_compare_mode(char_data_dir, tmp_path, capsys):
    result_dir = tmp_path / "bench"
    args = flags(tiny_overrides(char_data_dir, tmp_path / "unused", max_iters=30))
    code = bench.main(args + ["--compare=--dtype=float32", "--compare=--dtype=bfloat16 --batch_size=4",
                              f"--result_dir={result_dir}", "--matmul_size=64", "--reference_tokens_per_sec=100"])
    assert code == 0
    assert "vs reference (100 tok/s)" in capsys.readouterr().out
    result = json.loads((result_dir / "train.json").read_text())
    assert [r["dtype"] for r in result["runs"]] == ["float32", "bfloat16"]
    assert [r["tokens_per_iter"] for r in result["runs"]] == [8 * 32, 4 * 32]
    assert len(result["runs"][1]["train_loss"]) == 30 and "mean_abs_gap" in result["curve_gap"]
    assert (result_dir / "train_compare.png").stat().st_size > 0


@pytest.mark.parametrize("argv, message", [
    (["--compare=--dtype=float32"], "at least two"),
    (["--n_layers=3"], "unknown config key"),
])
def test_bench_bad_input_is_one_line(argv, message, tmp_path, capsys):
    assert bench.main(argv + [f"--result_dir={tmp_path}"]) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
