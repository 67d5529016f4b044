"""Loss per token and bits per byte of a model over every token of a text or a dataset split.

The tokens are cut into non-overlapping windows of the model's block_size (as the full-validation
loss during training is), so each token is predicted once, from the tokens before it in its window.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass

import numpy as np
import torch

from model.data.dataset import TokenDataset, eval_windows
from model.data.tokenizer import bits_per_byte, token_byte_lengths
from model.errors import TinyGPTError
from model.nn.gpt import GPT
from model.training.evaluate import summed_loss


@dataclass(frozen=True)
class TextScore:
    loss: float
    """Mean cross-entropy in nats per predicted token."""
    bpb: float
    """Bits per byte: the summed cross-entropy over ln 2 times the UTF-8 bytes the predicted tokens spell."""
    tokens: int
    """How many tokens were predicted."""
    bytes: int
    """UTF-8 bytes of the text those tokens spell."""

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def score_windows(model: GPT, x: torch.Tensor, y: torch.Tensor, n_bytes: int, batch_size: int, device: str,
                  desc: str, quiet: bool = False) -> TextScore:
    total, count = summed_loss(model, x, y, batch_size, contextlib.nullcontext(), device, desc, quiet)
    return TextScore(loss=total / count, bpb=bits_per_byte(total, n_bytes), tokens=count, bytes=n_bytes)


def score_text(model: GPT, tok, text: str, batch_size: int, device: str, quiet: bool = False) -> TextScore:
    """Every token of `text` predicted once. With an end-of-text token it goes first (as the start
    of a document), so that the text's first token is predicted too and the bytes are all of the text's."""
    ids = ([tok.eot_token] if tok.eot_token is not None else []) + tok.encode(text)
    if len(ids) < 2:
        raise TinyGPTError("the text is too short: it needs at least two tokens")
    data = np.array(ids, dtype=np.int64)
    n_bytes = int(token_byte_lengths(tok)[data[1:]].sum())
    x, y = eval_windows(data, model.config.block_size)
    return score_windows(model, x, y, n_bytes, batch_size, device, "text", quiet)


def score_split(model: GPT, dataset: TokenDataset, split: str, batch_size: int, device: str,
                quiet: bool = False) -> TextScore:
    """Every token but the first of a prepared dataset's split predicted once."""
    x, y = dataset.windows(split, model.config.block_size)
    return score_windows(model, x, y, dataset.target_bytes(split), batch_size, device, f"{split} split", quiet)
