"""Multi-head attention: the one place where tokens look at each other.

For every position, a query vector asks "what am I looking for?", every position's key vector says
"what do I contain?", and its value vector says "what do I hand over if chosen". A head scores each
query against every key (a dot product, scaled by 1/sqrt(head_size) so the softmax doesn't saturate
as heads widen), turns the scores into weights with a softmax, and returns the weighted sum of the
values. The causal mask sets the scores of future keys to -inf before the softmax, so position t
only ever sees positions <= t: that is what lets a GPT train on every position of a sequence at once.
Several heads run side by side on slices of the channels, each free to attend to something else, and
an output projection mixes their results back into the residual stream.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from model.nn.layers import RMSNorm, apply_rotary, rotary_frequencies


class KVCache:
    """The keys and values one attention layer has computed so far, so that decoding a token costs
    one query against stored keys instead of recomputing the whole prefix.

    The buffers are allocated once, at full size (B, nh, max_len, hs), on the first append (taking
    the batch size, dtype and device of the keys) and filled left to right: appending writes in place
    and returns views, so a decoding step allocates nothing for the cache.
    """

    def __init__(self, max_len: int):
        self.max_len = max_len
        self.length = 0
        self.k: Tensor | None = None
        self.v: Tensor | None = None

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store k, v (B, nh, T, hs); return all stored keys and values, (B, nh, length, hs)."""
        B, nh, T, hs = k.shape
        end = self.length + T
        if end > self.max_len:
            raise ValueError(f"KV cache holds at most {self.max_len} tokens, got {end}")
        if self.k is None or self.k.shape[0] != B or self.k.dtype != k.dtype:
            self.k = k.new_empty(B, nh, self.max_len, hs)
            self.v = v.new_empty(B, nh, self.max_len, hs)
        self.k[:, :, self.length:end] = k
        self.v[:, :, self.length:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]

    def reset(self) -> None:
        """Forget the stored tokens (the buffers are kept for reuse)."""
        self.length = 0


class MultiHeadAttention(nn.Module):
    """Causal self-attention, and cross-attention when given a `context` sequence.

    The query, key and value projections are stored as one (3*n_embd, n_embd) matrix, `c_attn`, in
    the order [W_Q; W_K; W_V] (GPT-2's layout, and torch.nn.MultiheadAttention's `in_proj_weight`),
    so self-attention does all three in one matmul. Cross-attention applies the W_Q rows to `x` and
    the W_K, W_V rows to `context`.

    `dropout` drops attention weights while training, as in torch.nn.MultiheadAttention; the dropout
    on the output, before it joins the residual stream, belongs to the caller (gpt.Block), as in the
    Transformer paper.
    """

    def __init__(
        self, n_embd: int, n_head: int, bias: bool = True, dropout: float = 0.0, rope: bool = False, qk_norm: bool = False
    ):
        super().__init__()
        if n_embd % n_head != 0:
            raise ValueError(f"n_embd={n_embd} is not divisible by n_head={n_head}")
        self.n_head = n_head
        self.n_embd = n_embd
        self.head_size = n_embd // n_head
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.attn_dropout = nn.Dropout(dropout)
        # optional: RMS-normalised queries and keys, rotary positions (self-attention only)
        self.q_norm = RMSNorm(self.head_size) if qk_norm else None
        self.k_norm = RMSNorm(self.head_size) if qk_norm else None
        self.rope = rope
        if rope:
            self.register_buffer("rope_frequencies", rotary_frequencies(self.head_size), persistent=False)

    def _split_heads(self, t: Tensor) -> Tensor:
        B, T, _ = t.shape
        return t.view(B, T, self.n_head, self.head_size).transpose(1, 2)  # (B, nh, T, hs)

    def project_qkv(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Queries from x; keys and values from context (cross) or from x (self). Each (B, nh, T, hs)."""
        if context is None:
            B, T, _ = x.shape
            # one copy into head-major layout, so the attention products below take q, k, v (and k's
            # transpose) as they are instead of each making its own contiguous copy
            qkv = self.c_attn(x).view(B, T, 3, self.n_head, self.head_size)
            return qkv.permute(2, 0, 3, 1, 4).contiguous().unbind(0)  # 3 x (B, nh, T, hs)
        w_q, w_kv = self.c_attn.weight.split([self.n_embd, 2 * self.n_embd], dim=0)
        b_q, b_kv = (None, None) if self.c_attn.bias is None else self.c_attn.bias.split([self.n_embd, 2 * self.n_embd])
        q = F.linear(x, w_q, b_q)  # (B, T, C)
        k, v = F.linear(context, w_kv, b_kv).split(self.n_embd, dim=2)  # 2 x (B, S, C)
        return self._split_heads(q), self._split_heads(k), self._split_heads(v)

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        causal: bool | None = None,
        cache: KVCache | None = None,
        pos: Tensor | None = None,
        weights_out: list[Tensor] | None = None,
    ) -> Tensor:
        """Attend from x (B, T, C) over x itself or over `context` (B, S, C); returns (B, T, C).

        key_padding_mask: (B, S) bool, True marks a key to ignore (e.g. padding), as in
            torch.nn.MultiheadAttention.
        causal: mask future keys; defaults to True for self-attention, False for cross-attention.
            With S > T (keys that start earlier than the queries) query i sits at position S - T + i.
        cache: self-attention only; the keys and values of x are appended to it and the queries
            attend over everything it holds (S = cached + T keys; key_padding_mask then covers all S).
        pos: absolute position of each query, (T,) or (B, T). Learned position embeddings are added
            in GPT, so only rotary attention uses it; it defaults to 0 .. T-1.
        weights_out: a list to append the attention weights (B, nh, T, S) to, whose rows sum to 1 (as
            applied to the values: after dropout, while training). This takes the explicit steps;
            without it PyTorch's fused F.scaled_dot_product_attention computes the same.
        """
        if causal is None:
            causal = context is None
        q, k, v = self.project_qkv(x, context)  # (B, nh, T, hs), (B, nh, S, hs), (B, nh, S, hs)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rope and context is None:
            pos = torch.arange(x.shape[1], device=x.device) if pos is None else pos  # (T,)
            q, k = apply_rotary(q, pos, self.rope_frequencies), apply_rotary(k, pos, self.rope_frequencies)
        if cache is not None:
            k, v = cache.append(k, v)  # (B, nh, S, hs) with S = cached + T
        y = self.attend(q, k, v, key_padding_mask, causal, weights_out)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(x.shape[0], x.shape[1], self.n_embd)  # (B, T, C)
        return self.c_proj(y)

    def attend(
        self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None, causal: bool,
        weights_out: list[Tensor] | None = None,
    ) -> Tensor:
        """softmax(q k^T / sqrt(hs) + mask) v for every head at once: (B, nh, T, hs)."""
        T, S = q.shape[-2], k.shape[-2]
        if causal and key_padding_mask is None and T == 1:
            causal = False  # one new query after all the (cached) keys may see every one of them
        if weights_out is None:
            # Nobody looks at the weights: PyTorch's fused kernel does the steps below without ever
            # storing the (T, S) weights. Its is_causal aligns query i with key i, so a causal mask
            # with as many queries as keys needs no mask tensor.
            fused_causal = causal and key_padding_mask is None and T == S
            mask = None if fused_causal else build_mask(T, S, causal, key_padding_mask, q.device)
            dropout_p = self.attn_dropout.p if self.training else 0.0
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=fused_causal)
        mask = build_mask(T, S, causal, key_padding_mask, q.device)  # None or (B or 1, 1, T, S), True = may attend
        scores = q @ k.transpose(-2, -1)  # (B, nh, T, S): how well each query matches each key
        scores = scores * (1.0 / math.sqrt(q.shape[-1]))
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))  # a masked key gets weight exp(-inf) = 0
        # in bfloat16 the softmax accumulates in float32 and rounds once
        att = F.softmax(scores, dim=-1)  # (B, nh, T, S), each row sums to 1
        att = self.attn_dropout(att)
        weights_out.append(att)
        return att @ v  # (B, nh, T, S) x (B, nh, S, hs) -> (B, nh, T, hs)


def build_mask(T: int, S: int, causal: bool, key_padding_mask: Tensor | None, device: torch.device) -> Tensor | None:
    """Boolean mask (True = may attend) for T queries over S keys, broadcastable to (B, nh, T, S)."""
    mask = None
    if causal:
        # query i is at absolute position S - T + i and may see keys 0 .. S - T + i
        mask = torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=S - T)[None, None]  # (1, 1, T, S)
    if key_padding_mask is not None:
        keep = ~key_padding_mask.to(device=device, dtype=torch.bool)[:, None, None, :]  # (B, 1, 1, S)
        mask = keep if mask is None else mask & keep
        if causal:
            # A padding query (left padding) may see no key at all; its softmax row of -inf would be
            # NaN, which leaks into later layers through 0 * NaN. Such a query (and only such a one,
            # so every other row equals torch.nn.MultiheadAttention's) sees itself instead; real
            # queries never look at it.
            itself = torch.zeros(T, S, dtype=torch.bool, device=device)
            itself[torch.arange(T), torch.arange(S - T, S)] = True
            mask = mask | (itself & ~mask.any(dim=-1, keepdim=True))
    return mask


