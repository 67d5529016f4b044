"""Loss estimates on random batches, and the exact loss over a whole split."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from model.data.dataset import TokenDataset
from model.nn.gpt import GPT, IGNORE_INDEX
from model.progress import progress


@torch.no_grad()
def estimate_loss(
    model: GPT, dataset: TokenDataset, batch_size: int, block_size: int, eval_iters: int,
    ctx: contextlib.AbstractContextManager, device: str, seed: int, quiet: bool = True,
    check_stop: Callable[[], None] | None = None,
) -> dict[str, float]:
    """Mean loss over eval_iters random batches per split. The batches come from their own generator,
    seeded the same at every evaluation, so successive estimates compare the model, not the draw.
    check_stop, called before each batch, may raise to abandon the evaluation (a stop request)."""
    was_training = model.training
    model.eval()
    out = {}
    for split in ("train", "val"):
        generator = torch.Generator().manual_seed(seed)
        losses = torch.zeros(eval_iters)
        for k in progress(range(eval_iters), desc=f"eval {split}", unit="batch", quiet=quiet):
            if check_stop is not None:
                check_stop()
            x, y = dataset.get_batch(split, batch_size, block_size, generator)
            with ctx:
                _, loss = model(x.to(device), y.to(device))
            losses[k] = loss.item()
        out[split] = losses.mean().item()
    model.train(was_training)
    return out


@torch.no_grad()
def split_loss(
    model: GPT, dataset: TokenDataset, split: str, block_size: int, batch_size: int,
    ctx: contextlib.AbstractContextManager, device: str, quiet: bool = True,
    check_stop: Callable[[], None] | None = None,
) -> float:
    """Cross-entropy over every token of a split exactly once (non-overlapping windows of block_size),
    token-weighted: the number to compare with other runs and with nanoGPT's published losses.
    check_stop, called before each batch, may raise to abandon the pass (a stop request)."""
    was_training = model.training
    model.eval()
    x, y = dataset.windows(split, block_size)
    total, count = 0.0, 0
    for i in progress(range(0, len(x), batch_size), desc=f"full {split}", unit="batch", quiet=quiet):
        if check_stop is not None:
            check_stop()
        xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
        with ctx:
            logits, _ = model(xb)
        losses = torch.nn.functional.cross_entropy(
            logits.float().view(-1, logits.size(-1)), yb.view(-1), ignore_index=IGNORE_INDEX, reduction="sum"
        )
        total += losses.item()
        count += int((yb != IGNORE_INDEX).sum())
    model.train(was_training)
    return total / count
