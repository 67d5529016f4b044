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

ROPE_BASE = 10000.0
"""Wavelength scale of the rotary frequencies, as in the RoFormer paper."""


class RMSNorm(nn.RMSNorm):
    """nn.RMSNorm that follows its input's dtype: under bfloat16 autocast a float32 gain would send
    torch.rms_norm down its slow unfused path, so the gain is cast to the input's dtype instead."""

    def forward(self, x: Tensor) -> Tensor:
        weight = None if self.weight is None else self.weight.to(x.dtype)
        return F.rms_norm(x, self.normalized_shape, weight, self.eps)


def make_norm(kind: str, dim: int, bias: bool = True) -> nn.Module:
    """'layernorm' (with a bias when `bias`) or 'rmsnorm' (a gain only)."""
    if kind == "rmsnorm":
        return RMSNorm(dim)
    return nn.LayerNorm(dim, bias=bias)


class ReLUSquared(nn.Module):
    """Squared ReLU, relu(x)^2: about as cheap as ReLU, and as sparse."""

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x).square()


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "gelu": lambda: nn.GELU(approximate="tanh"),  # GPT-2's: x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    "relu2": ReLUSquared,
}
"""The MLP nonlinearities, by GPTConfig.activation: each entry makes the module."""


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
