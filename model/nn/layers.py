"""Architecture options chosen in GPTConfig: the normalisation, the MLP nonlinearity, rotary positions.

GPT-2 uses LayerNorm, GELU and a learned position table. Later models (LLaMA, modded-nanogpt) often
swap in RMSNorm (skip the mean, no bias), squared ReLU (cheaper than GELU, and sparse) and rotary
position embeddings (RoPE), which encode a token's position by rotating its query and key vectors,
so a dot product between them depends only on how far apart the two tokens are.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from model.kernels import build as rowdot

ROPE_BASE = 10000.0
"""Wavelength scale of the rotary frequencies, as in the RoFormer paper."""


class RMSNorm(nn.RMSNorm):
    """nn.RMSNorm that follows its input's dtype: under bfloat16 autocast a float32 gain would send
    torch.rms_norm down its slow unfused path, so the gain is cast to the input's dtype instead."""

    def forward(self, x: Tensor) -> Tensor:
        weight = None if self.weight is None else self.weight.to(x.dtype)
        return F.rms_norm(x, self.normalized_shape, weight, self.eps)


class _FusedBiasLinear(torch.autograd.Function):
    """x W^T + b through oneDNN's linear, which adds the bias as it writes the product; the backward
    pass is the usual three products and sum."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        ctx.save_for_backward(x, weight)
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors
        grad = grad.to(weight.dtype)
        grad_2d = grad.reshape(-1, grad.shape[-1])  # (N, out)
        grad_x = grad @ weight if ctx.needs_input_grad[0] else None
        grad_weight = grad_2d.t() @ x.reshape(-1, x.shape[-1]) if ctx.needs_input_grad[1] else None
        grad_bias = grad_2d.sum(0) if ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias


@functools.cache
def _fused_bias_linear_available() -> bool:
    try:
        x = torch.ones(2, 3)
        return torch.equal(torch.ops.mkldnn._linear_pointwise(x, torch.ones(4, 3), torch.ones(4), "none", [], ""),
                           torch.full((2, 4), 4.0))
    except (AttributeError, RuntimeError):  # a PyTorch build without oneDNN
        return False


class Linear(nn.Linear):
    """nn.Linear (same parameters, same state dict) whose biased products on a CPU add the bias inside
    the matrix product (oneDNN) instead of in a pass before it, as PyTorch's addmm does: the baby GPT's
    forward products ran 7-15% faster in bfloat16, more in float32 (BENCHMARKS.md). Under CPU
    autocast the operands are cast as F.linear would cast them."""

    def forward(self, x: Tensor) -> Tensor:
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        if (self.bias is None or x.dim() < 2 or dtype not in (torch.float32, torch.bfloat16)
                or self.weight.device.type != "cpu" or not rowdot.eager_on_cpu(x) or not _fused_bias_linear_available()):
            return F.linear(x, self.weight, self.bias)
        return _FusedBiasLinear.apply(x.to(dtype), self.weight.to(dtype), self.bias.to(dtype))


class _LayerNormToBf16(torch.autograd.Function):
    """LayerNorm of a float32 input with a bfloat16 result, by model/kernels/layernorm.c."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, eps: float) -> Tensor:
        lib = rowdot.kernels()
        x = x.contiguous()
        C = x.shape[-1]
        rows = x.numel() // C
        y = torch.empty(x.shape, dtype=torch.bfloat16)
        mean, rstd = torch.empty(rows), torch.empty(rows)
        lib.layernorm_forward_bf16(x.data_ptr(), weight.data_ptr(), 0 if bias is None else bias.data_ptr(), y.data_ptr(),
                                   mean.data_ptr(), rstd.data_ptr(), rows, C, eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, Tensor | None, None]:
        x, weight, mean, rstd = ctx.saved_tensors
        grad = grad.to(torch.bfloat16).contiguous()
        C = x.shape[-1]
        threads = torch.get_num_threads()
        grad_x = torch.empty_like(x)
        partial = torch.zeros(threads, 2, C)  # per thread: weight and bias gradient sums
        rowdot.kernels().layernorm_backward_bf16(x.data_ptr(), weight.data_ptr(), mean.data_ptr(), rstd.data_ptr(),
                                                 grad.data_ptr(), grad_x.data_ptr(), partial.data_ptr(),
                                                 x.numel() // C, C, threads)
        grad_weight, grad_bias = partial.sum(0)
        return grad_x, grad_weight, grad_bias if ctx.has_bias else None, None


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm (same parameters, same state dict). Under bfloat16 autocast on a CPU, PyTorch
    normalises in float32 and the next matmul casts the result to bfloat16; here model/kernels/
    layernorm.c writes the bfloat16 result directly (and reads the bfloat16 gradient in backward),
    with the same float32 arithmetic."""

    def forward(self, x: Tensor) -> Tensor:
        if (x.dtype == torch.float32 and torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
                and self.weight is not None and self.weight.dtype == torch.float32 and len(self.normalized_shape) == 1
                and rowdot.kernels_usable(x)):
            return _LayerNormToBf16.apply(x, self.weight, self.bias, self.eps)
        return super().forward(x)


def make_norm(kind: str, dim: int, bias: bool = True) -> nn.Module:
    """'layernorm' (with a bias when `bias`) or 'rmsnorm' (a gain only)."""
    if kind == "rmsnorm":
        return RMSNorm(dim)
    return LayerNorm(dim, bias=bias)


def relu_squared(x: Tensor) -> Tensor:
    return F.relu(x).square()


class _GeluTanh(torch.autograd.Function):
    """GELU whose forward pass (model/kernels/activation.c) also writes the derivative, so backward is
    one product; the derivative is kept instead of the input, which costs the same memory."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        y, derivative = _gelu_tanh_kernel(x, need_derivative=True)
        ctx.save_for_backward(derivative)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (derivative,) = ctx.saved_tensors
        return grad * derivative


def _gelu_tanh_kernel(x: Tensor, need_derivative: bool) -> tuple[Tensor, Tensor | None]:
    lib = rowdot.kernels()
    fn = lib.gelu_tanh_bf16 if x.dtype == torch.bfloat16 else lib.gelu_tanh_f32
    x = x.contiguous()
    y = torch.empty_like(x)
    derivative = torch.empty_like(x) if need_derivative else None
    fn(x.data_ptr(), y.data_ptr(), 0 if derivative is None else derivative.data_ptr(), x.numel())
    return y, derivative


def gelu_tanh(x: Tensor) -> Tensor:
    """F.gelu(x, approximate="tanh"); on a CPU in float32 or bfloat16 through model/kernels/activation.c,
    forward plus backward 2.3x as fast as PyTorch's at the baby GPT's size (BENCHMARKS.md)."""
    if not rowdot.kernels_usable(x):
        return F.gelu(x, approximate="tanh")
    if x.requires_grad and torch.is_grad_enabled():
        return _GeluTanh.apply(x)
    return _gelu_tanh_kernel(x, need_derivative=False)[0]


ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {"gelu": gelu_tanh, "relu2": relu_squared}


def rotary_frequencies(head_size: int) -> Tensor:
    """The head_size // 2 rotation speeds, from one radian per position down to about 1 / ROPE_BASE."""
    return ROPE_BASE ** (-torch.arange(0, head_size, 2, dtype=torch.float32) / head_size)  # (hs/2,)


def apply_rotary(x: Tensor, pos: Tensor, frequencies: Tensor) -> Tensor:
    """Rotate each pair of channels (i, i + hs/2) of x (B, nh, T, hs) by the angle pos[t] * frequencies[i].

    pos (T,) or (B, T) holds absolute token positions, so a cache of earlier keys can pass an offset range.
    """
    angles = pos.to(torch.float32)[..., None] * frequencies  # (T, hs/2), or (B, T, hs/2) for left-padded rows
    if angles.dim() == 3:
        angles = angles[:, None]  # (B, 1, T, hs/2): the same rotation for every head
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)  # 2 x (B, nh, T, hs/2)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)  # (B, nh, T, hs)
