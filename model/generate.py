"""Sampling text from a trained GPT, one token at a time."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from model.gpt import GPT


def sample_next(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Pick the next token for each row of logits (B, vocab) -> (B,).

    temperature 0 is greedy (argmax); top_k keeps the k most likely tokens; top_p keeps the smallest
    set of most likely tokens whose probabilities add up to at least top_p (nucleus sampling).
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k > 0 and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0.0 < top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # drop a token when the tokens ranked above it already reach top_p (the top token always stays)
        drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(
    model: GPT,
    idx: Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Iterator[Tensor]:
    """Yield the next token ids (B,) for max_new_tokens steps, continuing the prompts idx (B, T).

    The context is cropped to the last block_size tokens, so generation can run past the model's
    context length (older tokens simply drop out of view).
    """
    model.eval()
    block_size = model.config.block_size
    for _ in range(max_new_tokens):
        context = idx if idx.size(1) <= block_size else idx[:, -block_size:]
        logits, _ = model(context)
        next_ids = sample_next(logits[:, -1, :], temperature, top_k, top_p, generator)  # (B,)
        # only the last block_size tokens are ever looked at again, so a huge max_new_tokens stays bounded
        idx = torch.cat((context, next_ids[:, None]), dim=1)  # (B, <= block_size + 1)
        yield next_ids
