"""Continuous batching: sequences that join a running batch of decoding and leave it at any step.

A server decoding for several users at once wants one forward pass per step for all of them, so the
weights are read once per step however many sequences there are. But its sequences don't start
together: a request that arrives while others are generating joins at the next step, and a finished
one leaves. RunningBatch keeps every sequence's keys and values in one set of per-layer buffers,
(capacity, nh, block_size, hs), where row r holds sequence r's cache right-aligned on the shared
columns 0 .. length-1, with `pad[r]` columns of left padding (hidden by the key-padding mask, so
positions still count from each sequence's first real token, as in generate()'s left padding):

    columns:   0 1 2 3 4 5 6 7        length = 8
    row 0      . . . a b c d e        pad 3 (joined with a shorter prompt)
    row 1      f g h i j k l m        pad 0

- join: the prompt is prefilled into a free row, right-aligned at the shared length; a prompt
  longer than that shifts every row right first. The running rows wait for that one prefill.
- step: each row's newest token goes through the model as one (B, 1) batch, extending the caches
  by one column; with a single row and no padding, a batch-1 step in C (prepare_for_sampling's
  decoder) does it instead, as in generate().
- leave: the last row moves into the freed one, and padding every row shares is shifted out.

A sequence whose context is full (block_size tokens) slides, as in generate(): from then on its
logits are recomputed each step from its last block_size tokens, which no cache can hold (the
learned positions of every token shift by one), in one batch with the other full sequences.
"""

from __future__ import annotations

import torch
from torch import Tensor

from model.nn.attention import KVCache
from model.nn.gpt import GPT
from model.sampling.generate import cut_to_vocabulary


class Sequence:
    """One sequence in a RunningBatch: the tokens it has seen (the last block_size of them)."""

    def __init__(self, tokens: list[int]):
        self.tokens = list(tokens)
        self.row: int | None = None  # its row in the shared caches; None once its context is full


class RunningBatch:
    """Decode any number of sequences together, each joining and leaving at any step; `capacity`
    bounds how many are in the batch at once (the caches grow up to it as sequences join).
    vocab_size: the tokenizer's, when the model has more vocabulary rows; the logits returned cover
    only its ids (cut_to_vocabulary, as in generate())."""

    def __init__(self, model: GPT, capacity: int, vocab_size: int | None = None):
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.model = model
        self.capacity = capacity
        self.vocab_size = vocab_size
        self.block_size = model.config.block_size
        self.cached: list[Sequence] = []  # in row order
        self.sliding: list[Sequence] = []
        self.pad: list[int] = []  # left padding of each cached row
        self.length = 0  # shared columns in use
        self.keys: list[Tensor] = []  # per layer (rows, nh, block_size, hs)
        self.values: list[Tensor] = []
        fast = getattr(model, "fast_decoder", None)  # the C decoder, if it still fits the model's weights
        self.fast = fast if fast is not None and fast.matches(model) else None

    def __len__(self) -> int:
        return len(self.cached) + len(self.sliding)

    @property
    def sequences(self) -> list[Sequence]:
        return self.cached + self.sliding

    @torch.inference_mode()
    def join(self, prompt: list[int]) -> tuple[Sequence, Tensor]:
        """Add a sequence continuing `prompt`; returns it and the logits (vocab,) of its first new token."""
        if not prompt:
            raise ValueError("a sequence needs at least one token")
        if len(self) >= self.capacity:
            raise RuntimeError(f"the batch is full ({self.capacity} sequences)")
        seq = Sequence(prompt[-self.block_size:])
        if len(seq.tokens) >= self.block_size:  # no room for another column: slide from the start
            self.sliding.append(seq)
            return seq, self._window_logits([seq])[0]
        P = len(seq.tokens)
        if P > self.length:
            self._shift(P - self.length)  # make room on the left for the longer prompt
        row = len(self.cached)
        self._ensure_rows(row + 1)
        start = self.length - P
        caches = self._caches(slice(row, row + 1), start)
        pad = None
        if start > 0:
            pad = torch.arange(self.length, device=self.keys[0].device)[None, :] < start  # (1, length)
        ids = torch.tensor([seq.tokens], dtype=torch.long, device=self.keys[0].device)  # (1, P)
        logits = cut_to_vocabulary(self.model.next_logits(ids, pad, caches)[0], self.vocab_size)  # (vocab,)
        seq.row = row
        self.cached.append(seq)
        self.pad.append(start)
        return seq, logits

    @torch.inference_mode()
    def step(self, tokens: dict[Sequence, int]) -> dict[Sequence, Tensor]:
        """Feed each sequence its next token; returns each one's logits (vocab,) for the token after."""
        if set(tokens) != set(self.sequences):
            raise ValueError("step needs one token for every sequence in the batch")
        for seq in [s for s in self.cached if len(s.tokens) >= self.block_size]:  # full: slide from now on
            self._remove_row(seq)
            self.sliding.append(seq)
        for seq, token in tokens.items():
            seq.tokens.append(token)
            del seq.tokens[: -self.block_size - 1]
        out: dict[Sequence, Tensor] = {}
        if self.cached:
            logits = self._cached_step([seq.tokens[-1] for seq in self.cached])
            out.update(zip(self.cached, logits))
        if self.sliding:
            for seq in self.sliding:
                del seq.tokens[: -self.block_size]
            out.update(zip(self.sliding, self._window_logits(self.sliding)))
        return out

    @torch.inference_mode()
    def leave(self, seq: Sequence) -> None:
        """Take a sequence out of the batch (finished, or its client gone)."""
        if seq in self.sliding:
            self.sliding.remove(seq)
        elif seq in self.cached:
            self._remove_row(seq)

    def _cached_step(self, last: list[int]) -> Tensor:
        """One new token per cached row -> logits (rows, vocab)."""
        n = len(self.cached)
        caches = self._caches(slice(0, n), self.length)
        if n == 1 and self.pad[0] == 0 and self.fast is not None and self.fast.usable(caches):
            logits = self.fast.step(last[0], caches).clone()  # (1, vocab); its buffer is reused
        else:
            device = self.keys[0].device
            ids = torch.tensor(last, dtype=torch.long, device=device)[:, None]  # (n, 1)
            pad = None
            if any(self.pad):
                pads = torch.tensor(self.pad, device=device)[:, None]  # (n, 1)
                pad = torch.arange(self.length + 1, device=device)[None, :] < pads  # (n, length + 1)
            logits = self.model.next_logits(ids, pad, caches)  # (n, vocab)
        self.length += 1
        return cut_to_vocabulary(logits, self.vocab_size)

    def _window_logits(self, seqs: list[Sequence]) -> Tensor:
        """Logits (len(seqs), vocab) from each sequence's last block_size tokens, without a cache."""
        device = self.model.lm_head.weight.device
        ids = torch.tensor([s.tokens[-self.block_size:] for s in seqs], dtype=torch.long, device=device)
        return cut_to_vocabulary(self.model.next_logits(ids), self.vocab_size)

    def _caches(self, rows: slice, length: int) -> list[KVCache]:
        """KV caches over the given rows of the shared buffers, holding `length` columns."""
        caches = []
        for k, v in zip(self.keys, self.values):
            cache = KVCache(self.block_size)
            cache.k, cache.v, cache.length = k[rows], v[rows], length
            caches.append(cache)
        return caches

    def _ensure_rows(self, rows: int) -> None:
        """Grow the buffers to hold `rows` rows (doubling, up to capacity), keeping what they hold."""
        if self.keys and self.keys[0].size(0) >= rows:
            return
        size = min(self.capacity, max(rows, 2 * (self.keys[0].size(0) if self.keys else 0)))
        config, weight = self.model.config, self.model.lm_head.weight
        shape = (size, config.n_head, self.block_size, config.n_embd // config.n_head)
        old = list(zip(self.keys, self.values))
        # zeros, not empty: padding columns are masked out, but 0 * NaN from uninitialised memory isn't 0
        self.keys = [torch.zeros(shape, dtype=weight.dtype, device=weight.device) for _ in range(config.n_layer)]
        self.values = [torch.zeros(shape, dtype=weight.dtype, device=weight.device) for _ in range(config.n_layer)]
        n = len(self.cached)
        for (k, v), new_k, new_v in zip(old, self.keys, self.values):
            new_k[:n, :, : self.length] = k[:n, :, : self.length]
            new_v[:n, :, : self.length] = v[:n, :, : self.length]

    def _shift(self, by: int) -> None:
        """Move every row's columns right (by > 0) or left (by < 0); the columns shifted in are padding."""
        n, L = len(self.cached), self.length
        if n == 0:
            self.length = max(0, L + by)
            return
        for buffer in self.keys + self.values:
            if by > 0:
                buffer[:n, :, by : L + by] = buffer[:n, :, :L].clone()
            else:
                buffer[:n, :, : L + by] = buffer[:n, :, -by:L].clone()
        self.pad = [p + by for p in self.pad]
        self.length = L + by

    def _remove_row(self, seq: Sequence) -> None:
        row, last = seq.row, len(self.cached) - 1
        if row != last:  # the last row moves into the freed one
            for buffer in self.keys + self.values:
                buffer[row, :, : self.length] = buffer[last, :, : self.length]
            moved = self.cached[last]
            moved.row = row
            self.cached[row], self.pad[row] = moved, self.pad[last]
        self.cached.pop()
        self.pad.pop()
        seq.row = None
        if not self.cached:
            self.length = 0
        elif min(self.pad) > 0:  # padding every row has only costs attention time
            self._shift(-min(self.pad))

