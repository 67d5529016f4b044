"""Attention weights from raw scores in one C pass: scale, causal mask, softmax and dropout.

The explicit attention path (model/attention.py) computes softmax(q k^T / sqrt(hs) + mask), then
dropout. In PyTorch each of those is a pass over the (B, nh, T, S) scores, forward and backward, the
largest tensors of a training step. model/kernels/softmax.c does them in one pass each way, skips the
keys a causal query can't see, and recomputes the dropout mask from a seed (model/dropout.py's hash)
instead of storing it. `attention_weights` is that kernel, for scores where `kernel_applies` (a CPU,
float32 or bfloat16, at least as many keys as queries); the caller keeps PyTorch's ops elsewhere and
for masks other than the causal one.
"""

from __future__ import annotations

import torch
from torch import Tensor

from model.kernels import build as rowdot
from model.kernels.dropout import dropout_seed, dropout_threshold


def _forward(scores: Tensor, offset: int, scale: float, p: float, seed: int) -> tuple[Tensor, Tensor]:
    lib = rowdot.kernels()
    fn = lib.softmax_forward_bf16 if scores.dtype == torch.bfloat16 else lib.softmax_forward_f32
    T, S = scores.shape[-2:]
    att = torch.empty_like(scores)
    dropped = torch.empty_like(scores) if p > 0 else att
    fn(scores.data_ptr(), att.data_ptr(), dropped.data_ptr() if p > 0 else 0, scores.numel() // S, T, S, offset,
       scale, seed, dropout_threshold(p), 1.0 / (1.0 - p))
    return att, dropped


class _AttentionWeights(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores: Tensor, offset: int, scale: float, p: float) -> Tensor:
        seed = dropout_seed() if p > 0 else 0
        att, dropped = _forward(scores, offset, scale, p, seed)
        ctx.save_for_backward(att)
        ctx.offset, ctx.scale, ctx.p, ctx.seed = offset, scale, p, seed
        return dropped

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None]:
        (att,) = ctx.saved_tensors
        lib = rowdot.kernels()
        fn = lib.softmax_backward_bf16 if att.dtype == torch.bfloat16 else lib.softmax_backward_f32
        grad = grad.to(att.dtype).contiguous()
        T, S = att.shape[-2:]
        grad_scores = torch.empty_like(att)
        fn(grad.data_ptr(), att.data_ptr(), grad_scores.data_ptr(), att.numel() // S, T, S, ctx.offset, ctx.scale,
           ctx.seed, dropout_threshold(ctx.p), 1.0 / (1.0 - ctx.p), int(ctx.p > 0))
        return grad_scores, None, None, None


def kernel_applies(scores: Tensor, dropout_p: float) -> bool:
    """Whether `attention_weights` can take these scores (B, nh, T, S)."""
    T, S = scores.shape[-2:]
    return S >= T > 0 and 0.0 <= dropout_p < 1.0 and rowdot.kernels_usable(scores)


def attention_weights(scores: Tensor, scale: float, causal: bool, dropout_p: float) -> Tensor:
    """dropout(softmax(scale * scores + causal mask), dropout_p) for scores (B, nh, T, S), where
    kernel_applies. A causal query i sees keys 0 .. S - T + i, as in model/attention.py."""
    if not kernel_applies(scores, dropout_p):
        raise ValueError(f"attention_weights can't take {scores.dtype} scores of shape {tuple(scores.shape)} here")
    T, S = scores.shape[-2:]
    offset = S - T if causal else S
    scores = scores.contiguous()
    if scores.requires_grad and torch.is_grad_enabled():
        return _AttentionWeights.apply(scores, offset, scale, dropout_p)
    return _forward(scores, offset, scale, dropout_p, dropout_seed() if dropout_p > 0 else 0)[1]
