"""The optional C kernels applied to a network from outside, by one call: `apply_kernels(model)`.

model/nn is plain PyTorch and imports nothing from model/kernels; model/kernels offers the kernels
and modules built on them (model/kernels/modules.py) without naming the network's classes. This
module knows both. It turns each module of a model, in place, into a subclass whose forward runs
through the C kernels (as Liger-Kernel patches a transformers model):

    nn.Linear                  -> FusedBiasLinear   the bias added inside oneDNN's product
    nn.LayerNorm               -> LayerNormToBF16   bfloat16 output under bfloat16 autocast
    nn.GELU(approximate=tanh)  -> GELUTanh          GELU and its derivative in one pass
    nn.Dropout                 -> HashDropout       the mask from a hash of a seed, on every core
    MultiHeadAttention         -> KernelAttention   scale, causal mask, softmax and dropout in one pass
    Block                      -> KernelBlock       x + dropout(branch) in one pass each way

Only a module's class changes, to a subclass that adds no state (as torch's FSDP2 `fully_shard`
does), so the model keeps its parameters, its state dict, its tied weights and every isinstance
check: checkpoints, GPT-2 conversion and the optimizer see the same model. Call it before
wrapping the model (DDP, FSDP, torch.compile). Each kernel still falls back to PyTorch's op
wherever it doesn't cover the inputs (a GPU, float16, no C compiler), and apply_kernels does
nothing at all when the kernels are switched off (TINYGPT_KERNELS=0, or the training config's
`kernels = false`).
"""

from __future__ import annotations

import math

import torch.nn as nn
from torch import Tensor

from model.kernels import build, ops
from model.kernels.modules import FusedBiasLinear, GELUTanh, HashDropout, LayerNormToBF16
from model.nn.attention import KVCache, MultiHeadAttention
from model.nn.gpt import Block


class KernelAttention(MultiHeadAttention):
    """MultiHeadAttention whose training on a CPU takes the explicit steps where they are faster
    than PyTorch's fused kernel (ops.explicit_is_faster), with scale, causal mask, softmax and
    dropout in one C pass (ops.attention_probs); key-padding masks take MultiHeadAttention's path."""

    def attend(
        self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None, causal: bool,
        weights_out: list[Tensor] | None = None,
    ) -> Tensor:
        dropout_p = self.attn_dropout.p if self.training else 0.0
        if key_padding_mask is not None or (weights_out is None and not ops.explicit_is_faster(q, k.shape[-2], dropout_p)):
            return super().attend(q, k, v, key_padding_mask, causal, weights_out)
        scores = q @ k.transpose(-2, -1)  # (B, nh, T, S)
        att = ops.attention_probs(scores, 1.0 / math.sqrt(q.shape[-1]), None, dropout_p, causal=causal)
        if weights_out is not None:
            weights_out.append(att)
        return att @ v  # (B, nh, T, hs)


class KernelBlock(Block):
    """Block whose residual steps x + dropout(branch) are one C pass each way while training
    (ops.dropout_add), instead of a dropout, an add and, in backward, a cast of the stream's gradient."""

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None, cache: KVCache | None = None,
                pos: Tensor | None = None, weights_out: list[Tensor] | None = None) -> Tensor:
        p, training = self.dropout.p, self.training
        h = self.attn(self.ln_1(x), key_padding_mask=key_padding_mask, cache=cache, pos=pos, weights_out=weights_out)
        x = ops.dropout_add(x, h, p, training)
        return ops.dropout_add(x, self.mlp(self.ln_2(x)), p, training)


FUSED: dict[type[nn.Module], type[nn.Module]] = {
    nn.Linear: FusedBiasLinear,
    nn.LayerNorm: LayerNormToBF16,
    nn.GELU: GELUTanh,
    nn.Dropout: HashDropout,
    MultiHeadAttention: KernelAttention,
    Block: KernelBlock,
}
"""Each module class that has a kernel version, and that version: a subclass without state of its own."""


def fused_class(module: nn.Module) -> type[nn.Module] | None:
    """The class module becomes under apply_kernels, or None: only exact instances of FUSED's keys
    (a subclass may compute something else), and GELU only with GPT-2's tanh approximation."""
    fused = FUSED.get(type(module))
    if isinstance(module, nn.GELU) and module.approximate != "tanh":
        return None
    return fused


def apply_kernels(model: nn.Module) -> nn.Module:
    """Let the C kernels run model's modules (see the module docstring), in place; returns model.
    Does nothing when the kernels are switched off, and nothing more on a second call."""
    if not build.enabled():
        return model
    for module in model.modules():
        fused = fused_class(module)
        if fused is not None:
            module.__class__ = fused
    return model
