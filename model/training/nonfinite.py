"""What to do when a training step produces NaN or inf in the loss or the gradients.

One such step is enough to turn every weight into NaN, and the next checkpoint would then overwrite
the last good one. So the step is never applied: depending on TrainConfig.on_nan the run either stops
with a message naming the iteration ("stop"), or drops that step and carries on ("skip"). Either way
ckpt.pt and best.pt still hold the last good weights.

All of it is decided on the device, without waiting for the GPU (a host sync per step would leave it
idle while Python catches up):
  - a non-finite loss multiplies its own backward by NaN, so every gradient it touches is NaN too, also
    after DDP's all-reduce or FSDP's reduce-scatter on every other rank;
  - clipping multiplies the gradients by NaN when their global norm is not finite, so every rank sees
    NaN gradients in every shard;
  - torch.amp.GradScaler then finds them and skips the optimizer step (inside the fused AdamW kernel,
    without a sync); with float16 it is the usual loss scaler, otherwise its scale stays exactly 1.
Which steps were bad is recorded in small device tensors and read only when the loop syncs anyway: at
log_interval, and before every checkpoint is written. With on_nan=stop the run then stops, naming the
first bad iteration; the bad step was never applied, and no checkpoint is written after it.

With float16, an overflow of the scaled gradients is routine (the scaler backs off and retries), so
only a non-finite loss counts as a bad step there.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from model.errors import TinyGPTError

FLOAT16_INIT_SCALE = 2.0**16
"""GradScaler's default starting loss scale for float16."""


def poison(loss: Tensor) -> Tensor:
    """loss, whose backward turns every gradient into NaN when loss itself is not finite."""
    return loss * torch.where(torch.isfinite(loss.detach()), 1.0, float("nan"))


def local(t: Tensor) -> Tensor:
    """This rank's part of a tensor that FSDP shards (a DTensor); a plain tensor as it is."""
    return t.to_local() if hasattr(t, "to_local") else t


def full(t: Tensor) -> Tensor:
    """The whole value of a DTensor (e.g. a norm that is a sum over shards); a plain tensor as it is."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def clip_gradients(parameters: Iterable[torch.nn.Parameter], max_norm: float, scale: Tensor) -> Tensor:
    """Clip the gradients, which are multiplied by the loss `scale`, to a global norm of max_norm
    (inf: measure only) and return their unscaled norm, all on the device. A non-finite norm makes every
    gradient NaN, on every rank, so the step is skipped everywhere."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros((), device=scale.device)
    norm = full(torch.nn.utils.get_total_norm(grads)).to(scale.device) / scale
    coefficient = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    coefficient = torch.where(torch.isfinite(norm), coefficient, float("nan"))
    for g in grads:
        local(g).mul_(coefficient.to(g.device))
    return norm


class StepGuard:
    """Scales the loss, clips, and applies or skips each optimizer step, with no host sync; `check()`
    reads what happened and applies the on_nan policy."""

    def __init__(self, device: str, dtype: torch.dtype, policy: str):
        self.device = torch.device(device)
        self.policy = policy
        self.float16 = dtype == torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type, init_scale=FLOAT16_INIT_SCALE if self.float16 else 1.0)
        self.one = torch.ones((), device=self.device)
        self._reset()

    def _reset(self) -> None:
        self.bad_steps = torch.zeros((), dtype=torch.long, device=self.device)
        self.first_bad = torch.full((3,), float("nan"), device=self.device)  # iteration, loss, gradient norm

    def backward(self, loss: Tensor) -> None:
        self.scaler.scale(poison(loss)).backward()

    def clip(self, parameters: Iterable[torch.nn.Parameter], max_norm: float) -> Tensor:
        return clip_gradients(parameters, max_norm, self.scaler.scale(self.one))

    def step(self, optimizer: torch.optim.Optimizer, iter_num: int, loss: Tensor, norm: Tensor) -> None:
        """Apply the step unless the gradients are non-finite; record it when it is a bad one."""
        bad = ~torch.isfinite(loss) if self.float16 else ~(torch.isfinite(loss) & torch.isfinite(norm))
        record = bad & (self.bad_steps == 0)
        self.first_bad = torch.where(record, torch.stack([torch.full_like(norm, iter_num), loss.float(), norm]),
                                     self.first_bad)
        self.bad_steps += bad.long()
        self.scaler.step(optimizer)
        # float16: grow or back off the loss scale; otherwise keep it exactly 1
        self.scaler.update() if self.float16 else self.scaler.update(new_scale=self.one)
        optimizer.zero_grad(set_to_none=True)

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

