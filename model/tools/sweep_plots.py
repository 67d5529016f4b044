"""The sweep's two pictures: IsoFLOP curves (loss against model size, one curve per budget, with each
curve's fitted parabola and minimum), and loss against compute with the frontier and the fitted power
laws. Drawn with matplotlib's Figure (no pyplot), as model/training/plots.py draws loss curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from model.tools.isoflop import ScalingFit
from model.training.plots import save_figure


def _budget_label(budget: float, unit: str) -> str:
    return f"{budget:g} min" if unit == "minutes" else f"C = {budget:.3g} FLOPs"


def plot_isoflop(rows: list[dict[str, Any]], fit: ScalingFit, unit: str, path: Path) -> Path:
    fig = Figure(figsize=(7, 4.5), dpi=90)
    ax = fig.subplots()
    minima = {m.budget: m for m in fit.minima}
    budgets = sorted({r["budget"] for r in rows})
    colors = colormaps["viridis"](np.linspace(0.0, 0.85, len(budgets)))
    for budget, color in zip(budgets, colors):
        points = sorted((r["params_non_embedding"], r["full_val_loss"]) for r in rows if r["budget"] == budget)
        n, loss = zip(*points)
        ax.plot(n, loss, "o", color=color, label=_budget_label(budget, unit))
        if budget in minima:
            m = minima[budget]
            grid = np.geomspace(min(n[0], m.params) / 1.2, max(n[-1], m.params) * 1.2, 100)
            ax.plot(grid, m.loss_at(grid), "-", color=color, alpha=0.6)
            ax.plot([m.params], [m.loss], "*", color=color, markersize=14, markeredgecolor="black")
    ax.set_xscale("log")
    ax.set_xlabel("non-embedding parameters N")
    ax.set_ylabel("full-validation loss (nats per token)")
    ax.set_title("IsoFLOP curves (star: fitted minimum)")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return save_figure(fig, path)


def plot_frontier(rows: list[dict[str, Any]], fit: ScalingFit, unit: str, path: Path) -> Path:
    fig = Figure(figsize=(11, 4.5), dpi=90)
    left, right = fig.subplots(1, 2)
    for size in sorted({r["size"] for r in rows}, key=lambda s: [int(p) for p in s.split(":")]):
        points = sorted((r["flops"], r["full_val_loss"]) for r in rows if r["size"] == size)
        left.plot(*zip(*points), "o-", markersize=4, alpha=0.8, label=size.replace(":", "x"))
    best = {}
    for r in rows:
        if r["budget"] not in best or r["full_val_loss"] < best[r["budget"]]["full_val_loss"]:
            best[r["budget"]] = r
    frontier = sorted((r["flops"], r["full_val_loss"]) for r in best.values())
    left.plot(*zip(*frontier), "k--", linewidth=2, label="frontier (best per budget)")
    left.set_xscale("log")
    left.set_xlabel("training FLOPs used")
    left.set_ylabel("full-validation loss (nats per token)")
    left.grid(alpha=0.3, which="both")
    left.legend(fontsize=8)
    left.set_title("loss against compute")
    if fit.minima:
        c = np.array([m.budget for m in fit.minima])
        right.plot(c, [m.params for m in fit.minima], "o", color="tab:blue", label="N_opt (IsoFLOP minima)")
        right.plot(c, [m.tokens for m in fit.minima], "s", color="tab:orange", label="D_opt (tokens)")
        if fit.params is not None:
            grid = np.geomspace(c.min() / 1.5, c.max() * 1.5, 50)
            right.plot(grid, fit.params(grid), "-", color="tab:blue", label=f"N_opt ~ C^{fit.params.exponent:.2f}")
            right.plot(grid, fit.tokens(grid), "-", color="tab:orange", label=f"D_opt ~ C^{fit.tokens.exponent:.2f}")
        right.set_xscale("log")
        right.set_yscale("log")
        right.legend(fontsize=8)
    right.set_xlabel("budget C (FLOPs)" if unit == "flops" else "budget C (minutes)")
    right.set_title("compute-optimal size and tokens")
    right.grid(alpha=0.3, which="both")
    return save_figure(fig, path)
