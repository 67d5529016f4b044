"""Attention weights from raw scores in one C pass: scale, causal mask, softmax and dropout.

In PyTorch each of those steps is a pass over the (B, nh, T, S) scores, forward and backward, the
largest tensors of a training step. model/kernels/attention_probs.c does them in one pass each way,
skips the keys a causal query can't see, and recomputes the dropout mask from a seed (the hash of
model/kernels/dropout.c) instead of storing it.

The custom op tinygpt::attention_probs returns the weights that multiply the values (dropped out
when p > 0) and, when p > 0, the weights before dropout, which its backward needs; its backward is
the op tinygpt::attention_probs_backward. model/kernels/ops.py decides when to call them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from model.kernels.build import library
from model.kernels.dropout import mask_args


@torch.library.custom_op("tinygpt::attention_probs", mutates_args=(), device_types="cpu")
def fused_attention_probs(scores: Tensor, offset: int, scale: float, p: float, seed: Tensor) -> tuple[Tensor, Tensor]:
    """dropout(softmax(scale * scores + mask), p) for contiguous scores (B, nh, T, S), where query i
    sees keys 0 .. i + offset. Returns those weights and, when p > 0, the weights before dropout
    (else an empty tensor)."""
    lib = library()
    fn = lib.softmax_forward_bf16 if scores.dtype == torch.bfloat16 else lib.softmax_forward_f32
    T, S = scores.shape[-2:]
    att = torch.empty_like(scores)
    dropped = torch.empty_like(scores) if p > 0 else None
    fn(scores.data_ptr(), att.data_ptr(), 0 if dropped is None else dropped.data_ptr(), scores.numel() // S, T, S,
       offset, scale, *mask_args(seed, p))
    return (att, scores.new_empty(0)) if dropped is None else (dropped, att)


@fused_attention_probs.register_fake
def _(scores: Tensor, offset: int, scale: float, p: float, seed: Tensor) -> tuple[Tensor, Tensor]:
    return torch.empty_like(scores), torch.empty_like(scores) if p > 0 else scores.new_empty(0)


@torch.library.custom_op("tinygpt::attention_probs_backward", mutates_args=(), device_types="cpu")
def fused_attention_probs_backward(grad: Tensor, att: Tensor, offset: int, scale: float, p: float,
                                   seed: Tensor) -> Tensor:
    """The gradient of the scores, from that of the weights (grad) and the weights before dropout (att)."""
    lib = library()
    fn = lib.softmax_backward_bf16 if att.dtype == torch.bfloat16 else lib.softmax_backward_f32
    grad = grad.to(att.dtype).contiguous()
    T, S = att.shape[-2:]
    grad_scores = torch.empty_like(att)
    fn(grad.data_ptr(), att.data_ptr(), grad_scores.data_ptr(), att.numel() // S, T, S, offset, scale,
       *mask_args(seed, p), int(p > 0))
    return grad_scores


@fused_attention_probs_backward.register_fake
def _(grad: Tensor, att: Tensor, offset: int, scale: float, p: float, seed: Tensor) -> Tensor:
    return torch.empty_like(att)


def _save_weights(ctx, inputs: tuple, output: tuple[Tensor, Tensor]) -> None:
    _, ctx.offset, ctx.scale, ctx.p, ctx.seed = inputs
    ctx.save_for_backward(output[1] if ctx.p > 0 else output[0])  # the weights before dropout


def _backward(ctx, grad: Tensor, _grad_of_undropped: Tensor | None) -> tuple[Tensor, None, None, None, None]:
    (att,) = ctx.saved_tensors
    return fused_attention_probs_backward(grad, att, ctx.offset, ctx.scale, ctx.p, ctx.seed), None, None, None, None


fused_attention_probs.register_autograd(_backward, setup_context=_save_weights)
