"""Checks made before a run continues from a checkpoint (init_from='resume').

A resumed run keeps the network shape stored in the checkpoint. A config that asks for a different
shape (say a longer block_size than the checkpoint's position table), or a dataset tokenized with a
different vocabulary, would otherwise be silently ignored or silently train on the wrong token ids;
both are errors instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from model.checkpoint import model_config_from
from model.config import GPTConfig
from model.errors import TinyGPTError

SHAPE_KEYS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "tie_weights", "mlp_ratio", "vocab_size")
"""GPTConfig keys that decide the weights' shapes (dropout may change on resume)."""


def describe_vocabulary(tokenizer_meta: dict[str, Any]) -> str:
    if tokenizer_meta.get("kind") == "char":
        return f"{len(tokenizer_meta.get('chars', ''))} characters"
    if tokenizer_meta.get("kind") == "bpe":
        return f"a learned byte-level BPE of {tokenizer_meta.get('vocab_size')} tokens"
    return f"{tokenizer_meta.get('kind')} '{tokenizer_meta.get('name')}', {tokenizer_meta.get('vocab_size')} tokens"


def model_config_for_resume(
    ckpt: dict[str, Any], requested: GPTConfig, dataset_meta: dict[str, Any], path: str | Path
) -> GPTConfig:
    """The checkpoint's model config, after checking it against the config and data of this run."""
    stored = model_config_from(ckpt)
    defaults = GPTConfig()
    for key in SHAPE_KEYS:
        want, have = getattr(requested, key), getattr(stored, key)
        # The config can't tell a default from a value typed in; a default is taken as "not asked for".
        if want == have or want == getattr(defaults, key):
            continue
        if key == "block_size" and want > have:
            raise TinyGPTError(
                f"block_size={want} is beyond the position table of {path} ({have} positions); resume with "
                f"block_size <= {have}, or train a longer-context model from scratch"
            )
        raise TinyGPTError(
            f"{key}={want} contradicts {path}, which has {key}={have}; a resumed run keeps the checkpoint's "
            f"shape (drop --{key}, or train from scratch)"
        )
    if ckpt.get("tokenizer") != dataset_meta.get("tokenizer"):
        raise TinyGPTError(
            f"{path} was trained on a vocabulary of {describe_vocabulary(ckpt.get('tokenizer') or {})} but the "
            f"dataset has {describe_vocabulary(dataset_meta.get('tokenizer') or {})}; resume on the dataset "
            f"it was trained on"
        )
    return stored
