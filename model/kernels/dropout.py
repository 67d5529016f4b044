"""Dropout whose CPU mask costs next to nothing: a hash of (seed, element index), computed in C.

Training the baby GPT (configs/shakespeare_char.toml, dropout 0.2) draws six 25M-element attention
masks and a dozen smaller ones per step. PyTorch draws CPU masks on one thread, which took 1.8 s of
a 6.6 s bfloat16 step on the machine of BENCHMARKS.md. model/kernels/dropout.c decides each element
from a counter-based hash instead, on every core at once, and the backward pass recomputes the mask
from the same seed rather than storing a byte per element. `dropout_add` does a residual branch's
dropout and its addition onto the residual stream in the same pass. Each call draws its seed from
PyTorch's generator, so torch.manual_seed still makes a run repeatable.

Elsewhere (GPUs, float16, torch.compile, no C compiler) `dropout` is F.dropout.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from model.kernels import build as rowdot


def dropout_seed() -> int:
    """A seed for the hash, drawn from PyTorch's generator, so torch.manual_seed repeats the masks."""
    return int(torch.randint(0, 2**63 - 1, (1,)))


def dropout_threshold(p: float) -> int:
    """The hash value below which an element is dropped: p * 2^32."""
    return min(round(p * 2**32), 2**32 - 1)


def _mask_args(seed: int, p: float) -> tuple[int, int, float]:
    """The kernels' trailing arguments: seed, drop threshold, scale of the kept elements."""
    return seed, dropout_threshold(p), 1.0 / (1.0 - p)


def _apply(x: Tensor, seed: int, p: float, out_dtype: torch.dtype | None = None) -> Tensor:
    """dropout(x) with the mask of `seed`, in out_dtype (x's dtype, or bfloat16 from float32)."""
    lib = rowdot.kernels()
    out_dtype = out_dtype or x.dtype
    if out_dtype == x.dtype:
        fn = lib.dropout_bf16 if x.dtype == torch.bfloat16 else lib.dropout_f32
    else:  # dropped and rounded to bfloat16 in the same pass
        fn = lib.dropout_f32_to_bf16
    x = x.contiguous()
    y = torch.empty(x.shape, dtype=out_dtype)
    fn(x.data_ptr(), y.data_ptr(), x.numel(), *_mask_args(seed, p))
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


class _HashDropoutAdd(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, h: Tensor, p: float) -> Tensor:
        lib = rowdot.kernels()
        ctx.seed, ctx.p, ctx.h_dtype = dropout_seed(), p, h.dtype
        x, h = x.contiguous(), h.contiguous()
        y = torch.empty_like(x)
        fn = lib.dropout_add_bf16 if h.dtype == torch.bfloat16 else lib.dropout_add_f32
        fn(x.data_ptr(), h.data_ptr(), y.data_ptr(), x.numel(), *_mask_args(ctx.seed, p))
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        grad_h = _apply(grad, ctx.seed, ctx.p, ctx.h_dtype) if ctx.needs_input_grad[1] else None
        return grad if ctx.needs_input_grad[0] else None, grad_h, None


def dropout_add(x: Tensor, h: Tensor, p: float, training: bool = True) -> Tensor:
    """x + dropout(h): a residual branch h, dropped out, added onto the residual stream x.

    On a CPU, with x in float32 and h in float32 or bfloat16 (autocast), this is one pass of
    model/kernels/dropout.c each way instead of three (dropout, add, and in backward the cast of the
    stream's gradient to h's dtype)."""
    if not training or p == 0.0:
        return x + h
    if (p >= 1.0 or x.dtype != torch.float32 or h.dtype not in (torch.float32, torch.bfloat16)
            or x.shape != h.shape or not (rowdot.kernels_usable(x) and rowdot.kernels_usable(h))):
        return x + dropout(h, p, training)
    return _HashDropoutAdd.apply(x, h, p)


class Dropout(nn.Dropout):
    """nn.Dropout through `dropout` (same arguments, same state: none)."""

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)
