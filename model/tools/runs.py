"""Comparing training runs side by side, from the files every run leaves in its out_dir.

    python -m model.runs compare OUT_DIR [OUT_DIR ...] [--plot compare.png] [--metric val_bpb]

prints one row per run (best and final val loss, best val and last full-val bits per byte, median
tokens/s, wall time, parameters, and the config keys whose values differ between the runs) and writes
one PNG of their val-loss (or, with --metric=val_bpb, bits-per-byte) curves. Bits per byte compare
runs whose tokenizers differ; loss per token does not.
Only config.json and metrics.jsonl are read, so runs from other machines compare just as well.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.checkpoint import CONFIG_FILE
from model.errors import TinyGPTError
from model.files import read_json
from model.training.metrics import METRICS, read_metrics
from model.training.plots import VAL_CURVES, plot_val_curves

IGNORED_KEYS = ("out_dir",)
"""Config keys that always differ and say nothing about the run (the folder is the row's name)."""


@dataclass
class Run:
    out_dir: Path
    config: dict[str, Any]
    records: list[dict[str, Any]] = field(repr=False)

    @classmethod
    def load(cls, out_dir: str | Path) -> "Run":
        out_dir = Path(out_dir)
        config_path, metrics_path = out_dir / CONFIG_FILE, out_dir / METRICS
        for path in (config_path, metrics_path):
            if not path.is_file():
                raise TinyGPTError(f"{out_dir} is not a training run folder: {path.name} is missing")
        config = read_json(config_path)
        if not isinstance(config, dict):
            raise TinyGPTError(f"{config_path} does not hold a config (a JSON object)")
        return cls(out_dir, config, read_metrics(metrics_path))

    def values(self, key: str) -> list[float]:
        return [r[key] for r in self.records if isinstance(r.get(key), (int, float))]

    def summary(self) -> dict[str, Any]:
        val = self.values("val_loss")
        bpb, full_bpb = self.values("val_bpb"), self.values("full_val_bpb")
        speed = self.values("tokens_per_sec")
        wall = self.values("wall_time")
        return {
            "best val": min(val) if val else None,
            "final val": val[-1] if val else None,
            "best val bpb": min(bpb) if bpb else None,
            "full val bpb": full_bpb[-1] if full_bpb else None,
            "tok/s": statistics.median(speed) if speed else None,
            "wall (s)": wall[-1] if wall else None,
            "params": count_params(self.config),
        }


def count_params(config: dict[str, Any]) -> int | None:
    """Parameters of the model described by a resolved config (counted from the shapes, nothing is
    built); None when the config doesn't describe a model."""
    from model.config import GPTConfig, config_fields
    from model.nn.report import count_parameters

    keys = {f.name for f in config_fields(GPTConfig)}
    try:
        return count_parameters(GPTConfig(**{k: v for k, v in config.items() if k in keys}))
    except (TinyGPTError, TypeError, ValueError):
        return None


def differing_keys(configs: list[dict[str, Any]]) -> list[str]:
    """Config keys whose values are not the same in every run (a key missing from a run counts as None)."""
    keys = sorted(set().union(*configs) - set(IGNORED_KEYS))
    return [k for k in keys if len({json.dumps(c.get(k)) for c in configs}) > 1]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e5):
        return f"{value:.3g}"
    return f"{value:.4f}" if abs(value) < 10 else f"{value:,.1f}"


def format_table(header: list[str], rows: list[list[Any]]) -> str:
    cells = [header] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def compare(out_dirs: list[str], plot_path: str | Path, metric: str = "val_loss") -> str:
    """The comparison table as text; also writes the plot of `metric` (a VAL_CURVES key) to plot_path."""
    if metric not in VAL_CURVES:
        raise TinyGPTError(f"--metric must be one of {', '.join(VAL_CURVES)}, got '{metric}'")
    runs = [Run.load(d) for d in out_dirs]
    names = [str(r.out_dir) for r in runs]
    differing = differing_keys([r.config for r in runs])
    summaries = [r.summary() for r in runs]
    header = ["run", *summaries[0], *differing]
    rows = [[name, *s.values(), *(r.config.get(k) for k in differing)] for name, s, r in zip(names, summaries, runs)]
    plot_val_curves([(name, r.records) for name, r in zip(names, runs)], plot_path, metric)
    note = "" if differing else "\n(the runs' configs are identical apart from out_dir)"
    return format_table(header, rows) + note
