"""A linear layer whose bias is added inside the matrix product (oneDNN), instead of in a separate
pass before it as PyTorch's CPU addmm does.

oneDNN's fused linear is reached through `torch.ops.mkldnn._linear_pointwise`, a private PyTorch
operator, so it is confined to this module and guarded: it is used only on PyTorch versions from
MIN_TORCH on and only after a probe call returned the right numbers; anywhere else
`fused_bias_linear_available()` is False and callers keep F.linear.

The custom op tinygpt::linear wraps it, with its backward in plain PyTorch products and a FLOP
formula, so FlopCounterMode counts it as it counts F.linear.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

MIN_TORCH = (2, 6)
"""Oldest PyTorch whose mkldnn._linear_pointwise(x, weight, bias, "none", [], "") this module uses."""


@functools.cache
def fused_bias_linear_available() -> bool:
    """Whether this PyTorch has oneDNN's fused linear with the signature used here, giving x W^T + b."""
    if tuple(int(part) for part in torch.__version__.split(".")[:2]) < MIN_TORCH:
        return False
    try:
        x = torch.ones(2, 3)
        return torch.equal(torch.ops.mkldnn._linear_pointwise(x, torch.ones(4, 3), torch.ones(4), "none", [], ""),
                           torch.full((2, 4), 4.0))
    except (AttributeError, RuntimeError, TypeError):  # a PyTorch build without oneDNN, or another signature
        return False


@torch.library.custom_op("tinygpt::linear", mutates_args=(), device_types="cpu")
def fused_bias_linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """x W^T + b, the bias added as oneDNN writes the product; x (..., in), weight (out, in), bias (out,)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


@fused_bias_linear.register_fake
def _(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    return x.new_empty(*x.shape[:-1], weight.shape[0])


@register_flop_formula(torch.ops.tinygpt.linear)
def _flops(x_shape, weight_shape, bias_shape, *args, **kwargs) -> int:
    rows = 1
    for size in x_shape[:-1]:
        rows *= size
    return 2 * rows * weight_shape[0] * weight_shape[1]  # as F.linear's addmm counts


def _save(ctx, inputs: tuple, output: Tensor) -> None:
    x, weight, _ = inputs
    ctx.save_for_backward(x, weight)


def _backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    x, weight = ctx.saved_tensors
    grad = grad.to(weight.dtype)
    grad_2d = grad.reshape(-1, grad.shape[-1])  # (N, out)
    grad_x = grad @ weight if ctx.needs_input_grad[0] else None
    grad_weight = grad_2d.t() @ x.reshape(-1, x.shape[-1]) if ctx.needs_input_grad[1] else None
    grad_bias = grad_2d.sum(0) if ctx.needs_input_grad[2] else None
    return grad_x, grad_weight, grad_bias


fused_bias_linear.register_autograd(_backward, setup_context=_save)
