"""Dropout whose CPU mask costs next to nothing: a hash of (seed, element index), computed in C.

Training the baby GPT (configs/shakespeare_char.toml, dropout 0.2) draws six 25M-element attention
masks and a dozen smaller ones per step. PyTorch draws CPU masks on one thread, which took 1.8 s of
a 6.6 s bfloat16 step on the machine of BENCHMARKS.md. model/kernels/dropout.c decides each element
from a counter-based hash instead, on every core at once, and the backward pass recomputes the mask
from the same seed rather than storing a byte per element. Each call draws its seed from PyTorch's
generator, so torch.manual_seed still makes a run repeatable.

Elsewhere (GPUs, float16, torch.compile, no C compiler) `dropout` is F.dropout.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from model import rowdot


def dropout_seed() -> int:
    """A seed for the hash, drawn from PyTorch's generator, so torch.manual_seed repeats the masks."""
    return int(torch.randint(0, 2**63 - 1, (1,)))


def dropout_threshold(p: float) -> int:
    """The hash value below which an element is dropped: p * 2^32."""
    return min(round(p * 2**32), 2**32 - 1)


def _apply(x: Tensor, seed: int, p: float) -> Tensor:
    lib = rowdot.kernels()
    fn = lib.dropout_bf16 if x.dtype == torch.bfloat16 else lib.dropout_f32
    x = x.contiguous()
    y = torch.empty_like(x)
    fn(x.data_ptr(), y.data_ptr(), x.numel(), seed, dropout_threshold(p), 1.0 / (1.0 - p))
    return y


class _HashDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, p: float) -> Tensor:
        ctx.seed = dropout_seed()
        ctx.p = p
        return _apply(x, ctx.seed, p)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return _apply(grad, ctx.seed, ctx.p), None  # the same elements dropped, the same scale


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """F.dropout(x, p, training), with the mask drawn by model/kernels/dropout.c on a CPU."""
    if not training or p == 0.0:
        return x
    if p >= 1.0 or not rowdot.kernels_usable(x):
        return F.dropout(x, p, training)
    return _HashDropout.apply(x, p)


class Dropout(nn.Dropout):
    """nn.Dropout through `dropout` (same arguments, same state: none)."""

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)
