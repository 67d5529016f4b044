"""IsoFLOP sweeps (python -m model.sweep): the scaling fit, bad input, the W&B grid, and tiny real sweeps
(one run straight through, one killed in its second run and resumed)."""

from __future__ import annotations

import itertools
import json
import math
import signal
from pathlib import Path

import numpy as np
import pytest

from helpers import start, tiny_overrides, wait_for_line
from model.checkpoint import load_checkpoint
from model.cli import train_main
from model.config import GPTConfig, from_dict, load_config
from model.nn.report import flops_per_token
from model.tools import sweep as sweeps
from model.tools.isoflop import Point, curve_minimum, fit_power_law, fit_scaling


# -- the fit ---------------------------------------------------------------------------------------
def chinchilla_curves(alpha: float, beta: float, budgets: list[float]) -> dict[float, list[Point]]:
    """IsoFLOP curves of Chinchilla's parametric loss L = E + A/N^alpha + B/D^beta with C = 6 N D, sampled
    at seven sizes around each budget's optimum (off centre, as a real ladder would be)."""
    E, A, B = 1.7, 400.0, 410.0
    curves = {}
    for c in budgets:
        # the true optimum of this law: N_opt = G (C/6)^(beta/(alpha+beta)), G = (alpha A / (beta B))^(1/(alpha+beta))
        g = (alpha * A / (beta * B)) ** (1 / (alpha + beta))
        n_opt = g * (c / 6) ** (beta / (alpha + beta))
        sizes = n_opt * np.exp(np.linspace(-1.2, 1.0, 7))
        curves[c] = [Point(n, c / (6 * n), E + A / n**alpha + B / (c / (6 * n)) ** beta) for n in sizes]
    return curves


@pytest.mark.parametrize("alpha, beta", [(0.34, 0.28), (0.3, 0.3), (0.25, 0.4)])
def test_the_fit_recovers_the_exponents_of_synthetic_isoflop_curves(alpha, beta):
    fit = fit_scaling(chinchilla_curves(alpha, beta, list(np.geomspace(1e18, 1e22, 5))))
    assert len(fit.minima) == 5
    assert fit.params.exponent == pytest.approx(beta / (alpha + beta), abs=0.01)
    assert fit.tokens.exponent == pytest.approx(alpha / (alpha + beta), abs=0.01)


def test_a_parabola_recovers_its_vertex_and_a_power_law_its_exponent():
    points = [Point(n, 1e6 / n, 2.0 + 0.3 * (math.log(n) - math.log(5e4)) ** 2) for n in (1e4, 3e4, 1e5, 3e5)]
    vertex = curve_minimum(1e12, points)
    assert vertex.params == pytest.approx(5e4, rel=1e-9) and vertex.loss == pytest.approx(2.0)
    assert vertex.tokens == pytest.approx(1e6 / 5e4, rel=1e-9)  # read off D = 1e6 / N
    law = fit_power_law([1e10, 1e11, 1e12], [3 * c**0.7 for c in (1e10, 1e11, 1e12)])
    assert law.exponent == pytest.approx(0.7) and law.coefficient == pytest.approx(3.0)


def test_a_curve_without_a_minimum_inside_its_sizes_or_with_two_sizes_has_no_vertex():
    beyond = [Point(n, 1.0, 2.0 + 0.1 * (math.log(n) - math.log(1e2)) ** 2) for n in (1e3, 1e4, 1e5)]
    assert curve_minimum(1.0, beyond) is None  # the best size is below the ladder: no extrapolation
    assert curve_minimum(1.0, beyond + [Point(10.0, 1.0, 2.0 + 0.1 * math.log(10) ** 2)]) is not None  # one more size brackets it
    assert curve_minimum(1.0, beyond[:2]) is None
    bent_down = [Point(n, 1.0, -(math.log(n) - 9) ** 2) for n in (1e3, 1e4, 1e5)]
    assert curve_minimum(1.0, bent_down) is None
    assert fit_scaling({1.0: bent_down}).params is None


# -- sizes, budgets and bad input ------------------------------------------------------------------
def test_the_default_ladder_scales_depth_with_width_and_heads_at_the_config_head_size():
    sizes = sweeps.default_sizes(GPTConfig(n_layer=4, n_head=4, n_embd=128))
    assert [s.spec for s in sizes] == ["2:2:64", "3:3:96", "4:4:128", "6:6:192", "8:8:256"]


def test_budgets_parse_in_flops_or_minutes():
    assert sweeps.parse_budgets("1e12, 3e12,1e13") == ([1e12, 3e12, 1e13], "flops")
    assert sweeps.parse_budgets("0.5min,2min") == ([0.5, 2.0], "minutes")


def test_minute_budgets_become_steps_from_each_sizes_measured_step_time(char_data_dir, tmp_path):
    out = tmp_path / "sweep"
    flags = ["--budgets=0.02min,0.04min", "--sizes=1:1:16,4:4:128", "--print_wandb_sweep"]
    assert sweeps.main(sweep_args(char_data_dir, out) + flags) == 0
    steps = {(r["size"], r["budget"]): r["max_iters"] for r in json.loads((out / sweeps.DEFINITION).read_text())["runs"]}
    for size in ("1:1:16", "4:4:128"):  # twice the minutes: twice the steps of the same measured step time
        assert abs(steps[(size, 0.04)] - 2 * steps[(size, 0.02)]) <= 1
    assert steps[("4:4:128", 0.02)] < steps[("1:1:16", 0.02)]  # the larger model's steps take longer


def sweep_args(data_dir: Path, out: Path, **extra) -> list[str]:
    values = tiny_overrides(data_dir, out / "unused", **extra)
    for key in ("max_iters", "eval_interval", "out_dir"):  # the sweep sets these
        values.pop(key)
    return [f"--{k}={v}" for k, v in values.items()] + [f"--out={out}", "--quiet"]


@pytest.mark.parametrize("flags, message", [
    (["--budgets=1e10,1e10"], "--budgets must be increasing"),
    (["--budgets=3e10,1e10"], "--budgets must be increasing"),
    (["--budgets=1e10,2min"], "mixes FLOPs and minutes"),
    (["--budgets=lots"], "is neither a number of FLOPs"),
    (["--budgets=1e10", "--sizes=2:3:32"], "size 2:3:32: n_embd=32 is not divisible by n_head=3"),
    (["--budgets=1e10", "--sizes=2:2"], "is not n_layer:n_head:n_embd"),
    (["--budgets=1e3,1e10", "--sizes=1:1:16,2:2:32"], "too small for one step of the smallest model (1:1:16"),
    (["--budgets=1e10", "--n_layr=3"], "unknown config key 'n_layr' (did you mean 'n_layer'?)"),
    (["--budgets=1e10", "--max_iters=5"], "--max_iters is set by the sweep"),
    ([], "--budgets is required"),
])
def test_bad_input_is_one_line_before_anything_trains(capsys, char_data_dir, tmp_path, flags, message):
    out = tmp_path / "sweep"
    assert sweeps.main(sweep_args(char_data_dir, out) + flags) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not out.exists()  # no definition written, nothing trained


def test_a_folder_holding_another_sweep_or_other_files_is_refused(capsys, char_data_dir, tmp_path):
    out = tmp_path / "sweep"
    args = sweep_args(char_data_dir, out) + ["--sizes=1:1:16,2:2:32", "--print_wandb_sweep"]
    assert sweeps.main(args + ["--budgets=1e9,3e9"]) == 0
    assert sweeps.main(args + ["--budgets=1e9,3e9"]) == 0  # the same definition: accepted
    capsys.readouterr()
    assert sweeps.main(args + ["--budgets=1e9,4e9"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {out} holds another sweep") and "budgets" in err, err
    assert sweeps.main(args + ["--budgets=1e9,3e9", "--learning_rate=0.01"]) == 1  # another config
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    other = sweep_args(char_data_dir, tmp_path / "other") + ["--budgets=1e9"]
    capsys.readouterr()
    assert sweeps.main(other) == 1
    assert "is not empty and holds no sweep.json" in capsys.readouterr().err


# -- W&B -----------------------------------------------------------------------------------------------
def test_the_wandb_grid_expands_to_exactly_the_sweeps_runs(char_data_dir, tmp_path, monkeypatch):
    """Expand the grid as W&B does (every combination of the parameters' values), build each agent's
    command with wandb's own formatting of ${args}, run it: train.py's entry gets each run's flags once."""
    import yaml
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    out = tmp_path / "sweep"
    flags = sweep_args(char_data_dir, out) + ["--budgets=1e9,3e9", "--sizes=1:1:16,2:2:32,2:2:48",
                                               "--print_wandb_sweep"]
    assert sweeps.main(flags) == 0
    definition = yaml.safe_load((out / sweeps.WANDB_SWEEP).read_text())
    assert definition["method"] == "grid" and definition["program"] == "train.py"
    assert set(definition) >= {"method", "program", "parameters", "command", "metric"}
    runs = json.loads((out / sweeps.DEFINITION).read_text())["runs"]
    assert len(runs) == 6

    trained = []
    monkeypatch.setattr(sweeps, "train_main", lambda argv: trained.append(argv) or 0)
    names, values = zip(*((k, v["values"]) for k, v in definition["parameters"].items()))
    for combination in itertools.product(*values):
        args = create_sweep_command_args({"args": {n: {"value": v} for n, v in zip(names, combination)}})
        command = [c for part in definition["command"]
                   for c in (args[part[2:-1]] if part in ("${args}",) else [part])]
        assert command[:4] == ["${env}", "${interpreter}", "-m", "model.sweep"]
        assert sweeps.main(command[4:]) == 0
    expected = [[f"--{k}={v}" for k, v in {**run["flags"], "wandb_log": "True"}.items()] for run in runs]
    assert sorted(trained) == sorted(expected)


# -- real tiny sweeps ------------------------------------------------------------------------------
TINY = dict(sizes="2:2:16,2:2:24,2:2:32", budgets="3e8,6e8", batch_size=4, block_size=16, eval_iters=2,
            log_interval=5, warmup_iters=2, lr_decay_iters=20, dtype="float32")


def tiny_sweep_flags(data_dir: Path, out: Path) -> list[str]:
    values = dict(TINY)
    sizes, budgets = values.pop("sizes"), values.pop("budgets")
    values.update(dataset="tiny", data_dir=str(data_dir), device="cpu", n_layer=2, n_head=2, n_embd=24)
    return [f"--budgets={budgets}", f"--sizes={sizes}", f"--out={out}", *(f"--{k}={v}" for k, v in values.items())]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory, shakespeare_text) -> Path:
    from model.data.dataset import prepare

    root = tmp_path_factory.mktemp("sweep-data")
    (root / "corpus.txt").write_text(shakespeare_text[:50_000], encoding="utf-8")
    prepare("tiny", root / "data", input_path=str(root / "corpus.txt"), tokenizer="char")
    return root / "data"


@pytest.fixture(scope="module")
def straight_sweep(tiny_data, tmp_path_factory) -> Path:
    """A tiny sweep (2 budgets x 3 sizes) run straight through, in a subprocess like the killed one."""
    out = tmp_path_factory.mktemp("straight") / "sweep"
    proc = start("-m", "model.sweep", *tiny_sweep_flags(tiny_data, out), "--quiet")
    stdout, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, stderr[-3000:]
    return out


def comparable(rows: list[dict]) -> list[dict]:
    """A results table without its timings (tokens/s and seconds differ between any two runs)."""
    return [{k: v for k, v in row.items() if k not in ("tokens_per_sec", "train_time")} for row in rows]


@pytest.mark.slow
def test_a_tiny_sweep_writes_every_run_the_table_the_plots_and_a_config_train_accepts(straight_sweep, tiny_data,
                                                                                     tmp_path, capsys):
    out = straight_sweep
    results = json.loads((out / sweeps.RESULTS_JSON).read_text())
    rows = results["runs"]
    assert len(rows) == 6 and results["missing"] == []
    for row in rows:
        folder = out / sweeps.RUNS / row["run"]
        assert all((folder / name).is_file() for name in ("metrics.jsonl", "config.json", "ckpt.pt", "loss.png"))
        assert 0 < row["full_val_loss"] < 10 and row["full_val_bpb"] > 0
        assert row["params"] == sum(row[f"params_{g}"] for g in ("embeddings", "attention", "mlp", "norms", "lm_head"))
    csv_lines = (out / sweeps.RESULTS_CSV).read_text().splitlines()
    assert len(csv_lines) == 7 and csv_lines[0].startswith("run,size,n_layer")
    assert all(row["run"] in (out / sweeps.RESULTS_TEXT).read_text() for row in rows)
    for plot in (sweeps.ISOFLOP_PLOT, sweeps.FRONTIER_PLOT):
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    recommended = out / sweeps.RECOMMENDED
    model_config, train_config = load_config(recommended)
    assert (f"{model_config.n_layer}:{model_config.n_head}:{model_config.n_embd}" == results["recommended"]["size"])
    assert train_config.max_iters == train_config.lr_decay_iters == results["recommended"]["max_iters"]
    flags = [f"--out_dir={tmp_path / 'recommended'}", "--max_iters=2", "--eval_iters=1", "--quiet"]
    assert train_main([str(recommended), *flags]) == 0

    from model.tools.runs import compare  # run folders are ordinary: the run comparison reads them

    table = compare([str(out / sweeps.RUNS / row["run"]) for row in rows], tmp_path / "compare.png")
    assert all(row["run"] in table for row in rows)


@pytest.mark.slow
def test_collect_builds_the_same_table_from_runs_copied_from_elsewhere(straight_sweep, tmp_path, capsys):
    import shutil

    elsewhere = tmp_path / "collected"
    elsewhere.mkdir()
    shutil.copy(straight_sweep / sweeps.DEFINITION, elsewhere)
    shutil.copytree(straight_sweep / sweeps.RUNS, elsewhere / sweeps.RUNS)
    assert sweeps.main([f"--collect={elsewhere}"]) == 0
    printed = capsys.readouterr().out
    original = json.loads((straight_sweep / sweeps.RESULTS_JSON).read_text())
    collected = json.loads((elsewhere / sweeps.RESULTS_JSON).read_text())
    assert collected["runs"] == original["runs"] and collected["fit"] == original["fit"]
    assert all(row["run"] in printed for row in original["runs"])

    def config_lines(folder: Path) -> list[str]:  # the keys and values, not the comments naming the folder
        return [line for line in (folder / sweeps.RECOMMENDED).read_text().splitlines() if not line.startswith("#")]

    assert config_lines(elsewhere) == config_lines(straight_sweep)

    merged = tmp_path / "merged"  # two sweeps of one config (here the same runs twice) in one table and fit
    assert sweeps.main([f"--collect={straight_sweep}", f"--collect={elsewhere}", f"--out={merged}"]) == 0
    rows = json.loads((merged / sweeps.RESULTS_JSON).read_text())["runs"]
    assert [row["run"] for row in rows] == [f"{folder.name}/{row['run']}" for folder in (straight_sweep, elsewhere)
                                            for row in original["runs"]]
    assert (merged / sweeps.ISOFLOP_PLOT).is_file() and (merged / sweeps.RECOMMENDED).is_file()


@pytest.mark.slow
def test_each_run_uses_its_budget_within_one_step(straight_sweep):
    """FLOPs used, counted afresh from each run's config.json and the steps it logged, against its budget."""
    from model.training.metrics import read_metrics

    for row in json.loads((straight_sweep / sweeps.RESULTS_JSON).read_text())["runs"]:
        folder = straight_sweep / sweeps.RUNS / row["run"]
        values = json.loads((folder / "config.json").read_text())
        shape, _ = from_dict(values)
        step = flops_per_token(shape) * values["batch_size"] * values["block_size"]
        steps = max(r["iter"] for r in read_metrics(folder / "metrics.jsonl"))
        assert steps == values["max_iters"] >= 1
        assert abs(steps * step - row["budget"]) <= step, row["run"]
    budgets = {row["budget"] for row in json.loads((straight_sweep / sweeps.RESULTS_JSON).read_text())["runs"]}
    assert budgets == {3e8, 6e8}


@pytest.mark.slow
def test_a_sweep_killed_in_its_second_run_resumes_to_the_same_table(straight_sweep, tiny_data, tmp_path):
    out = tmp_path / "sweep"
    flags = tiny_sweep_flags(tiny_data, out)
    proc = start("-m", "model.sweep", *flags)
    wait_for_line(proc, "sweep: run 2/6", timeout=300)
    wait_for_line(proc, "iter 5:", timeout=300)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "Traceback" not in stderr
    runs = json.loads((out / sweeps.DEFINITION).read_text())["runs"]
    second = out / sweeps.RUNS / runs[1]["name"]
    assert 5 <= load_checkpoint(second / "ckpt.pt")["iter_num"] < runs[1]["max_iters"]  # stopped mid-run
    assert not (out / sweeps.RUNS / runs[2]["name"]).exists()

    resumed = start("-m", "model.sweep", *flags, "--quiet")
    stdout, stderr = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, stderr[-3000:]
    assert "holds 1 finished run(s) of 6; resuming" in stdout
    straight = json.loads((straight_sweep / sweeps.RESULTS_JSON).read_text())
    again = json.loads((out / sweeps.RESULTS_JSON).read_text())
    assert comparable(again["runs"]) == comparable(straight["runs"])  # losses equal to the last bit
    assert again["fit"] == straight["fit"]
