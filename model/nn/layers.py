"""Architecture options chosen in GPTConfig: the normalisation, the MLP nonlinearity, rotary positions.

GPT-2 uses LayerNorm, GELU and a learned position table. Later models (LLaMA, modded-nanogpt) often
swap in RMSNorm (skip the mean, no bias), squared ReLU (cheaper than GELU, and sparse) and rotary
position embeddings (RoPE), which encode a token's position by rotating its query and key vectors,
so a dot product between them depends only on how far apart the two tokens are.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from model.kernels import ops

ROPE_BASE = 10000.0
"""Wavelength scale of the rotary frequencies, as in the RoFormer paper."""


class RMSNorm(nn.RMSNorm):
    """nn.RMSNorm that follows its input's dtype: under bfloat16 autocast a float32 gain would send
    torch.rms_norm down its slow unfused path, so the gain is cast to the input's dtype instead."""

    def forward(self, x: Tensor) -> Tensor:
        weight = None if self.weight is None else self.weight.to(x.dtype)
        return F.rms_norm(x, self.normalized_shape, weight, self.eps)


class Linear(nn.Linear):
    """nn.Linear (same parameters, same state dict) through ops.linear, which on a CPU adds the bias
    inside the matrix product."""

    def forward(self, x: Tensor) -> Tensor:
        return ops.linear(x, self.weight, self.bias)


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm (same parameters, same state dict) through ops.layer_norm, which under bfloat16
    autocast on a CPU writes its result in bfloat16 directly."""

    def forward(self, x: Tensor) -> Tensor:
        return ops.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


class Dropout(nn.Dropout):
    """nn.Dropout (same arguments, no state) through ops.dropout, whose CPU mask is drawn in C."""

    def forward(self, x: Tensor) -> Tensor:
        return ops.dropout(x, self.p, self.training)


def make_norm(kind: str, dim: int, bias: bool = True) -> nn.Module:
    """'layernorm' (with a bias when `bias`) or 'rmsnorm' (a gain only)."""
    if kind == "rmsnorm":
        return RMSNorm(dim)
    return LayerNorm(dim, bias=bias)


def relu_squared(x: Tensor) -> Tensor:
    return F.relu(x).square()


def gelu(x: Tensor) -> Tensor:
    """GELU with GPT-2's tanh approximation: x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return ops.gelu(x)


ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {"gelu": gelu, "relu2": relu_squared}


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
