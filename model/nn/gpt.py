"""The GPT: token and position embeddings, a stack of pre-norm transformer blocks, an LM head.

    idx (B, T) -> wte + wpe -> dropout -> n_layer x Block -> ln_f -> lm_head -> logits (B, T, vocab)

Each Block is x = x + dropout(attn(ln_1(x))); x = x + dropout(mlp(ln_2(x))). Parameter names follow
GPT-2's (transformer.h.0.attn.c_attn.weight, ...) so its checkpoints map onto this model one to one.
"""

from __future__ import annotations

import math
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from model.config import GPTConfig
from model.nn.attention import KVCache, MultiHeadAttention
from model.nn.layers import ACTIVATIONS, make_norm

IGNORE_INDEX = -1
"""Targets equal to this (e.g. padding) don't count towards the loss."""


class MLP(nn.Module):
    """Position-wise feed-forward: widen by mlp_ratio, GELU (or ReLU²), project back."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        hidden = config.mlp_ratio * config.n_embd
        self.c_fc = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.activation = ACTIVATIONS[config.activation]()
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(self.activation(self.c_fc(x)))  # (B, T, C)


class Block(nn.Module):
    """Pre-norm residual block: attention, then MLP, each dropped out (while training) and added back
    onto the residual stream."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = make_norm(config.norm, config.n_embd, config.bias)
        self.attn = MultiHeadAttention(
            config.n_embd, config.n_head, bias=config.bias, dropout=config.dropout,
            rope=config.pos_embedding == "rope", qk_norm=config.qk_norm,
        )
        self.ln_2 = make_norm(config.norm, config.n_embd, config.bias)
        self.mlp = MLP(config)
        self.dropout = nn.Dropout(config.dropout)  # on each branch's output, before it joins the stream

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None, cache: KVCache | None = None,
                pos: Tensor | None = None, weights_out: list[Tensor] | None = None) -> Tensor:
        """x (B, T, C) -> (B, T, C); weights_out, if given, receives the attention weights (B, nh, T, S)."""
        h = self.attn(self.ln_1(x), key_padding_mask=key_padding_mask, cache=cache, pos=pos, weights_out=weights_out)
        x = x + self.dropout(h)
        x = x + self.dropout(self.mlp(self.ln_2(x)))
        return x


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        config.check_buildable()
        self.config = config
        self.transformer = nn.ModuleDict(dict(wte=nn.Embedding(config.vocab_size, config.n_embd)))
        if config.pos_embedding == "learned":  # with rope, positions enter inside attention instead
            self.transformer.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.transformer.update(
            dict(
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=make_norm(config.norm, config.n_embd, config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_weights:
            self.lm_head.weight = self.transformer.wte.weight
        self.apply(self._init_weights)
        # GPT-2: each residual branch's output projection is scaled so the stream's variance
        # doesn't grow with depth (two residual additions per layer).
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count, shared (tied) tensors once; non_embedding leaves out the position table
        (the token table is also the LM head when tied, so it stays in, as in GPT-2's count)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and "wpe" in self.transformer:
            n -= self.transformer.wpe.weight.numel()
        return n

    def make_caches(self) -> list[KVCache]:
        """One empty KV cache per layer, each for up to block_size tokens."""
        return [KVCache(self.config.block_size) for _ in self.transformer.h]

    def _hidden(
        self,
        idx: Tensor,
        key_padding_mask: Tensor | None = None,
        caches: list[KVCache] | None = None,
        weights_out: list[Tensor] | None = None,
    ) -> Tensor:
        """The final hidden states (B, T, C) of token ids idx (B, T), before the LM head."""
        B, T = idx.shape
        past = 0 if caches is None else caches[0].length
        if past + T > self.config.block_size:
            raise ValueError(f"sequence of length {past + T} is longer than block_size={self.config.block_size}")
        pos = positions(past, T, key_padding_mask, idx.device)  # (T,) or (B, T)
        x = self.transformer.wte(idx)  # (B, T, C)
        if "wpe" in self.transformer:  # learned positions; rotary ones are applied inside attention
            x = x + self.transformer.wpe(pos)
        x = self.transformer.drop(x)
        for i, block in enumerate(self.transformer.h):
            x = block(x, key_padding_mask, cache=None if caches is None else caches[i], pos=pos, weights_out=weights_out)
        return self.transformer.ln_f(x)

    def forward(
        self, idx: Tensor, targets: Tensor | None = None, key_padding_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """idx (B, T) token ids -> logits (B, T, vocab) and, given targets (B, T), the mean
        cross-entropy over targets that are not IGNORE_INDEX."""
        logits = self.lm_head(self._hidden(idx, key_padding_mask))  # (B, T, vocab)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=IGNORE_INDEX
            )
        return logits, loss

    def next_logits(
        self, idx: Tensor, key_padding_mask: Tensor | None = None, caches: list[KVCache] | None = None
    ) -> Tensor:
        """Logits (B, vocab) for the token after idx (B, T), computing the LM head for the last
        position only. With caches, idx continues the tokens they hold (which it extends), and
        key_padding_mask (B, cached + T) covers those tokens too."""
        x = self._hidden(idx, key_padding_mask, caches)
        return self.lm_head(x[:, -1, :])  # (B, vocab)

    @torch.no_grad()
    def attention_patterns(self, idx: Tensor) -> list[Tensor]:
        """One (B, n_head, T, T) attention pattern per layer, from the explicit attention path."""
        patterns: list[Tensor] = []
        self._hidden(idx, weights_out=patterns)
        return patterns


def positions(past: int, T: int, key_padding_mask: Tensor | None, device: torch.device) -> Tensor:
    """Absolute positions of T new tokens that follow `past` earlier ones: (T,), or (B, T) with a
    key_padding_mask (B, past + T) of left padding, so that each row's first real token is at 0."""
    if key_padding_mask is None:
        return torch.arange(past, past + T, device=device)
    real = (~key_padding_mask.to(device=device, dtype=torch.bool)).long()  # (B, past + T)
    return (real.cumsum(dim=1) - 1).clamp(min=0)[:, past:]  # padding sits at 0 too; it is never seen
