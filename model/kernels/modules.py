"""PyTorch modules whose forward goes through the C kernels (ops.py), each a subclass of the
torch.nn module it stands in for that adds no parameters, buffers or settings of its own.

model/fused.py turns a network's torch.nn modules into these in place (`apply_kernels`), so the
parameters, the state dict and every isinstance check stay as they were. Wherever a kernel doesn't
cover the inputs (another device or dtype, the kernels switched off) the op is PyTorch's own.
"""

from __future__ import annotations

import torch.nn as nn
from torch import Tensor

from model.kernels import ops


class FusedBiasLinear(nn.Linear):
    """nn.Linear whose bias is added inside the matrix product on a CPU (ops.linear)."""

    def forward(self, x: Tensor) -> Tensor:
        return ops.linear(x, self.weight, self.bias)


class LayerNormToBF16(nn.LayerNorm):
    """nn.LayerNorm that, under bfloat16 autocast on a CPU, writes its result in bfloat16 directly
    (ops.layer_norm)."""

    def forward(self, x: Tensor) -> Tensor:
        return ops.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


class HashDropout(nn.Dropout):
    """nn.Dropout whose CPU mask is drawn in C from a seed (ops.dropout)."""

    def forward(self, x: Tensor) -> Tensor:
        return ops.dropout(x, self.p, self.training)


class GELUTanh(nn.GELU):
    """nn.GELU(approximate="tanh") in C, its derivative written in the same pass (ops.gelu)."""

    def forward(self, x: Tensor) -> Tensor:
        return ops.gelu(x)
