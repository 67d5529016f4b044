"""Conversations: the chat template, reading them from JSON Lines, and chat datasets on disk.

A conversation is a list of messages in OpenAI's and Hugging Face's shape,
    {"messages": [{"role": "system" | "user" | "assistant", "content": "..."}, ...]}
The template spells each message as its role's start token, the content's tokens and the end token:

    <|system|>You add numbers.<|end|><|user|>What is 12+30?<|end|><|assistant|>42<|end|>

Training counts only the assistant's content tokens and its end token as targets (the loss mask);
everything else is context. To answer, a model is given the conversation so far followed by
<|assistant|>, and writes until it writes <|end|>.

A chat dataset is a prepared dataset (model/data/dataset.py) whose meta.json has a "chat" entry and
whose splits have two more files beside {split}.bin (the conversations' ids, one after another):
    {split}.loss.bin           uint8, one per token: 1 where the token is a target that counts
    {split}.conversations.bin  int64, where each conversation starts, and the end of the last one
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from model.data.tokenizer import CHAT_ROLES, CHAT_TOKENS, ChatTokenizer
from model.errors import TinyGPTError

Message = dict[str, str]
CHAT_TEMPLATE_JINJA = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '" + CHAT_TOKENS[-1] + "' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)
"""The template above in Jinja, as transformers' `apply_chat_template` reads it from
tokenizer_config.json (the special tokens must be the tokenizer's added tokens)."""
VAL_FILE = "val.jsonl"
"""A chat dataset's validation conversations as text, for `model.eval --chat=DATASET`."""
ROW_MULTIPLE = 16
"""A batch's rows are as wide as its longest conversation needs, rounded up to a multiple of this (so
short conversations don't pay for block_size, and a compiled model sees a few shapes only)."""
LOSS_SUFFIX = ".loss.bin"
CONVERSATIONS_SUFFIX = ".conversations.bin"


# -- the template ----------------------------------------------------------------------------------
def render(tok: ChatTokenizer, messages: Sequence[Message]) -> tuple[list[int], list[bool]]:
    """The conversation's token ids, and for each whether it is a target that counts in the loss
    (an assistant's content and its end token)."""
    ids: list[int] = []
    counts: list[bool] = []
    for message in messages:
        body = tok.encode(message["content"]) + [tok.end_id]
        ids += [tok.role_id(message["role"]), *body]
        counts += [False] + [message["role"] == "assistant"] * len(body)
    return ids, counts


def prompt_ids(tok: ChatTokenizer, messages: Sequence[Message]) -> list[int]:
    """What a model continues to write the next assistant turn: the conversation, then <|assistant|>."""
    return render(tok, messages)[0] + [tok.role_id("assistant")]


def prompt_room(block_size: int, max_new_tokens: int) -> int:
    """Tokens a chat prompt may take: the context minus the room a reply of max_new_tokens needs, but
    at least half the context, so that asking for a long reply still leaves the history some room."""
    return block_size - min(max_new_tokens, block_size // 2)


def fit_history(tok: ChatTokenizer, messages: Sequence[Message], room: int) -> list[Message]:
    """`messages` without their oldest turns (a system message stays) until prompt_ids fits in `room`
    tokens; the newest message is kept even if it alone is too long (the caller cuts its ids)."""
    system = [m for m in messages[:1] if m["role"] == "system"]
    rest = list(messages[len(system):])
    while len(rest) > 1 and len(prompt_ids(tok, system + rest)) > room:
        rest.pop(0)
    return system + rest


def require_chat_tokenizer(tok: Any, what: str) -> ChatTokenizer:
    """`tok` if it has the chat template's tokens; else one clear error naming `what`."""
    if not isinstance(tok, ChatTokenizer):
        raise TinyGPTError(
            f"{what} has no chat template (its tokenizer has no chat tokens); fine-tune it on a chat dataset "
            "first: python data/prepare.py --dataset=NAME --input=FILE.jsonl --format=chat, then "
            "train.py --init_from=MODEL --dataset=NAME (see docs/chat.md)"
        )
    return tok


# -- reading conversations -------------------------------------------------------------------------
def check_conversation(value: Any, where: str, need_assistant: bool = True) -> list[Message]:
    """The messages of one conversation ({"messages": [...]}), checked; `where` names its file and
    line for the one-line error."""
    if not isinstance(value, dict) or not isinstance(value.get("messages"), list):
        raise TinyGPTError(f'{where}: expected an object with a "messages" list')
    messages = check_messages(value["messages"], where)
    if need_assistant and not any(m["role"] == "assistant" for m in messages):
        raise TinyGPTError(f"{where}: the conversation has no assistant turn to learn from")
    return messages


def check_messages(messages: Any, where: str) -> list[Message]:
    """A list of {"role", "content"} messages, checked (roles known, contents non-empty text)."""
    if not isinstance(messages, list) or not messages:
        raise TinyGPTError(f"{where}: messages must be a non-empty list")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise TinyGPTError(f"{where}: message {i} must be an object with a role and a content")
        role, content = message.get("role"), message.get("content")
        if role not in CHAT_ROLES:
            raise TinyGPTError(f"{where}: message {i} has unknown role {role!r} (expected one of {', '.join(CHAT_ROLES)})")
        if not isinstance(content, str) or not content:
            raise TinyGPTError(f"{where}: message {i} ({role}) has empty or non-text content")
        out.append({"role": role, "content": content})
    return out


def read_conversations(path: str | Path) -> list[list[Message]]:
    """Every conversation of a JSON Lines file, one per non-blank line, checked."""
    from model.files import read_jsonl

    path = Path(path)
    conversations = [check_conversation(value, where) for where, value in read_jsonl(path, "chat file")]
    if not conversations:
        raise TinyGPTError(f"{path} holds no conversations (one JSON object per line)")
    return conversations


def conversations_jsonl(conversations: Iterable[Sequence[Message]]) -> str:
    """Conversations as JSON Lines, one {"messages": [...]} per line (what read_conversations reads)."""
    return "".join(json.dumps({"messages": list(messages)}, ensure_ascii=False) + "\n" for messages in conversations)


def conversation_text(conversations: Iterable[Sequence[Message]]) -> str:
    """All message contents, joined: what a character vocabulary or a BPE is learned from."""
    return "\n".join(m["content"] for messages in conversations for m in messages)


# -- chat datasets ---------------------------------------------------------------------------------
def write_split(folder: Path, split: str, tok: ChatTokenizer, conversations: Sequence[Sequence[Message]],
                dtype: np.dtype) -> dict[str, int]:
    """{split}.bin, .loss.bin and .conversations.bin for `conversations`; returns their counts."""
    from model.files import atomic_write_bytes

    ids, counts, starts = [], [], [0]
    for messages in conversations:
        conversation_ids, conversation_counts = render(tok, messages)
        ids += conversation_ids
        counts += conversation_counts
        starts.append(len(ids))
    atomic_write_bytes(folder / f"{split}.bin", np.array(ids, dtype=dtype).tobytes())
    atomic_write_bytes(folder / f"{split}{LOSS_SUFFIX}", np.array(counts, dtype=np.uint8).tobytes())
    atomic_write_bytes(folder / f"{split}{CONVERSATIONS_SUFFIX}", np.array(starts, dtype=np.int64).tobytes())
    return {"tokens": len(ids), "conversations": len(conversations), "targets": int(sum(counts))}


class ChatSplit:
    """One split of a chat dataset: its conversations' ids and loss mask, and where each starts.
    A conversation is one row of a batch, padded at the end, so none attends into another."""

    def __init__(self, folder: Path, split: str, ids: np.ndarray, expected_conversations: int):
        self.ids = ids
        self.counts = self._open(folder / f"{split}{LOSS_SUFFIX}", np.uint8, len(ids))
        self.starts = self._open(folder / f"{split}{CONVERSATIONS_SUFFIX}", np.int64, expected_conversations + 1)
        if self.starts[0] != 0 or self.starts[-1] != len(ids) or np.any(np.diff(self.starts) < 2):
            raise TinyGPTError(f"{folder / split}{CONVERSATIONS_SUFFIX} does not match {split}.bin; prepare the dataset again")
        self.fitted_to: int | None = None

    @staticmethod
    def _open(path: Path, dtype: Any, expected: int) -> np.ndarray:
        size = path.stat().st_size if path.is_file() else -1
        if size != expected * np.dtype(dtype).itemsize:
            what = "missing" if size < 0 else f"holds {size} bytes, not {expected} entries of {np.dtype(dtype).name}"
            raise TinyGPTError(f"chat dataset file {path} is {what}; prepare the dataset again")
        return np.memmap(path, dtype=dtype, mode="r")

    def fit(self, block_size: int, end_id: int) -> dict[str, int]:
        """Choose how much of each conversation a row of block_size holds: all of it when its tokens fit
        block_size + 1 (inputs and targets), else up to the end of its last turn that fits; one with no
        counted target left is skipped. Returns the counts (conversations, cut, skipped)."""
        lengths, kept, cut = [], [], 0
        for i, (start, end) in enumerate(zip(self.starts[:-1], self.starts[1:])):
            length = int(end - start)
            too_long = length > block_size + 1
            if too_long:
                turn_ends = np.flatnonzero(np.asarray(self.ids[start : start + block_size + 1]) == end_id) + 1
                length = int(turn_ends[-1]) if len(turn_ends) else 0
            if length >= 2 and self.counts[start + 1 : start + length].any():
                lengths.append(length)
                kept.append(i)
                cut += too_long
        if not kept:
            raise TinyGPTError(f"no conversation of this split has a reply that fits block_size {block_size}")
        self.rows = np.array(kept, dtype=np.int64)
        self.lengths = np.array(lengths, dtype=np.int64)
        self.fitted_to = block_size
        return {"conversations": len(self.starts) - 1, "cut": cut, "skipped": len(self.starts) - 1 - len(kept)}

    def conversation(self, pick: int) -> tuple[np.ndarray, np.ndarray]:
        """Fitted conversation number `pick`: its ids (int64) and, for each id after the first, whether
        it is a target that counts (bool)."""
        start, length = int(self.starts[self.rows[pick]]), int(self.lengths[pick])
        return (np.asarray(self.ids[start : start + length], dtype=np.int64),
                np.asarray(self.counts[start + 1 : start + length], dtype=bool))

    def targets(self) -> np.ndarray:
        """The counted targets of every fitted conversation, one after another, int64: what rows_of
        leaves unmasked over all of them."""
        return np.concatenate([ids[1:][counted] for ids, counted in map(self.conversation, range(len(self.rows)))])

    def rows_of(self, picks: np.ndarray, ignore_index: int) -> tuple[np.ndarray, np.ndarray]:
        """Inputs x and targets y (len(picks), width), int64, for fitted conversations number `picks`:
        each left-aligned, x padded with 0 and y with ignore_index, y = ignore_index where the mask says
        the target doesn't count. width: the longest picked conversation's inputs, rounded up to
        ROW_MULTIPLE, at most the fitted block_size."""
        longest = int(self.lengths[picks].max()) - 1
        width = min(-(-longest // ROW_MULTIPLE) * ROW_MULTIPLE, self.fitted_to)
        x = np.zeros((len(picks), width), dtype=np.int64)
        y = np.full((len(picks), width), ignore_index, dtype=np.int64)
        for row, pick in enumerate(picks):
            ids, counted = self.conversation(int(pick))
            x[row, : len(ids) - 1] = ids[:-1]
            y[row, : len(ids) - 1] = np.where(counted, ids[1:], ignore_index)
        return x, y
