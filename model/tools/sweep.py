"""IsoFLOP sweeps: which model size is best for a corpus and a compute budget, measured on this machine.

    python -m model.sweep CONFIG --budgets=B1,B2,... [--sizes=L:H:D,...] [--out=DIR] [--key=value ...]

For every budget (training FLOPs, counted with the parameter report's FLOPs per token, or wall-clock
minutes written `5min`) every size of a ladder is trained for exactly that budget: max_iters is the
budget over one step's FLOPs (so the FLOPs used are within half a step of it), and the learning-rate
schedule is stretched to that length. Each run is an ordinary run folder, DIR/runs/NAME, trained by
train.py's own entry point in this process.

DIR/sweep.json holds the sweep's definition and its runs; a sweep started again with the same
definition keeps the finished runs and resumes the interrupted one from its checkpoint
(init_from=resume, which continues exactly); a folder holding another sweep is refused. At the end
DIR gets results.json, results.csv and results.txt (one row per run), isoflop.png and frontier.png,
the Chinchilla approach-2 fit (model/tools/isoflop.py) and recommended.toml, the size the fit
recommends for --target_budget, ready for train.py.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import re
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.cli import OneLineArgumentParser, guarded, train_main
from model.config import GPTConfig, TrainConfig, from_dict, load_config, parse_overrides, to_dict
from model.errors import ConfigError, TinyGPTError
from model.files import atomic_write_bytes, make_folder, read_json, write_json
from model.nn.report import GROUPS, Report, flops_per_token
from model.tools.isoflop import Point, ScalingFit, fit_scaling
from model.tools.runs import format_table
from model.training.metrics import METRICS, read_metrics

DEFINITION = "sweep.json"
RUNS = "runs"
RESULTS_JSON, RESULTS_CSV, RESULTS_TEXT = "results.json", "results.csv", "results.txt"
ISOFLOP_PLOT, FRONTIER_PLOT = "isoflop.png", "frontier.png"
RECOMMENDED = "recommended.toml"
WANDB_SWEEP = "wandb_sweep.yaml"

DEPTH_FACTORS = (0.5, 0.75, 1.0, 1.5, 2.0)
"""The default ladder: the config's depth times these, each as wide as the config's width per layer."""
EVALUATIONS_PER_RUN = 4
"""Loss estimates (and checkpoints, so a killed run loses little) per run, besides the one at step 0."""
SET_BY_SWEEP = ("max_iters", "eval_interval", "out_dir", "init_from", "always_save_checkpoint")
"""Keys every run gets from the sweep; a flag setting one of them is refused. (Each run's warmup_iters and
lr_decay_iters are set too, keeping the config's warmup share warmup_iters / lr_decay_iters.)"""
TIMED_STEPS = 5
"""Training steps timed per size to turn a wall-clock budget into a step count (after 2 untimed)."""


# -- what a sweep trains ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Size:
    n_layer: int
    n_head: int
    n_embd: int

    @property
    def spec(self) -> str:
        """How --sizes writes it: n_layer:n_head:n_embd."""
        return f"{self.n_layer}:{self.n_head}:{self.n_embd}"

    @property
    def label(self) -> str:
        return f"{self.n_layer}x{self.n_head}x{self.n_embd}"

    def config(self, base: GPTConfig, vocab_size: int | None = None) -> GPTConfig:
        shape = dataclasses.replace(base, n_layer=self.n_layer, n_head=self.n_head, n_embd=self.n_embd)
        return shape if vocab_size is None else dataclasses.replace(shape, vocab_size=vocab_size)


def parse_sizes(text: str) -> list[Size]:
    sizes = []
    for item in text.split(","):
        parts = item.strip().split(":")
        if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
            raise ConfigError(f"--sizes: '{item.strip()}' is not n_layer:n_head:n_embd (e.g. 4:4:128)")
        sizes.append(Size(*(int(p) for p in parts)))
    if len(set(sizes)) != len(sizes):
        raise ConfigError("--sizes lists a size twice")
    return sizes


def ladder_size(base: GPTConfig, n_layer: int) -> Size:
    """A model n_layer deep in the config's proportions: its width per layer and its head size."""
    head_size = base.n_embd // base.n_head
    heads = max(1, round(n_layer * base.n_embd / base.n_layer / head_size))
    return Size(n_layer, heads, heads * head_size)


def default_sizes(base: GPTConfig) -> list[Size]:
    depths = sorted({max(1, round(base.n_layer * f)) for f in DEPTH_FACTORS})
    return [ladder_size(base, depth) for depth in depths]


MINUTES = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)\s*min$")


def parse_budget(text: str) -> tuple[float, str]:
    """'1e13' (FLOPs) or '5min' (wall-clock minutes) as (value, unit)."""
    text = text.strip()
    match = MINUTES.match(text)
    try:
        value, unit = (float(match.group(1)), "minutes") if match else (float(text), "flops")
    except ValueError:
        raise ConfigError(f"budget '{text}' is neither a number of FLOPs (e.g. 1e13) nor minutes (e.g. 5min)") from None
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"budget '{text}' must be a positive number")
    return value, unit


def parse_budgets(text: str) -> tuple[list[float], str]:
    parsed = [parse_budget(item) for item in text.split(",")]
    units = {unit for _, unit in parsed}
    if len(units) > 1:
        raise ConfigError("--budgets mixes FLOPs and minutes; give every budget in one unit")
    budgets = [value for value, _ in parsed]
    if any(b >= a for a, b in zip(budgets[1:], budgets)) or len(budgets) < 1:
        raise ConfigError(f"--budgets must be increasing, got {text}")
    return budgets, units.pop()


def format_budget(budget: float, unit: str) -> str:
    return f"{budget:g} min" if unit == "minutes" else f"{budget:.3g} FLOPs"


def budget_tag(budget: float, unit: str) -> str:
    """The budget in a run folder's name: 1e+13 -> 1e13, 2.5 minutes -> 2.5min."""
    return f"{budget:g}min" if unit == "minutes" else f"{budget:.3g}".replace("+", "")


@dataclass
class Sweep:
    """A sweep's definition: what DIR/sweep.json records, and what a resumed sweep must match."""

    config: str | None
    overrides: dict[str, str]
    budgets: list[float]
    unit: str
    sizes: list[Size]
    runs: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    """name, size, budget, max_iters, flops (planned) and flags of every run."""

    def identity(self) -> dict[str, Any]:
        return {"config": self.config, "overrides": self.overrides, "budgets": self.budgets, "unit": self.unit,
                "sizes": [s.spec for s in self.sizes]}

    def to_dict(self, base_values: dict[str, Any]) -> dict[str, Any]:
        return {**self.identity(), "base_config": base_values, "runs": self.runs}


def load_base(config: str | None, overrides: dict[str, str]) -> tuple[GPTConfig, TrainConfig]:
    for key in SET_BY_SWEEP:
        if key in overrides:
            raise ConfigError(f"--{key} is set by the sweep for each run (from its budget); leave it out")
    return load_config(config, overrides)


def run_vocab_size(model_config: GPTConfig, train_config: TrainConfig, quiet: bool) -> int:
    """The vocabulary the runs' models will have (the dataset's, padded as the trainer pads a new model on
    a tiktoken vocabulary), which their FLOPs per token depend on."""
    from model.training.trainer import open_dataset, padded_vocab_size

    dataset = open_dataset(train_config, print, quiet)
    if model_config.vocab_size is not None:
        return model_config.vocab_size
    if dataset.meta["tokenizer"].get("kind") == "tiktoken":
        return padded_vocab_size(dataset.vocab_size)
    return dataset.vocab_size


def sequences_per_step(train_config: TrainConfig) -> int:
    """Sequences (of block_size tokens) one optimizer step trains on, in one process."""
    return train_config.batch_size * train_config.gradient_accumulation_steps


def step_flops(model_config: GPTConfig, train_config: TrainConfig) -> int:
    return flops_per_token(model_config) * sequences_per_step(train_config) * model_config.block_size


def seconds_per_step(model_config: GPTConfig, train_config: TrainConfig) -> float:
    """Wall time of one training step of this model here (forward, backward, optimizer step on random
    tokens), for wall-clock budgets."""
    import torch

    from model.device import autocast, resolve_device, resolve_dtype
    from model.kernels import build as kernels
    from model.nn.gpt import GPT
    from model.training.optim import make_optimizer

    device = resolve_device(train_config.device)
    dtype = resolve_dtype(train_config.dtype, device)
    kernels.set_enabled(train_config.kernels)
    torch.manual_seed(train_config.seed)
    model = GPT(model_config).to(device)
    optimizer = make_optimizer(model, train_config, device.split(":")[0])
    shape = (train_config.batch_size, model_config.block_size)
    x = torch.randint(model_config.vocab_size, shape, device=device)
    ctx = autocast(device, dtype)
    times = []
    for _ in range(2 + TIMED_STEPS):
        start = time.perf_counter()
        for _ in range(train_config.gradient_accumulation_steps):
            with ctx:
                _, loss = model(x, x)
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times[2:])


def schedule(steps: int, train_config: TrainConfig) -> dict[str, int]:
    """The keys that fit a run to its length: the config's warmup share (warmup_iters / lr_decay_iters) of
    `steps`, the cosine decay over all of them, and EVALUATIONS_PER_RUN evaluations."""
    warmup_share = train_config.warmup_iters / max(train_config.lr_decay_iters, 1)
    return {"max_iters": steps, "lr_decay_iters": steps, "warmup_iters": min(round(warmup_share * steps), steps),
            "eval_interval": max(1, math.ceil(steps / EVALUATIONS_PER_RUN))}


def plan(sweep: Sweep, out: Path, quiet: bool = True) -> Sweep:
    """Fill in sweep.runs: every (budget, size) pair that gets at least one step, with its flags."""
    model_config, train_config = load_base(sweep.config, sweep.overrides)
    for size in sweep.sizes:
        try:
            size.config(model_config).check_buildable(require_vocab=False)
        except ConfigError as e:
            raise ConfigError(f"size {size.spec}: {e}") from None
    vocab = run_vocab_size(model_config, train_config, quiet)
    flops = {size: step_flops(size.config(model_config, vocab), train_config) for size in sweep.sizes}
    if sweep.unit == "flops":
        cost = flops  # per size: the FLOPs, or the seconds, of one step
    else:
        cost = {size: seconds_per_step(size.config(model_config, vocab), train_config) for size in sweep.sizes}
    per_budget = (lambda b: b) if sweep.unit == "flops" else (lambda b: b * 60)
    smallest = min(sweep.sizes, key=lambda s: cost[s])
    if round(per_budget(sweep.budgets[0]) / cost[smallest]) < 1:
        what = f"{cost[smallest]:.3g} FLOPs" if sweep.unit == "flops" else f"{cost[smallest]:.3g} s"
        raise ConfigError(f"budget {format_budget(sweep.budgets[0], sweep.unit)} is too small for one step of the "
                          f"smallest model ({smallest.spec}: one step takes {what}); raise --budgets")
    runs = []
    for budget in sweep.budgets:
        for size in sweep.sizes:
            steps = round(per_budget(budget) / cost[size])
            if steps < 1:
                continue  # this size can't take a single step in this budget
            name = f"{len(runs):02d}-{size.label}-{budget_tag(budget, sweep.unit)}"
            values = {"n_layer": size.n_layer, "n_head": size.n_head, "n_embd": size.n_embd,
                      **schedule(steps, train_config), "always_save_checkpoint": True, "out_dir": str(out / RUNS / name)}
            if train_config.wandb_log:
                values["wandb_run_name"] = name
            runs.append({"name": name, "size": size.spec, "budget": budget, "max_iters": steps,
                         "flops": steps * flops[size], "flags": {**sweep.overrides, **{k: str(v) for k, v in values.items()}}})
    sweep.runs = runs
    return sweep


# -- the sweep folder -------------------------------------------------------------------------------
def open_sweep_folder(sweep: Sweep, out: Path, quiet: bool) -> Sweep:
    """The sweep as DIR/sweep.json records it (planned and written now for a new sweep). A folder that
    holds another sweep, or files that are no sweep's, is refused."""
    path = out / DEFINITION
    base = json.loads(json.dumps(to_dict(*load_base(sweep.config, sweep.overrides))))
    if path.is_file():
        stored = read_json(path)
        mine = json.loads(json.dumps({**sweep.identity(), "base_config": base}))
        theirs = {k: stored.get(k) for k in mine} if isinstance(stored, dict) else {}
        if theirs != mine:
            differ = ", ".join(k for k in mine if theirs.get(k) != mine[k])
            raise TinyGPTError(f"{out} holds another sweep ({DEFINITION} differs in: {differ}); resume it with "
                               f"the same definition, or pick another --out")
        sweep.runs = stored["runs"]
        return sweep
    if out.is_dir() and any(out.iterdir()):
        raise TinyGPTError(f"{out} is not empty and holds no {DEFINITION}; pick another --out for a new sweep")
    plan(sweep, out, quiet)
    make_folder(out, "sweep folder")
    write_json(path, sweep.to_dict(base))
    return sweep


def read_sweep(out: Path) -> dict[str, Any]:
    path = out / DEFINITION
    if not path.is_file():
        raise TinyGPTError(f"{out} holds no sweep: {path} is missing")
    stored = read_json(path)
    if not isinstance(stored, dict) or not isinstance(stored.get("runs"), list):
        raise TinyGPTError(f"{path} is not a sweep definition (no list of runs)")
    return stored


def run_folder(out: Path, run: dict[str, Any]) -> Path:
    return out / RUNS / run["name"]


def finished(folder: Path, max_iters: int) -> bool:
    """Whether the run in folder trained all its steps and measured its full-validation loss."""
    path = folder / METRICS
    if not path.is_file():
        return False
    return any("full_val_loss" in r and r.get("iter") == max_iters for r in read_metrics(path))


def train_run(config: str | None, run: dict[str, Any], folder: Path, extra: dict[str, str], quiet: bool) -> None:
    """Train one run with train.py's entry point; a run with a checkpoint continues from it."""
    from model.checkpoint import LATEST

    flags = {**run["flags"], **extra}
    if (folder / LATEST).is_file():
        flags["init_from"] = "resume"
    argv = ([config] if config else []) + [f"--{k}={v}" for k, v in flags.items()] + (["--quiet"] if quiet else [])
    status = train_main(argv)
    if status != 0:
        raise SweepStopped(status)


class SweepStopped(Exception):
    """A run ended without finishing, having said why on stderr: the sweep stops with its exit status."""

    def __init__(self, status: int):
        super().__init__(status)
        self.status = status


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def run_sweep(sweep: Sweep, out: Path, quiet: bool) -> None:
    runs = sweep.runs
    todo = [r for r in runs if not finished(run_folder(out, r), r["max_iters"])]
    if len(todo) < len(runs):
        print(f"sweep: {out} holds {len(runs) - len(todo)} finished run(s) of {len(runs)}; resuming", flush=True)
    started, spent = time.time(), 0.0  # FLOPs trained in this process, for the time-left estimate
    for run in todo:
        index = runs.index(run) + 1
        left_flops = sum(r["flops"] for r in todo[todo.index(run):])
        elapsed = time.time() - started
        left = f"about {_duration(elapsed / spent * left_flops)} left" if spent else "time left unknown yet"
        print(f"sweep: run {index}/{len(runs)} {run['name']} ({run['size']}, "
              f"{format_budget(run['budget'], sweep.unit)}, {run['max_iters']:,} steps): "
              f"{_duration(elapsed)} elapsed, {left}", flush=True)
        train_run(sweep.config, run, run_folder(out, run), {}, quiet)
        spent += run["flops"]


# -- results ------------------------------------------------------------------------------------------
def run_row(folder: Path, run: dict[str, Any]) -> dict[str, Any] | None:
    """The table row of a finished run, from its config.json and metrics.jsonl; None if unfinished."""
    from model.tools.runs import Run

    if not finished(folder, run["max_iters"]):
        return None
    record = Run.load(folder)
    values = record.config
    shape, train = from_dict(values)
    report = Report(shape)
    full_val = [r for r in record.records if "full_val_loss" in r][-1]
    tokens = values["max_iters"] * sequences_per_step(train) * shape.block_size
    speeds = record.values("tokens_per_sec")
    return {
        "run": run["name"], "size": run["size"], "n_layer": shape.n_layer, "n_head": shape.n_head,
        "n_embd": shape.n_embd, "budget": run["budget"], "params": report.total,
        "params_non_embedding": report.non_embedding,
        **{f"params_{group}": report.group_total(group) for group in GROUPS},
        "flops_per_token": report.training_flops, "iters": values["max_iters"], "tokens": tokens,
        "flops": report.training_flops * tokens, "full_val_loss": full_val["full_val_loss"],
        "full_val_bpb": full_val.get("full_val_bpb"), "tokens_per_sec": statistics.median(speeds) if speeds else None,
        "train_time": full_val.get("train_time"),
    }


def collect(folders: list[Path]) -> tuple[dict[str, Any], list[dict[str, Any]], list[str]]:
    """(the first sweep's definition, the rows of the finished runs, the names of the runs not finished)
    of one sweep folder, or of several sweeps of one base config (e.g. more sizes added later); with
    several, a run is named FOLDER/NAME."""
    first = read_sweep(folders[0])
    rows, missing = [], []
    for folder in folders:
        stored = read_sweep(folder)
        for key in ("unit", "base_config"):
            if stored.get(key) != first.get(key):
                raise TinyGPTError(f"{folder} and {folders[0]} are sweeps of different {key.replace('_', ' ')}s; "
                                   "collect sweeps of one config (and flags) together")
        for run in stored["runs"]:
            name = run["name"] if len(folders) == 1 else f"{folder.name}/{run['name']}"
            row = run_row(run_folder(folder, run), run)
            if row is None:
                missing.append(name)
            else:
                rows.append({**row, "run": name})
    first["sizes"] = sorted({size for f in folders for size in read_sweep(f)["sizes"]})
    return first, rows, missing


def curves(rows: list[dict[str, Any]]) -> dict[float, list[Point]]:
    """The IsoFLOP curves: per budget, each run's non-embedding parameters, tokens and loss."""
    out: dict[float, list[Point]] = {}
    for row in rows:
        out.setdefault(row["budget"], []).append(Point(row["params_non_embedding"], row["tokens"], row["full_val_loss"]))
    return out


TABLE_COLUMNS = (("run", "run"), ("params", "params"), ("params_non_embedding", "non-emb"),
                 ("params_attention", "attention"), ("params_mlp", "mlp"), ("params_embeddings", "embeddings"),
                 ("flops_per_token", "FLOPs/token"), ("tokens", "tokens"), ("flops", "FLOPs used"),
                 ("full_val_loss", "full val loss"), ("full_val_bpb", "bpb"), ("tokens_per_sec", "tok/s"),
                 ("train_time", "time (s)"))


def format_fit(fit: ScalingFit, rows: list[dict[str, Any]], unit: str) -> list[str]:
    minima = {m.budget: m for m in fit.minima}
    lines = []
    for budget in sorted({row["budget"] for row in rows}):
        if budget in minima:
            m = minima[budget]
            lines.append(f"IsoFLOP minimum at {format_budget(budget, unit)}: N_opt {m.params:,.0f} non-embedding "
                         f"parameters, D_opt {m.tokens:,.0f} tokens, loss {m.loss:.4f}")
        else:
            best = min((row for row in rows if row["budget"] == budget), key=lambda row: row["full_val_loss"])
            lines.append(f"no IsoFLOP minimum at {format_budget(budget, unit)} inside the sizes trained (it needs three "
                         f"sizes around it); best run {best['run']}, loss {best['full_val_loss']:.4f}")
    if fit.params is None:
        lines.append("power-law fit: needs the minima of two budgets or more")
    else:
        c = "C (FLOPs)" if unit == "flops" else "C (minutes)"
        lines.append(f"N_opt = {fit.params.coefficient:.3g} * {c}^{fit.params.exponent:.3f};  "
                     f"D_opt = {fit.tokens.coefficient:.3g} * {c}^{fit.tokens.exponent:.3f}")
    return lines


def write_results(folders: list[Path], out: Path, target_budget: float | None, quiet: bool = True) -> str:
    """Table, fit, plots and recommended.toml, in out, from the finished runs of the sweeps in folders;
    returns the text report."""
    stored, rows, missing = collect(folders)
    if not rows:
        raise TinyGPTError(f"{', '.join(map(str, folders))} holds no finished run yet; run the sweep first")
    unit = stored["unit"]
    fit = fit_scaling(curves(rows))
    table = format_table([label for _, label in TABLE_COLUMNS], [[row[key] for key, _ in TABLE_COLUMNS] for row in rows])
    lines = [table, "", *format_fit(fit, rows, unit)]
    if missing:
        lines.append(f"not finished ({len(missing)}): {', '.join(missing)}")
    largest = max(row["budget"] for row in rows)
    recommendation = recommend(stored, rows, fit, target_budget if target_budget is not None else largest, quiet)
    lines.append(recommendation["summary"])
    text = "\n".join(lines)
    comments = [f"Written by python -m model.sweep from the runs of {', '.join(map(str, folders))}; train it with",
                f"  python train.py {out / RECOMMENDED}", recommendation["summary"]]
    if recommendation["fit"]:
        comments.append(f"fit: {recommendation['fit']}")
    make_folder(out, "results folder")
    atomic_write_bytes(out / RECOMMENDED, toml_text(recommendation["values"], comments).encode())
    write_json(out / RESULTS_JSON, {"unit": unit, "budgets": sorted({row["budget"] for row in rows}), "runs": rows,
                                    "missing": missing,
                                    "fit": fit.to_dict(), "recommended": recommendation})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(out / RESULTS_CSV, buffer.getvalue().encode())
    atomic_write_bytes(out / RESULTS_TEXT, (text + "\n").encode())
    from model.tools.sweep_plots import plot_frontier, plot_isoflop

    plot_isoflop(rows, fit, unit, out / ISOFLOP_PLOT)
    plot_frontier(rows, fit, unit, out / FRONTIER_PLOT)
    return text + f"\nwrote {out / RESULTS_TEXT}, {RESULTS_CSV}, {RESULTS_JSON}, {ISOFLOP_PLOT}, {FRONTIER_PLOT}, {RECOMMENDED}"


# -- the recommendation ---------------------------------------------------------------------------------
def recommend(stored: dict[str, Any], rows: list[dict[str, Any]], fit: ScalingFit, target: float,
              quiet: bool) -> dict[str, Any]:
    """What recommended.toml holds: the ladder size nearest the fitted N_opt(target), trained for the target
    budget (without a fit: the best run of the largest budget, trained for the target budget)."""
    sweep = Sweep(stored["config"], stored["overrides"], stored["budgets"], stored["unit"],
                  parse_sizes(",".join(stored["sizes"])))
    model_config, train_config = load_base(sweep.config, sweep.overrides)
    vocab = run_vocab_size(model_config, train_config, quiet)
    candidates = {ladder_size(model_config, depth) for depth in range(1, 65)} | set(sweep.sizes)
    if fit.params is not None:
        n_opt = float(fit.params(target))
        size = min(candidates, key=lambda s: abs(math.log(Report(s.config(model_config, vocab)).non_embedding / n_opt)))
        why = f"the fit's N_opt({format_budget(target, sweep.unit)}) = {n_opt:,.0f} non-embedding parameters"
    else:
        n_opt = None
        best = min((r for r in rows if r["budget"] == max(r["budget"] for r in rows)), key=lambda r: r["full_val_loss"])
        size = Size(best["n_layer"], best["n_head"], best["n_embd"])
        why = f"no fit (too few IsoFLOP minima): the best run of the largest budget, {best['run']}"
    shape = size.config(model_config, vocab)
    cost = step_flops(shape, train_config) if sweep.unit == "flops" else seconds_per_step(shape, train_config)
    steps = max(1, round((target if sweep.unit == "flops" else target * 60) / cost))
    values = given_values(model_config, train_config)
    values.update(n_layer=size.n_layer, n_head=size.n_head, n_embd=size.n_embd, **schedule(steps, train_config),
                  out_dir="out-recommended")
    report = Report(shape)
    summary = (f"recommended for {format_budget(target, sweep.unit)}: {size.spec} ({report.non_embedding:,} "
               f"non-embedding parameters; {why}), {steps:,} steps of {sequences_per_step(train_config) * shape.block_size:,} "
               f"tokens")
    return {"summary": summary, "target_budget": target, "size": size.spec, "params_opt": n_opt,
            "max_iters": steps, "fit": None if fit.params is None else
            f"N_opt ~ C^{fit.params.exponent:.3f}, D_opt ~ C^{fit.tokens.exponent:.3f}", "values": values}


def given_values(model_config: GPTConfig, train_config: TrainConfig) -> dict[str, Any]:
    """The keys the sweep's config file and flags set, with their values."""
    values = {}
    for config in (model_config, train_config):
        for key in sorted(config.given or ()):
            if getattr(config, key) is not None:
                values[key] = getattr(config, key)
    return values


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))  # a JSON string is a TOML basic string


def toml_text(values: dict[str, Any], comments: list[str]) -> str:
    """A flat config file, as model/config.py reads it."""
    lines = [f"# {line}" for line in comments]
    lines += [f"{key} = {toml_value(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


# -- W&B ------------------------------------------------------------------------------------------------
def wandb_sweep_definition(out: Path, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """A W&B grid sweep with one parameter, `run`, whose values are the sweep's runs (a grid over sizes and
    budgets as separate parameters would cross them). Each agent's command trains that run through
    `python -m model.sweep --launch=DIR`, which passes train.py the run's flags (and --wandb_log=True, so the
    run reports to the sweep)."""
    return {
        "name": out.name,
        "program": "train.py",
        "method": "grid",
        "metric": {"name": "full_val_loss", "goal": "minimize"},
        "parameters": {"run": {"values": [r["name"] for r in runs]}},
        "command": ["${env}", "${interpreter}", "-m", "model.sweep", f"--launch={out}", "--wandb_log=True", "${args}"],
    }


# -- the program ---------------------------------------------------------------------------------------
USAGE_EPILOG = """Budgets are training FLOPs (1e13; counted with python -m model.report's FLOPs per token) or
wall-clock minutes on this machine (5min). --key=value flags set config keys for every run, except
max_iters, eval_interval, out_dir, init_from and always_save_checkpoint, which the sweep sets; each
run's schedule keeps the config's warmup share, warmup_iters / lr_decay_iters. See docs/sweeps.md."""


def parse_args(argv: list[str]):
    parser = OneLineArgumentParser(prog="python -m model.sweep", allow_abbrev=False, epilog=USAGE_EPILOG,
                                   description="Train a ladder of model sizes at equal compute and fit a scaling law.")
    parser.add_argument("config", nargs="?", default=None, help="TOML config the runs start from (default: the defaults)")
    parser.add_argument("--budgets", help="increasing compute budgets, comma-separated: FLOPs (1e12,3e12) or minutes (2min,5min)")
    parser.add_argument("--sizes", help="n_layer:n_head:n_embd,... (default: the config's depth x 0.5 to 2, its width per layer and head size)")
    parser.add_argument("--out", help="the sweep folder (default: sweep-CONFIG)")
    parser.add_argument("--target_budget", help="the budget to recommend a size for (default: the largest)")
    parser.add_argument("--print_wandb_sweep", action="store_true",
                        help=f"write DIR/{WANDB_SWEEP} (a W&B grid over the runs) and DIR/{DEFINITION}, and train nothing")
    parser.add_argument("--collect", metavar="DIR", action="append",
                        help="build the table, fit and plots from DIR's finished runs (repeatable: sweeps of one "
                        "config, e.g. with more sizes, together; the results then go to --out)")
    parser.add_argument("--launch", metavar="DIR", help="train one run of DIR's sweep (--run); what W&B agents call")
    parser.add_argument("--run", help="with --launch: the run's name")
    parser.add_argument("--quiet", action="store_true", help="no training output, only the sweep's lines")
    args, rest = parser.parse_known_args(argv)
    return args, parse_overrides(rest)


@guarded
def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(list(sys.argv[1:] if argv is None else argv))
    if (args.run is None) != (args.launch is None):
        raise ConfigError("--launch=DIR and --run=NAME go together: they train one run of DIR's sweep")
    target = None
    if args.launch:
        out = Path(args.launch)
        return launch(out, read_sweep(out), args.run, overrides, args.quiet)
    if args.collect:
        folders = [Path(folder) for folder in args.collect]
        if len(folders) > 1 and not args.out:
            raise ConfigError("several --collect folders need --out=DIR for the combined results")
        if args.target_budget is not None:
            target = _target(args.target_budget, read_sweep(folders[0])["unit"])
        print(write_results(folders, Path(args.out) if args.out else folders[0], target, args.quiet))
        return 0
    if not args.budgets:
        raise ConfigError("--budgets is required, e.g. --budgets=1e12,3e12,1e13 (FLOPs) or --budgets=2min,5min")
    budgets, unit = parse_budgets(args.budgets)
    if args.target_budget is not None:
        target = _target(args.target_budget, unit)
    model_config, _ = load_base(args.config, overrides)
    sizes = parse_sizes(args.sizes) if args.sizes else default_sizes(model_config)
    name = Path(args.config).stem if args.config else "defaults"
    out = Path(args.out or f"sweep-{name}")
    sweep = open_sweep_folder(Sweep(args.config, overrides, budgets, unit, sizes), out, args.quiet)
    if args.print_wandb_sweep:
        path = out / WANDB_SWEEP
        # JSON is YAML: `wandb sweep` reads this file as it is
        atomic_write_bytes(path, (json.dumps(wandb_sweep_definition(out, sweep.runs), indent=2) + "\n").encode())
        print(f"wrote {path}: a grid over the {len(sweep.runs)} runs; start it with `wandb sweep {path}`, then "
              f"`wandb agent SWEEP_ID` on each machine (from this folder), and `python -m model.sweep --collect={out}`")
        return 0
    try:
        run_sweep(sweep, out, args.quiet)
    except SweepStopped as e:
        if e.status > 128:  # 128 + a signal's number: the run saved a checkpoint, which the sweep resumes from
            print("sweep stopped; the same command resumes it", file=sys.stderr)
        return e.status
    print(write_results([out], out, target, args.quiet))
    return 0


def _target(text: str, unit: str) -> float:
    value, target_unit = parse_budget(text)
    if target_unit != unit:
        raise ConfigError(f"--target_budget is in {target_unit} but the sweep's budgets are in {unit}")
    return value


def launch(out: Path, stored: dict[str, Any], name: str | None, extra: dict[str, str], quiet: bool) -> int:
    """Train the run `name` of the sweep in out (resuming it if it has a checkpoint)."""
    runs = {r["name"]: r for r in stored["runs"]}
    if name not in runs:
        raise ConfigError(f"--run must name one of the sweep's runs ({', '.join(runs)}), got {name!r}")
    for key in SET_BY_SWEEP:
        if key in extra:
            raise ConfigError(f"--{key} is set by the sweep for each run; leave it out")
    run = runs[name]
    if finished(run_folder(out, run), run["max_iters"]):
        print(f"sweep: {name} is already finished", flush=True)
        return 0
    try:
        train_run(stored["config"], run, run_folder(out, run), extra, quiet)
    except SweepStopped as e:
        return e.status
    return 0
