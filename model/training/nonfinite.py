"""What to do when a training step produces NaN or inf in the loss or the gradients.

One such step is enough to turn every weight into NaN, and the next checkpoint would then overwrite
the last good one. So the step is never applied: depending on TrainConfig.on_nan the run either stops
with a message naming the iteration ("stop"), or drops that step and carries on ("skip"). Either way
ckpt.pt and best.pt still hold the last good weights.

The trainer tells `StepGuard.skip` each step's loss and gradient norm; the step is skipped when either
is not finite. Both are the same on every rank (the loss is averaged over the ranks, the norm is taken
over the gradients after DDP's all-reduce or over all of FSDP's shards), so every rank skips alike.
None of it waits for the device (a host sync per step would leave a GPU idle while Python catches up):
the decision is a 0-d tensor on the device, and `step_unless` hands it to PyTorch's fused optimizers,
which skip the update inside their kernel. Which steps were bad is recorded in small device tensors
and read only when the loop syncs anyway: at log_interval, and before every checkpoint is written
(`check`). With on_nan=stop the run then stops, naming the first bad iteration; the bad step was never
applied, and no checkpoint is written after it.

With float16 the loss scaler's gradients overflow now and then (it backs off and the step is skipped),
which is routine: there only a non-finite loss counts as a bad step.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from model.errors import TinyGPTError


def step_unless(optimizer: torch.optim.Optimizer, skip: Tensor) -> None:
    """optimizer.step(), unless `skip` (a 0-d bool tensor on the device) is true. A fused PyTorch
    optimizer (AdamW with fused=True) reads the flag in its kernel, through the `found_inf` attribute
    that GradScaler also sets, so nothing waits for the device; any other optimizer (Muon, AdamW on
    MPS) has the flag read first, a host sync."""
    if not getattr(optimizer, "defaults", {}).get("fused"):
        if not bool(skip):
            optimizer.step()
        return
    optimizer.found_inf = skip.float()
    try:
        optimizer.step()
    finally:
        del optimizer.found_inf


class StepGuard:
    """Decides on the device whether each step is skipped and records the bad ones; `check()` reads
    them and applies the on_nan policy."""

    def __init__(self, device: str, dtype: torch.dtype, policy: str):
        self.device = torch.device(device)
        self.policy = policy
        self.float16 = dtype == torch.float16
        self._reset()

    def _reset(self) -> None:
        self.bad_steps = torch.zeros((), dtype=torch.long, device=self.device)
        self.first_bad = torch.full((3,), float("nan"), device=self.device)  # iteration, loss, gradient norm

    def skip(self, iter_num: int, loss: Tensor, grad_norm: Tensor) -> Tensor:
        """Whether to skip this step: its loss or its gradient norm is not finite. A 0-d bool tensor on the
        device; a bad step is recorded for `check`."""
        finite_loss = torch.isfinite(loss)
        skip = ~(finite_loss & torch.isfinite(grad_norm))
        bad = ~finite_loss if self.float16 else skip
        record = bad & (self.bad_steps == 0)
        self.first_bad = torch.where(
            record, torch.stack([torch.full_like(grad_norm, iter_num), loss.float(), grad_norm]), self.first_bad)
        self.bad_steps += bad.long()
        return skip

    def check(self, echo: Callable[[str], None] = print) -> int:
        """Read the bad steps since the last check (a host sync): raise TinyGPTError under on_nan=stop,
        else report them. Returns how many there were."""
        count = int(self.bad_steps)
        if count == 0:
            return 0
        iteration, loss, norm = (float(v) for v in self.first_bad.cpu())
        self._reset()
        what = f"the loss is {loss}" if not math.isfinite(loss) else f"the gradient norm is {norm}"
        more = f" (and {count - 1} more step(s) since)" if count > 1 else ""
        if self.policy == "skip":
            echo(f"iteration {int(iteration)}: {what}; skipped this step{more} (on_nan=skip)")
            return count
        raise TinyGPTError(
            f"iteration {int(iteration)}: {what}; stopped without applying the step{more}, so the checkpoints in "
            f"out_dir keep the last good weights (try a lower learning_rate, or --on_nan=skip to drop such steps)"
        )
