"""What a run continued from a checkpoint (init_from='resume') takes from it, and what it refuses.

A resumed run keeps the network stored in the checkpoint: every architecture option comes from
there. A config that asks for a different one (say another block_size than the checkpoint's, or
rope instead of learned positions), or a dataset tokenized with a different
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

from model.checkpoint import BEST, CONFIG_FILE, LATEST, check_weights_fit, load_checkpoint, model_config_from
from model.data import schema
from model.config import GPTConfig, TrainConfig, config_fields, was_given
from model.errors import TinyGPTError
from model.training.metrics import LOSS_PLOT, METRICS

OVERRIDABLE_MODEL_KEYS = ("dropout",)
"""GPTConfig keys a resumed run may change; every other one is the checkpoint's architecture."""
SCHEDULE_KEYS = ("learning_rate", "min_lr", "warmup_iters", "lr_decay_iters", "decay_lr", "muon_lr")
"""TrainConfig keys of the learning-rate schedule, which a resumed run continues unless told otherwise."""


RUN_FILES = (LATEST, BEST, METRICS)
"""The files whose presence makes a folder a training run's (a run writes metrics.jsonl at its first
log line and ckpt.pt at its first save)."""
REPLACED_FILES = (*RUN_FILES, LOSS_PLOT, CONFIG_FILE)
"""What --overwrite=True deletes: everything a run writes into out_dir that a new run would not rewrite
at once (a stale best.pt would otherwise be sampled instead of the new run's checkpoints)."""


def run_files(folder: str | Path) -> list[str]:
    """The names of RUN_FILES present in `folder`: empty unless it holds a training run."""
    return [name for name in RUN_FILES if (Path(folder) / name).exists()]


def refuse_used_out_dir(out_dir: Path, config: TrainConfig, echo: Callable[[str], None] = print) -> None:
    """A run that starts from scratch (or from a Hugging Face model) in an out_dir holding another run
    would truncate its metrics.jsonl and overwrite its checkpoints: refused, unless overwrite=True
    says to delete the old run's files first."""
    if config.init_from == "resume":
        return
    found = run_files(out_dir)
    if not found:
        return
    if not config.overwrite:
        raise TinyGPTError(
            f"out_dir {out_dir} holds a training run ({', '.join(found)}); continue it with --init_from=resume, "
            f"start the new run in another --out_dir, or pass --overwrite=True to delete the old run's files"
        )
    for name in REPLACED_FILES:
        (out_dir / name).unlink(missing_ok=True)
    echo(f"overwrite=True: deleted the previous run's {', '.join(found)} in {out_dir}")


def load_training_state(path: Path) -> dict[str, Any]:
    """The checkpoint a run resumes from, checked whole (weights, optimizer state, iteration, data
    position, every rank's RNGs) before any of it is used."""
    ckpt = load_checkpoint(path, "cpu")
    if "optimizer" not in ckpt:
        raise TinyGPTError(f"{path} holds no optimizer state (a checkpoint for sampling only?), so a run can't "
                           f"resume from it; start a new run in another --out_dir instead")
    schema.check(ckpt, schema.TrainingState, str(path))
    check_weights_fit(ckpt["model"], model_config_from(ckpt), path)
    return ckpt


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
        else:  # block_size too: a longer one has no positions in the table, a shorter one would shrink it
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
