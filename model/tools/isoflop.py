"""The Chinchilla "approach 2" scaling fit, from IsoFLOP curves (Hoffmann et al. 2022, section 3.2).

An IsoFLOP curve is the final loss of several model sizes, each trained for the same compute C. In
log(N) the curve is close to a parabola; its vertex is the compute-optimal size N_opt(C) for that
budget, and the tokens that size sees, D_opt(C), follow from the same curve. Over several budgets the
vertices lie on power laws, N_opt = k_N * C^a and D_opt = k_D * C^b, fitted as straight lines in log
space by least squares. With C = 6 N D, a + b is about 1; Chinchilla found a = b = 0.5.

Plain numpy: a quadratic and two lines, fitted with numpy.polyfit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Point:
    """One run of an IsoFLOP curve: its parameter count N, the tokens it was trained on D, its loss."""

    params: float
    tokens: float
    loss: float


@dataclass(frozen=True)
class CurveMinimum:
    """The vertex of one budget's parabola loss(log N)."""

    budget: float
    params: float
    """N_opt: the parameter count at the parabola's minimum."""
    tokens: float
    """D_opt: the tokens a model of N_opt parameters sees in this budget (read off the same curve)."""
    loss: float
    """The parabola's value at its minimum."""
    coefficients: tuple[float, float, float]
    """(c2, c1, c0) of loss = c2 * x^2 + c1 * x + c0, x = ln N."""

    def loss_at(self, params: np.ndarray) -> np.ndarray:
        return np.polyval(self.coefficients, np.log(params))


@dataclass(frozen=True)
class PowerLaw:
    """y = coefficient * x^exponent."""

    exponent: float
    coefficient: float

    def __call__(self, x: float | np.ndarray) -> float | np.ndarray:
        return self.coefficient * np.asarray(x, dtype=float) ** self.exponent


def fit_power_law(x: list[float], y: list[float]) -> PowerLaw:
    """Least squares of ln y = exponent * ln x + ln coefficient (two points or more)."""
    exponent, intercept = np.polyfit(np.log(x), np.log(y), 1)
    return PowerLaw(float(exponent), float(math.exp(intercept)))


def curve_minimum(budget: float, points: list[Point]) -> CurveMinimum | None:
    """The vertex of a parabola through (ln N, loss), or None when the curve has fewer than three sizes,
    bends the wrong way, or has its vertex outside the sizes trained: then the budget's best size lies
    beyond them, and an extrapolated vertex says little about where."""
    if len({p.params for p in points}) < 3:
        return None
    x = np.log([p.params for p in points])
    c2, c1, c0 = np.polyfit(x, [p.loss for p in points], 2)
    if c2 <= 0:
        return None
    x_opt = -c1 / (2 * c2)
    if not x.min() <= x_opt <= x.max():
        return None
    # tokens fall smoothly with size along an IsoFLOP curve (D = C / FLOPs per token): a line in log space
    slope, intercept = np.polyfit(x, np.log([p.tokens for p in points]), 1)
    return CurveMinimum(
        budget=budget, params=float(math.exp(x_opt)), tokens=float(math.exp(slope * x_opt + intercept)),
        loss=float(np.polyval((c2, c1, c0), x_opt)), coefficients=(float(c2), float(c1), float(c0)),
    )


@dataclass(frozen=True)
class ScalingFit:
    """The minima of the curves that have one, and the power laws through them (None with fewer than two)."""

    minima: list[CurveMinimum]
    params: PowerLaw | None
    """N_opt(C)."""
    tokens: PowerLaw | None
    """D_opt(C)."""

    def to_dict(self) -> dict:
        def law(fit: PowerLaw | None) -> dict | None:
            return None if fit is None else {"exponent": fit.exponent, "coefficient": fit.coefficient}

        return {
            "minima": [{"budget": m.budget, "params": m.params, "tokens": m.tokens, "loss": m.loss,
                        "coefficients": list(m.coefficients)}
                       for m in self.minima],
            "params_opt": law(self.params),
            "tokens_opt": law(self.tokens),
        }


def fit_scaling(curves: dict[float, list[Point]]) -> ScalingFit:
    """Approach 2 over IsoFLOP curves keyed by their budget C (FLOPs)."""
    minima = [m for budget in sorted(curves) if (m := curve_minimum(budget, curves[budget])) is not None]
    if len(minima) < 2:
        return ScalingFit(minima, None, None)
    budgets = [m.budget for m in minima]
    return ScalingFit(minima, fit_power_law(budgets, [m.params for m in minima]),
                      fit_power_law(budgets, [m.tokens for m in minima]))
