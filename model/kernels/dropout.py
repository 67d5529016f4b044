"""Dropout whose CPU mask costs next to nothing: a hash of (seed, element index), computed in C.

PyTorch draws a CPU dropout mask on one thread. model/kernels/dropout.c decides each element from a
counter-based hash instead, on every core at once, and the backward pass recomputes the mask from the
same seed rather than storing a byte per element. `dropout_add` does a residual branch's dropout and
its addition onto the residual stream in the same pass. The seed is drawn from PyTorch's generator,
so torch.manual_seed still makes a run repeatable.

Two custom ops, tinygpt::dropout and tinygpt::dropout_add, each with a fake implementation (for the
meta device and torch.compile's tracing) and an autograd formula; model/kernels/ops.py decides when
to call them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from model.kernels.build import library


def draw_seed(device: torch.device | str = "cpu") -> Tensor:
    """A seed for the hash, (1,) int64, drawn from PyTorch's generator so torch.manual_seed repeats it."""
    return torch.randint(0, 2**63 - 1, (1,), device=device)


def mask_args(seed: Tensor, p: float) -> tuple[int, int, float]:
    """The kernels' trailing arguments: seed, drop threshold (p * 2^32), scale of the kept elements."""
    return int(seed), min(round(p * 2**32), 2**32 - 1), 1.0 / (1.0 - p)


@torch.library.custom_op("tinygpt::dropout", mutates_args=(), device_types="cpu")
def hash_dropout(x: Tensor, seed: Tensor, p: float, out_dtype: torch.dtype) -> Tensor:
    """dropout(x, p) with the mask of `seed`, in out_dtype (x's dtype, or bfloat16 from float32)."""
    lib = library()
    if out_dtype == x.dtype:
        fn = lib.dropout_bf16 if x.dtype == torch.bfloat16 else lib.dropout_f32
    else:  # dropped and rounded to bfloat16 in the same pass
        fn = lib.dropout_f32_to_bf16
    x = x.contiguous()
    y = torch.empty(x.shape, dtype=out_dtype)
    fn(x.data_ptr(), y.data_ptr(), x.numel(), *mask_args(seed, p))
    return y


@hash_dropout.register_fake
def _(x: Tensor, seed: Tensor, p: float, out_dtype: torch.dtype) -> Tensor:
    return torch.empty(x.shape, dtype=out_dtype, device=x.device)


def _save_dropout(ctx, inputs: tuple, output: Tensor) -> None:
    x, seed, p, _ = inputs
    ctx.seed, ctx.p, ctx.x_dtype = seed, p, x.dtype


def _dropout_backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None]:
    # the same elements dropped, the same scale
    return hash_dropout(grad, ctx.seed, ctx.p, grad.dtype).to(ctx.x_dtype), None, None, None


hash_dropout.register_autograd(_dropout_backward, setup_context=_save_dropout)


@torch.library.custom_op("tinygpt::dropout_add", mutates_args=(), device_types="cpu")
def hash_dropout_add(x: Tensor, h: Tensor, seed: Tensor, p: float) -> Tensor:
    """x + dropout(h, p) with the mask of `seed`: x float32, h float32 or bfloat16, the same shape."""
    lib = library()
    x, h = x.contiguous(), h.contiguous()
    y = torch.empty_like(x)
    fn = lib.dropout_add_bf16 if h.dtype == torch.bfloat16 else lib.dropout_add_f32
    fn(x.data_ptr(), h.data_ptr(), y.data_ptr(), x.numel(), *mask_args(seed, p))
    return y


@hash_dropout_add.register_fake
def _(x: Tensor, h: Tensor, seed: Tensor, p: float) -> Tensor:
    return torch.empty_like(x)


def _save_dropout_add(ctx, inputs: tuple, output: Tensor) -> None:
    _, h, seed, p = inputs
    ctx.seed, ctx.p, ctx.h_dtype = seed, p, h.dtype


def _dropout_add_backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, None, None]:
    # the stream's gradient passes through; the branch's is dropped with the same mask, in h's dtype
    return grad, hash_dropout(grad, ctx.seed, ctx.p, ctx.h_dtype), None, None


hash_dropout_add.register_autograd(_dropout_add_backward, setup_context=_save_dropout_add)
