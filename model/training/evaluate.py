"""Loss estimates on random batches, and the exact loss over a whole split; both also in bits per byte
(model.data.tokenizer.bits_per_byte), which compares across tokenizers."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from model.data.dataset import TokenDataset
from model.data.tokenizer import bits_per_byte
from model.nn.gpt import GPT, IGNORE_INDEX
from model.progress import progress


@torch.no_grad()
def estimate_loss(
    model: GPT, dataset: TokenDataset, batch_size: int, block_size: int, eval_iters: int,
    ctx: contextlib.AbstractContextManager, device: str, seed: int, quiet: bool = True,
    check_stop: Callable[[], None] | None = None,
) -> dict[str, float]:
    """Mean loss over eval_iters random batches per split ("train", "val"), and bits per byte over the
    same batches ("train_bpb", "val_bpb": their summed loss over the bytes their targets spell). The
    batches come from their own generator, seeded the same at every evaluation, so successive
    estimates compare the model, not the draw.
    check_stop, called before each batch, may raise to abandon the evaluation (a stop request)."""
    was_training = model.training
    model.eval()
    out = {}
    for split in ("train", "val"):
        generator = torch.Generator().manual_seed(seed)
        loss_sum, nats, n_bytes = 0.0, 0.0, 0  # running sums: memory stays the same for any eval_iters
        for _ in progress(range(eval_iters), desc=f"eval {split}", unit="batch", quiet=quiet):
            if check_stop is not None:
                check_stop()
            x, y = dataset.get_batch(split, batch_size, block_size, generator)
            counted = y[y != IGNORE_INDEX]  # a chat dataset's batches have targets that don't count
            n_bytes += int(dataset.byte_lengths[counted].sum())
            with ctx:
                _, loss = model(x.to(device), y.to(device))
            loss_sum += (value := loss.item())
            nats += value * counted.numel()
        out[split] = loss_sum / eval_iters
        out[f"{split}_bpb"] = bits_per_byte(nats, n_bytes)
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
    x, y = dataset.windows(split, block_size)
    total, count = summed_loss(model, x, y, batch_size, ctx, device, f"full {split}", quiet, check_stop)
    return total / count


def split_bpb(loss: float, dataset: TokenDataset, split: str) -> float:
    """Bits per byte of a split_loss: its loss summed over the split's targets, over their bytes."""
    return bits_per_byte(loss * dataset.target_count(split), dataset.target_bytes(split))


@torch.no_grad()
def summed_loss(
    model: GPT, x: torch.Tensor, y: torch.Tensor, batch_size: int, ctx: contextlib.AbstractContextManager,
    device: str, desc: str, quiet: bool = True, check_stop: Callable[[], None] | None = None,
) -> tuple[float, int]:
    """Cross-entropy summed over the targets y (N, T) of inputs x (N, T) (IGNORE_INDEX targets left
    out), batch_size rows at a time; returns (total nats, number of targets)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in progress(range(0, len(x), batch_size), desc=desc, unit="batch", quiet=quiet):
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
    return total, count
