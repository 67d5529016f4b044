"""Loss curves as pictures: out_dir/loss.png for one run, and one picture comparing several runs.

Plots are drawn from metrics.jsonl alone, so they can be redrawn at any time (also for a run that
crashed). matplotlib's object-oriented Figure is used directly, without pyplot: no global figure
state, no GUI backend, and PNGs are rendered by Agg on any machine.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from model.errors import TinyGPTError
from model.files import atomic_write_bytes
from model.training.metrics import LOSS_PLOT, METRICS, read_metrics

X_AXES = (("iter", "iteration"), ("wall_time", "wall time (s)"))


def series(records: list[dict[str, Any]], x: str, y: str) -> tuple[list[float], list[float]]:
    """The (x, y) points of the records that have both keys."""
    points = [(r[x], r[y]) for r in records if x in r and y in r]
    return [p[0] for p in points], [p[1] for p in points]


def figure_format(path: str | Path) -> str:
    """The image format a picture is written in: the one its file name's suffix names (.png, .pdf,
    .svg, ...: any that matplotlib writes). Another suffix, or none, is refused."""
    formats = Figure().canvas.get_supported_filetypes()
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in formats:
        raise TinyGPTError(f"cannot tell which picture format to write for {path}: its name must end in one of "
                           f"{', '.join('.' + f for f in sorted(formats))}")
    return suffix


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Render to memory in the format path's suffix names, then replace the file in one step, so a
    viewer never sees half a picture."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format=figure_format(path), bbox_inches="tight")
    atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)


def plot_loss(out_dir: str | Path) -> Path:
    """Draw out_dir/loss.png: train and val loss against iteration (left) and wall time (right)."""
    out_dir = Path(out_dir)
    records = read_metrics(out_dir / METRICS)
    fig = Figure(figsize=(11, 4), dpi=100)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, (x, label) in zip(axes, X_AXES):
        ax.plot(*series(records, x, "loss"), color="tab:blue", alpha=0.3, linewidth=1, label="train (one batch)")
        ax.plot(*series(records, x, "train_loss"), "o-", color="tab:blue", markersize=3, label="train")
        ax.plot(*series(records, x, "val_loss"), "o-", color="tab:orange", markersize=3, label="val")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("loss (cross-entropy, nats per token)")
    axes[0].legend()
    fig.suptitle(str(out_dir))
    return save_figure(fig, out_dir / LOSS_PLOT)


VAL_CURVES = {"val_loss": "val loss (nats per token)", "val_bpb": "val bits per byte"}
"""The metrics a comparison plot can draw, with their axis labels."""


def plot_val_curves(runs: list[tuple[str, list[dict[str, Any]]]], path: str | Path, metric: str = "val_loss") -> Path:
    """One picture with every run's `metric` (a VAL_CURVES key) against iteration (left) and wall time (right)."""
    fig = Figure(figsize=(11, 4), dpi=100)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, (x, label) in zip(axes, X_AXES):
        for name, records in runs:
            ax.plot(*series(records, x, metric), "o-", markersize=3, label=name)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(VAL_CURVES[metric])
    axes[0].legend()
    return save_figure(fig, path)
