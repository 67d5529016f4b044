"""Chat evaluation: how well a chat model writes each conversation's final assistant reply.

For every conversation the final assistant turn is the reference and everything before it the
context (the chat template's prompt, model/data/chat.py's prompt_ids). Two scores:

- exact match: the reply generated greedily from the context, up to the end-of-turn token (at most
  the reference's length in tokens plus REPLY_MARGIN), is the reference's text exactly;
- loss and bits per byte of the reference reply, teacher-forced: the cross-entropy of its tokens and
  of the end token after them, given the context (a sequence longer than block_size + 1 tokens loses
  context from the left, then the reply's first tokens).

Generation runs batch_size conversations at a time, left-padded with the KV cache (generate()),
shortest prompts together so that little padding is computed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.data.chat import Message, prompt_ids, read_conversations
from model.data.tokenizer import ChatTokenizer, bits_per_byte, token_byte_lengths
from model.errors import TinyGPTError
from model.evaluation.multiple_choice import loglikelihoods
from model.nn.gpt import GPT
from model.progress import progress
from model.sampling.generate import generate

REPLY_MARGIN = 16
"""Tokens a generated reply may run past its reference's length (another tokenization of the same
text may be longer) before generation stops: longer than that, it can't be an exact match."""


@dataclass(frozen=True)
class ChatItem:
    """One conversation to score: the messages before its final assistant turn, and that turn's text."""

    context: list[Message]
    reference: str


def chat_items(conversations: list[list[Message]]) -> list[ChatItem]:
    """Each conversation cut at its last assistant turn (the turns after it are dropped)."""
    items = []
    for messages in conversations:
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        items.append(ChatItem(messages[:last], messages[last]["content"]))
    return items


def conversations_file(name: str, data_dir: str | Path) -> Path:
    """The JSON Lines file `--chat=NAME` means: NAME itself when it is a file or ends in .jsonl, else the
    validation conversations of the chat dataset NAME, data_dir/NAME/val.jsonl."""
    path = Path(name)
    if path.is_file() or path.suffix == ".jsonl":
        return path
    dataset = Path(data_dir) / name / "val.jsonl"
    if not dataset.is_file():
        raise TinyGPTError(f"--chat={name}: no such file, and no chat dataset {dataset}; name a .jsonl file of "
                           'conversations ({"messages": [...]} per line) or a chat dataset in --data_dir')
    return dataset


def read_chat_items(name: str, data_dir: str | Path) -> tuple[Path, list[ChatItem]]:
    """The file `--chat=NAME` names and its conversations as items."""
    path = conversations_file(name, data_dir)
    return path, chat_items(read_conversations(path))


def greedy_replies(model: GPT, tok: ChatTokenizer, prompts: list[list[int]], caps: list[int], batch_size: int,
                   quiet: bool = False) -> list[list[int]]:
    """Each prompt's greedy continuation up to (not including) the end token, at most caps[i] tokens,
    batch_size prompts at a time (those of similar lengths together)."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    replies: list[list[int]] = [[] for _ in prompts]
    for start in progress(range(0, len(order), batch_size), desc="chat replies", unit="batch", quiet=quiet):
        batch = order[start : start + batch_size]
        done = [False] * len(batch)
        tokens = generate(model, [prompts[i] for i in batch], max(caps[i] for i in batch), temperature=0.0,
                          vocab_size=tok.vocab_size)
        for next_ids in tokens:
            for row, token in enumerate(next_ids.tolist()):
                i = batch[row]
                if done[row]:
                    continue
                if token == tok.end_id:
                    done[row] = True
                else:
                    replies[i].append(token)
                    done[row] = len(replies[i]) >= caps[i]
            if all(done):
                break
    return replies


def score_chat(model: GPT, tok: ChatTokenizer, items: list[ChatItem], batch_size: int, device: str,
               quiet: bool = False) -> dict:
    """exact_match, loss, bpb, tokens, bytes, n, and each item's reply under "items"."""
    block_size = model.config.block_size
    prompts = [prompt_ids(tok, item.context) for item in items]
    references = [tok.encode(item.reference) + [tok.end_id] for item in items]
    # teacher-forced: the reply's tokens (end token included) after the context, cut to the model's window
    requests = []
    for prompt, reference in zip(prompts, references):
        ids = (prompt + reference)[-(block_size + 1):]
        requests.append((ids, min(len(reference), len(ids) - 1)))
    sums = loglikelihoods(model, requests, batch_size, device, quiet, desc="chat loss")
    lengths = token_byte_lengths(tok)
    n_tokens = sum(n for _, n in requests)
    n_bytes = int(sum(lengths[np.array(ids[-n:])].sum() for ids, n in requests))
    total = -sum(sums)
    replies = greedy_replies(model, tok, prompts, [len(r) - 1 + REPLY_MARGIN for r in references], batch_size, quiet)
    scored, matches = [], 0
    for item, reply, loglikelihood in zip(items, replies, sums):
        text = tok.decode(reply)
        matches += text == item.reference
        scored.append({"reply": text, "reference": item.reference, "match": text == item.reference,
                       "loglikelihood": loglikelihood})
    n = len(items)
    return {"exact_match": matches / n, "loss": total / n_tokens, "bpb": bits_per_byte(total, n_bytes),
            "tokens": n_tokens, "bytes": n_bytes, "n": n, "items": scored}
