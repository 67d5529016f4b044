"""Helpers for the chat tests: a tiny chat model that ends its replies, and its replies decoded
greedily the plain way (a whole forward pass per token, no KV cache), to check the chat code against."""

from __future__ import annotations

from pathlib import Path

import torch

from serving_helpers import make_run


def ending_chat_run(out_dir: Path, block_size: int = 64) -> Path:
    """A tiny random chat run (make_run) whose end-of-turn token is the most likely one wherever 'e'
    would be the greedy choice: its lm_head row is 1.5 times 'e''s, so greedy replies end after a few
    tokens instead of running to the cap."""
    from model.checkpoint import load_model, model_state, save_checkpoint

    make_run(out_dir, chat=True, block_size=block_size)
    model, tok, _ = load_model(out_dir / "ckpt.pt")
    with torch.no_grad():
        model.lm_head.weight[tok.end_id] = 1.5 * model.lm_head.weight[tok.encode("e")[0]]
    save_checkpoint(out_dir / "ckpt.pt", model_state(model, model.config, tok.to_meta()))
    return out_dir


@torch.no_grad()
def greedy_reply(model, tok, ids: list[int], cap: int) -> tuple[list[int], bool]:
    """The greedy continuation of `ids` up to the end token (left out), at most `cap` tokens, and
    whether it ended at the end token."""
    out: list[int] = []
    block_size = model.config.block_size
    for _ in range(cap):
        logits, _ = model(torch.tensor([(ids + out)[-block_size:]]))
        token = int(logits[0, -1, : tok.vocab_size].argmax())
        if token == tok.end_id:
            return out, True
        out.append(token)
    return out, False
