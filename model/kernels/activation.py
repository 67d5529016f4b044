"""GELU (tanh approximation) in C: tanh from a vectorised exponential, and the derivative written in
the same pass, so that backward is one product instead of a second round of tanh.

The custom op tinygpt::gelu_tanh returns gelu(x) and, when asked (training), gelu'(x), which is kept
for backward in place of the input (the same memory). model/kernels/ops.py decides when to call it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from model.kernels.build import library


@torch.library.custom_op("tinygpt::gelu_tanh", mutates_args=(), device_types="cpu")
def gelu_tanh(x: Tensor, need_derivative: bool) -> tuple[Tensor, Tensor]:
    """F.gelu(x, approximate="tanh") and its derivative at x (an empty tensor unless need_derivative)."""
    lib = library()
    fn = lib.gelu_tanh_bf16 if x.dtype == torch.bfloat16 else lib.gelu_tanh_f32
    x = x.contiguous()
    y = torch.empty_like(x)
    derivative = torch.empty_like(x) if need_derivative else x.new_empty(0)
    fn(x.data_ptr(), y.data_ptr(), derivative.data_ptr() if need_derivative else 0, x.numel())
    return y, derivative


@gelu_tanh.register_fake
def _(x: Tensor, need_derivative: bool) -> tuple[Tensor, Tensor]:
    return torch.empty_like(x), torch.empty_like(x) if need_derivative else x.new_empty(0)


def _save_derivative(ctx, inputs: tuple, output: tuple[Tensor, Tensor]) -> None:
    ctx.save_for_backward(output[1])


def _backward(ctx, grad: Tensor, _grad_of_derivative: Tensor | None) -> tuple[Tensor, None]:
    (derivative,) = ctx.saved_tensors
    return grad * derivative, None


gelu_tanh.register_autograd(_backward, setup_context=_save_derivative)
