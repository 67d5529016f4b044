"""What to do when a training step produces NaN or inf in the loss or the gradients.

One such step is enough to turn every weight into NaN, and the next checkpoint would then overwrite
the last good one. So the step is never applied: depending on TrainConfig.on_nan the run either stops
with a message naming the iteration ("stop"), or drops that step and carries on ("skip"). Either way
ckpt.pt and best.pt still hold the last good weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

from model.errors import TinyGPTError


def grad_norm(parameters: Iterable[torch.nn.Parameter]) -> float:
    """The global L2 norm of the gradients (NaN or inf if any gradient element is)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))


def step_is_bad(
    loss: float,
    norm: float | None,
    parameters: Iterable[torch.nn.Parameter],
    iter_num: int,
    policy: str,
    echo: Callable[[str], None] = print,
    check_grads: bool = True,
) -> bool:
    """True when this step must not be applied (the caller then zeroes the gradients and moves on).

    `norm` is the gradient norm if the caller already has it (from clipping), else None and it is
    computed here. With check_grads=False only the loss is checked: float16's GradScaler already skips
    steps whose scaled gradients overflow, which is routine for it rather than a failure.
    """
    if math.isfinite(loss):
        if not check_grads:
            return False
        if norm is None:
            norm = grad_norm(parameters)
        if math.isfinite(norm):
            return False
        what = f"the gradient norm is {norm}"
    else:
        what = f"the loss is {loss}"
    if policy == "skip":
        echo(f"iteration {iter_num}: {what}; skipped this step (on_nan=skip)")
        return True
    raise TinyGPTError(
        f"iteration {iter_num}: {what}; stopped without applying the step, so the checkpoints in out_dir "
        f"keep the last good weights (try a lower learning_rate, or --on_nan=skip to drop such steps)"
    )


def drop_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
    """Forget this step's gradients without applying them; with float16, back the loss scale off as
    an overflow would (update() also clears the scaler's per-step state)."""
    optimizer.zero_grad(set_to_none=True)
    if scaler.is_enabled():
        scaler.update(scaler.get_scale() * scaler.get_backoff_factor())
