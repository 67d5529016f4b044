"""What a run continued from a checkpoint (init_from='resume') takes from it, and what it refuses.

A resumed run keeps the network stored in the checkpoint: every architecture option comes from
there. A config that asks for a different one (say a longer block_size than the checkpoint's
position table, or rope instead of learned positions), or a dataset tokenized with a different
vocabulary, would otherwise be silently ignored or silently train on the wrong token ids; both are
errors instead. Dropout may change (it doesn't touch the weights), and so may the learning-rate
schedule; both are taken from the checkpoint unless a config file or flag sets them, and an
override is printed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from model.checkpoint import model_config_from
from model.config import GPTConfig, TrainConfig, config_fields, was_given
from model.errors import TinyGPTError

OVERRIDABLE_MODEL_KEYS = ("dropout",)
"""GPTConfig keys a resumed run may change; every other one is the checkpoint's architecture."""
SCHEDULE_KEYS = ("learning_rate", "min_lr", "warmup_iters", "lr_decay_iters", "decay_lr", "muon_lr")
"""TrainConfig keys of the learning-rate schedule, which a resumed run continues unless told otherwise."""


def describe_vocabulary(tokenizer_meta: dict[str, Any]) -> str:
    if tokenizer_meta.get("kind") == "char":
        return f"{len(tokenizer_meta.get('chars', ''))} characters"
    if tokenizer_meta.get("kind") == "bpe":
        return f"a learned byte-level BPE of {tokenizer_meta.get('vocab_size')} tokens"
    return f"{tokenizer_meta.get('kind')} '{tokenizer_meta.get('name')}', {tokenizer_meta.get('vocab_size')} tokens"


def _override_note(key: str, want: Any, have: Any) -> str:
    return f"note: resuming with {key}={want} (the checkpoint's run had {have})"


def model_config_for_resume(
    ckpt: dict[str, Any], requested: GPTConfig, dataset_meta: dict[str, Any], path: str | Path,
    echo: Callable[[str], None] = print,
) -> GPTConfig:
    """The checkpoint's model config, after checking it against the config and data of this run."""
    stored = model_config_from(ckpt)
    for f in config_fields(GPTConfig):
        key = f.name
        want, have = getattr(requested, key), getattr(stored, key)
        if want == have or not was_given(requested, key):
            continue
        if key == "vocab_size" and want == dataset_meta.get("vocab_size"):
            continue  # the dataset's own vocabulary, which the checkpoint's rows may pad to a round number
        if key in OVERRIDABLE_MODEL_KEYS:
            echo(_override_note(key, want, have))
            stored = dataclasses.replace(stored, **{key: want})
        elif key == "block_size" and want > have:
            raise TinyGPTError(
                f"block_size={want} is beyond the position table of {path} ({have} positions); resume with "
                f"block_size <= {have}, or train a longer-context model from scratch"
            )
        else:
            raise TinyGPTError(
                f"{key}={want} contradicts {path}, which has {key}={have}; a resumed run keeps the checkpoint's "
                f"architecture (drop --{key}, or train from scratch)"
            )
    if ckpt.get("tokenizer") != dataset_meta.get("tokenizer"):
        raise TinyGPTError(
            f"{path} was trained on a vocabulary of {describe_vocabulary(ckpt.get('tokenizer') or {})} but the "
            f"dataset has {describe_vocabulary(dataset_meta.get('tokenizer') or {})}; resume on the dataset "
            f"it was trained on"
        )
    return stored


def train_config_for_resume(
    ckpt: dict[str, Any], requested: TrainConfig, echo: Callable[[str], None] = print
) -> TrainConfig:
    """`requested` with the checkpoint's learning-rate schedule wherever no config file or flag set it;
    an explicit value that differs from the checkpoint's is kept and printed."""
    stored = ckpt.get("config") or {}
    taken = {}
    for key in SCHEDULE_KEYS:
        if key not in stored:  # a checkpoint from before the key existed
            continue
        want, have = getattr(requested, key), stored[key]
        if want == have:
            continue
        if was_given(requested, key):
            echo(_override_note(key, want, have))
        else:
            taken[key] = have
    return dataclasses.replace(requested, **taken)
