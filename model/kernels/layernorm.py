"""LayerNorm of the float32 residual stream straight to bfloat16 (under bfloat16 autocast), in C.

PyTorch normalises in float32 and the next matmul casts the result to bfloat16; backward converts the
bfloat16 gradient back to float32 first. model/kernels/layernorm.c writes the bfloat16 result directly
and reads the bfloat16 gradient directly, with the same float32 arithmetic.

The custom op tinygpt::layer_norm_to_bf16 returns the result and the per-row mean and 1/std its
backward (tinygpt::layer_norm_to_bf16_backward) needs. model/kernels/ops.py decides when to call it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from model.kernels.build import library


@torch.library.custom_op("tinygpt::layer_norm_to_bf16", mutates_args=(), device_types="cpu")
def layer_norm_to_bf16(x: Tensor, weight: Tensor, bias: Tensor | None, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """LayerNorm over the last dim of float32 x with float32 weight and bias -> (bfloat16 y, mean, rstd)."""
    x = x.contiguous()
    C = x.shape[-1]
    rows = x.numel() // C
    y = torch.empty(x.shape, dtype=torch.bfloat16)
    mean, rstd = torch.empty(rows), torch.empty(rows)
    library().layernorm_forward_bf16(x.data_ptr(), weight.data_ptr(), 0 if bias is None else bias.data_ptr(),
                                     y.data_ptr(), mean.data_ptr(), rstd.data_ptr(), rows, C, eps)
    return y, mean, rstd


@layer_norm_to_bf16.register_fake
def _(x: Tensor, weight: Tensor, bias: Tensor | None, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    rows = x.numel() // x.shape[-1]
    return torch.empty_like(x, dtype=torch.bfloat16), x.new_empty(rows), x.new_empty(rows)


@torch.library.custom_op("tinygpt::layer_norm_to_bf16_backward", mutates_args=(), device_types="cpu")
def layer_norm_to_bf16_backward(grad: Tensor, x: Tensor, weight: Tensor, mean: Tensor,
                                rstd: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The gradients of x, weight and bias from the bfloat16 gradient of y."""
    grad, x = grad.to(torch.bfloat16).contiguous(), x.contiguous()
    C = x.shape[-1]
    threads = torch.get_num_threads()
    grad_x = torch.empty_like(x)
    partial = torch.zeros(threads, 2, C)  # per thread: weight and bias gradient sums
    library().layernorm_backward_bf16(x.data_ptr(), weight.data_ptr(), mean.data_ptr(), rstd.data_ptr(),
                                      grad.data_ptr(), grad_x.data_ptr(), partial.data_ptr(), x.numel() // C, C,
                                      threads)
    return grad_x, partial[:, 0].sum(0), partial[:, 1].sum(0)  # two tensors: a custom op's outputs may not alias


@layer_norm_to_bf16_backward.register_fake
def _(grad: Tensor, x: Tensor, weight: Tensor, mean: Tensor, rstd: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    C = x.shape[-1]
    return torch.empty_like(x), x.new_empty(C), x.new_empty(C)


def _save(ctx, inputs: tuple, output: tuple[Tensor, Tensor, Tensor]) -> None:
    x, weight, bias, _ = inputs
    ctx.save_for_backward(x, weight, output[1], output[2])
    ctx.has_bias = bias is not None


def _backward(ctx, grad: Tensor, _grad_mean, _grad_rstd) -> tuple[Tensor, Tensor, Tensor | None, None]:
    x, weight, mean, rstd = ctx.saved_tensors
    grad_x, grad_weight, grad_bias = layer_norm_to_bf16_backward(grad, x, weight, mean, rstd)
    return grad_x, grad_weight, grad_bias if ctx.has_bias else None, None


layer_norm_to_bf16.register_autograd(_backward, setup_context=_save)
