"""A fast path for decoding one sequence at a time on a CPU: each linear layer as row dot products.

Decoding one token multiplies a single row x (in,) by every weight matrix W (out, in). That reads
every weight once and does two flops per weight, so its speed is the speed at which the weights
stream from memory. PyTorch hands F.linear on a one-row input to the BLAS as a matrix product, which
on a laptop-class CPU often reaches a fraction of the memory bandwidth. The same product written as
`(W * x).sum(-1)` and compiled by torch.compile becomes one loop over the rows of W, split across
the cores, each row a vectorised dot product with x read straight from memory: the access pattern
that keeps every core's memory stream busy. bf16 weights are widened to float32 in registers, so
they halve the bytes read and still accumulate in float32.

Compiling costs some seconds per distinct weight shape (five in a GPT), once per process (the
compiled kernels are also cached on disk by torch), so this pays off for long generations.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


def rowdot(weight: Tensor, x: Tensor, bias: Tensor | None) -> Tensor:
    """weight (out, in) times one row x (in,) -> (out,), accumulated in float32."""
    y = (weight.float() * x.float()).sum(dim=-1)  # (out,)
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


class RowDotLinear(nn.Module):
    """nn.Linear (same parameters, same names) whose one-row inputs go through `kernel`, a
    (compiled) rowdot; anything larger (a prompt, a batch) goes through F.linear as before."""

    def __init__(self, linear: nn.Linear, kernel=rowdot):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight  # the same Parameter, so tied weights stay tied
        self.bias = linear.bias
        self.kernel = kernel

    def forward(self, x: Tensor) -> Tensor:
        if x.numel() != self.in_features:
            return F.linear(x, self.weight, self.bias)
        return self.kernel(self.weight, x.reshape(-1), self.bias).view(*x.shape[:-1], self.out_features)


def use_rowdot(model: nn.Module, compile: bool = True) -> nn.Module:
    """Swap every nn.Linear in model for a RowDotLinear, in place; returns the model."""
    if compile:
        import torch._dynamo

        # one compiled kernel per (shape, dtype, bias or not): a GPT has five shapes, and a process
        # may hold models of several sizes and dtypes, beyond torch's default of 8 per function
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    kernel = torch.compile(rowdot, dynamic=False) if compile else rowdot
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                weight = child.weight
                if not weight.is_contiguous():  # a row-major (out, in) weight is what the loop reads
                    weight.data = weight.data.contiguous()
                setattr(parent, name, RowDotLinear(child, kernel))
    return model
