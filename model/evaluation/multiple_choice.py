"""Multiple-choice evaluation in HellaSwag's format, scored as lm-evaluation-harness scores it.

Each line of the jsonl file is an item {"ctx": str, "endings": [str, ...], "label": int}. Every ending
is scored as the continuation " " + ending after ctx: context and continuation are encoded separately
and joined, and the ending's score is the sum of its tokens' log-likelihoods given everything before
them. `acc` counts the items whose highest sum is the label's; `acc_norm` those whose highest sum
divided by the continuation's length in characters is. A sequence longer than the model's block
keeps its last block_size + 1 tokens (the context is cut from the left).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from model.data import schema
from model.errors import TinyGPTError
from model.files import read_jsonl
from model.nn.gpt import GPT, IGNORE_INDEX
from model.progress import progress


@dataclass(frozen=True)
class Item:
    ctx: str
    endings: list[str]
    label: int


def read_items(path: str | Path) -> list[Item]:
    """The items of a HellaSwag-format jsonl file; a malformed line is an error naming its number."""
    path = Path(path)
    items = []
    for where, record in read_jsonl(path, "multiple-choice file"):
        schema.check(record, schema.HellaSwagItem, where)
        item = Item(record["ctx"], record["endings"], record["label"])
        if item.label >= len(item.endings):
            raise TinyGPTError(f"{where}: label must be the index of one of its {len(item.endings)} "
                               f"endings (0 to {len(item.endings) - 1}), got {item.label}")
        items.append(item)
    if not items:
        raise TinyGPTError(f"{path} holds no items")
    return items


def request(tok, ctx: str, continuation: str, block_size: int) -> tuple[list[int], int]:
    """The tokens to run (context and continuation, joined, at most block_size + 1 of them) and how
    many of the last ones are the continuation."""
    ctx_ids, cont_ids = tok.encode(ctx), tok.encode(continuation)
    if not ctx_ids:
        if tok.eot_token is None:
            raise TinyGPTError("an item has an empty ctx, and this tokenizer has no end-of-text token to start from")
        ctx_ids = [tok.eot_token]
    if len(cont_ids) > block_size:
        raise TinyGPTError(f"an ending is {len(cont_ids)} tokens, more than the model's block of {block_size}")
    return (ctx_ids + cont_ids)[-(block_size + 1):], len(cont_ids)


@torch.no_grad()
def loglikelihoods(model: GPT, requests: list[tuple[list[int], int]], batch_size: int, device: str,
                   quiet: bool = False, desc: str = "multiple choice") -> list[float]:
    """For each (tokens, n) the summed log-likelihood of the last n tokens given the ones before them.
    Requests run longest first, batch_size at a time, right-padded (causal attention never looks right)."""
    model.eval()
    order = sorted(range(len(requests)), key=lambda i: -len(requests[i][0]))
    out = [0.0] * len(requests)
    for start in progress(range(0, len(order), batch_size), desc=desc, unit="batch", quiet=quiet):
        batch = order[start : start + batch_size]
        T = max(len(requests[i][0]) for i in batch) - 1
        x = torch.zeros(len(batch), T, dtype=torch.long)
        y = torch.full((len(batch), T), IGNORE_INDEX, dtype=torch.long)
        for row, i in enumerate(batch):
            ids, n = requests[i]
            x[row, : len(ids) - 1] = torch.tensor(ids[:-1])
            y[row, len(ids) - 1 - n : len(ids) - 1] = torch.tensor(ids[-n:])  # only the continuation is scored
        logits, _ = model(x.to(device))  # (B, T, vocab)
        nll = F.cross_entropy(logits.float().transpose(1, 2), y.to(device), ignore_index=IGNORE_INDEX,
                              reduction="none")  # (B, T), 0 where ignored
        for row, i in enumerate(batch):
            out[i] = -nll[row].sum().item()
    return out


def score_items(model: GPT, tok, items: list[Item], batch_size: int, device: str, quiet: bool = False) -> dict:
    """acc, acc_norm, n, and each item's per-ending log-likelihood sums under "items"."""
    continuations = [[" " + ending for ending in item.endings] for item in items]
    requests = [request(tok, item.ctx, c, model.config.block_size) for item, conts in zip(items, continuations) for c in conts]
    flat = iter(loglikelihoods(model, requests, batch_size, device, quiet))
    scored, correct, correct_norm = [], 0, 0
    for item, conts in zip(items, continuations):
        sums = [next(flat) for _ in conts]
        normed = [s / len(c) for s, c in zip(sums, conts)]
        correct += argmax(sums) == item.label
        correct_norm += argmax(normed) == item.label
        scored.append({"label": item.label, "loglikelihoods": sums})
    n = len(items)
    return {"acc": correct / n, "acc_norm": correct_norm / n, "n": n, "items": scored}


def argmax(values: list[float]) -> int:
    """The index of the largest value, the first one on a tie (as numpy's argmax)."""
    return max(range(len(values)), key=lambda i: (values[i], -i))
