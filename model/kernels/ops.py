"""PyTorch ops with a C kernel that may stand in for them: what the fused modules (modules.py) call.

Each function computes exactly what its PyTorch reference computes (the code at its end) and picks
the C kernel of this folder when that kernel covers the inputs: float32 or bfloat16 tensors on the
CPU (or on the meta device, so that tracing sees the same ops), and the kernel library built here and
not switched off (model/kernels/build.py). The kernels are PyTorch custom ops (tinygpt::*), each with
a fake implementation and an autograd formula, so autograd, torch.compile, the meta device and
FlopCounterMode all see them as ordinary ops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from model.kernels import build
from model.kernels.activation import gelu_tanh
from model.kernels.attention_probs import fused_attention_probs
from model.kernels.dropout import draw_seed, hash_dropout, hash_dropout_add
from model.kernels.layernorm import layer_norm_to_bf16
from model.kernels.linear import fused_bias_linear, fused_bias_linear_available

KERNEL_DTYPES = (torch.float32, torch.bfloat16)


# asked once per compiled graph: torch.compile keeps their answers as constants
@torch.compiler.assume_constant_result
def _library_available() -> bool:
    return build.library() is not None


@torch.compiler.assume_constant_result
def _replaces_threaded_ops() -> bool:
    return build.replaces_threaded_ops()


@torch.compiler.assume_constant_result
def _fused_bias_linear_usable() -> bool:
    return build.enabled() and fused_bias_linear_available()


def kernel_covers(*tensors: Tensor, threaded: bool = True) -> bool:
    """Whether the C kernels can take these tensors: float32 or bfloat16, on the CPU (or meta), and
    the library available. threaded: the PyTorch op it replaces runs on several threads, so a build
    without OpenMP (one core) must not take its place."""
    if not all(t.dtype in KERNEL_DTYPES and t.device.type in ("cpu", "meta") for t in tensors):
        return False
    return _replaces_threaded_ops() if threaded else _library_available()


def gelu(x: Tensor) -> Tensor:
    """F.gelu(x, approximate="tanh")."""
    if kernel_covers(x):
        return gelu_tanh(x, x.requires_grad and torch.is_grad_enabled())[0]
    return F.gelu(x, approximate="tanh")


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """F.dropout(x, p, training); the C kernel draws its mask from a seed that PyTorch's generator
    gives, so torch.manual_seed repeats it, though not F.dropout's mask."""
    if not training or p == 0.0:
        return x
    if 0.0 < p < 1.0 and kernel_covers(x, threaded=False):
        return hash_dropout(x, draw_seed(x.device), p, x.dtype)
    return F.dropout(x, p, training)


def dropout_add(x: Tensor, h: Tensor, p: float, training: bool = True) -> Tensor:
    """x + dropout(h, p): a residual branch h, dropped out, added onto the residual stream x. With x
    in float32 and h in float32 or bfloat16 (autocast), the C kernel does it in one pass each way
    instead of three (dropout, add, and in backward the cast of the stream's gradient to h's dtype)."""
    if not training or p == 0.0:
        return x + h
    if (0.0 < p < 1.0 and x.dtype == torch.float32 and x.shape == h.shape
            and kernel_covers(x, h, threaded=False)):
        return hash_dropout_add(x, h, draw_seed(x.device), p)
    return x + dropout(h, p, training)


def attention_probs(scores: Tensor, scale: float, mask: Tensor | None, dropout_p: float = 0.0,
                    causal: bool = False) -> Tensor:
    """The attention weights from raw scores (B, nh, T, S): dropout(softmax(scale * scores, masked)).

    mask: boolean, True where a query may attend to a key, broadcastable to the scores; None lets
    every query see every key. causal=True says that the mask is the causal one, query i seeing keys
    0 .. S - T + i (the queries are the last T of the S positions), and nothing else (mask may then be
    None): the C kernel applies it without reading it and skips the keys no query can see."""
    T, S = scores.shape[-2:]
    if (mask is None or causal) and S >= T > 0 and 0.0 <= dropout_p < 1.0 and kernel_covers(scores):
        seed = draw_seed(scores.device) if dropout_p > 0 else scores.new_zeros(1, dtype=torch.int64)
        offset = S - T if causal else S
        return fused_attention_probs(scores.contiguous(), offset, scale, dropout_p, seed)[0]
    if causal and mask is None:
        mask = torch.ones(T, S, dtype=torch.bool, device=scores.device).tril(diagonal=S - T)  # (T, S)
    scores = scores * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))  # a masked key gets weight exp(-inf) = 0
    # in bfloat16 PyTorch's softmax accumulates in float32 and rounds once, as upcasting first would,
    # without copying the (B, nh, T, S) scores to float32 and back
    att = F.softmax(scores, dim=-1).to(scores.dtype)
    return dropout(att, dropout_p)


def layer_norm(x: Tensor, normalized_shape: tuple[int, ...], weight: Tensor | None, bias: Tensor | None,
               eps: float) -> Tensor:
    """F.layer_norm. Under bfloat16 autocast on a CPU PyTorch's result is float32, which the next
    matmul casts to bfloat16; the C kernel writes bfloat16 directly (the same float32 arithmetic)."""
    if (x.dtype == torch.float32 and len(normalized_shape) == 1 and weight is not None
            and weight.dtype == torch.float32 and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16 and kernel_covers(x)):
        return layer_norm_to_bf16(x, weight, bias, eps)[0]
    return F.layer_norm(x, normalized_shape, weight, bias, eps)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """F.linear. With a bias, on a CPU, oneDNN adds the bias as it writes the product rather than in a
    pass of its own (a private PyTorch op, kept in model/kernels/linear.py; off with the C kernels'
    switch). Under CPU autocast the operands are cast as F.linear would cast them."""
    if bias is None or x.dim() < 2 or not _fused_bias_linear_usable():
        return F.linear(x, weight, bias)
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
    if dtype not in KERNEL_DTYPES or not (x.device.type == weight.device.type == "cpu" or x.device.type == "meta"):
        return F.linear(x, weight, bias)
    return fused_bias_linear(x.to(dtype), weight.to(dtype), bias.to(dtype))


EXPLICIT_MAX_KEYS = 128
"""Longest key sequence for which training in bfloat16/float16 on a CPU takes the explicit path."""


def explicit_is_faster(q: Tensor, S: int, dropout_p: float) -> bool:
    """Whether training attention is faster as explicit steps (q k^T, then attention_probs, then @ v)
    than through PyTorch's fused F.scaled_dot_product_attention, as measured on CPUs (BENCHMARKS.md):
    in bfloat16 the fused (flash) kernel's backward is slow for short sequences, and with dropout the
    fused kernels don't run on a CPU at all (PyTorch falls back to a slower composite). Longer
    sequences without dropout keep the fused kernel, which also never stores the (T, S) score matrix;
    float32 without dropout, inference, GPUs and the meta device (which stands for a GPU when a model
    is traced) keep it always."""
    short_half = S <= EXPLICIT_MAX_KEYS and q.dtype in (torch.bfloat16, torch.float16)
    return q.requires_grad and q.device.type == "cpu" and (short_half or dropout_p > 0)
