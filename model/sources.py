"""MODEL, as every command names a model: a training run folder, a checkpoint file, a Hugging Face
GPT-2 folder (written by `save_pretrained`) or a hub name such as gpt2.

`resolve_model` decides which of the four a name is, the one place that does; `load_source` builds
the model and its tokenizer from what it decided. A name that is a file or folder here is always read
from disk; only a name that is neither, and is spelled like a hub id, goes to the hub.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from model.checkpoint import BEST, CONFIG_FILE, LATEST, load_model
from model.data.tokenizer import CharTokenizer, TiktokenTokenizer
from model.errors import TinyGPTError
from model.huggingface import WEIGHTS_FILES, download, load_pretrained
from model.nn.gpt import GPT

RUN = "run"
"""A training run folder: its best.pt, else its ckpt.pt."""
CHECKPOINT = "checkpoint"
"""A tinygpt checkpoint file."""
HF_FOLDER = "hf_folder"
"""A transformers GPT-2 folder: config.json with model.safetensors or pytorch_model.bin."""
HUB = "hub"
"""A model on the Hugging Face hub, by name (downloaded once into its cache)."""
CHECKPOINT_SUFFIX = ".pt"
"""How a checkpoint file's name ends: a missing name with it is a missing file, never a hub name."""


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: one of the four kinds above, and its path or hub name."""

    kind: str
    location: str

    @property
    def name(self) -> str:
        """What to call it: the run's or the folder's name, a checkpoint's folder's name, the hub name."""
        if self.kind == HUB:
            return self.location
        path = Path(self.location).resolve()
        return path.parent.name if self.kind == CHECKPOINT else path.name


def resolve_model(name: str | Path, hub: bool = True) -> ModelSource:
    """Which kind of model `name` is. A file is a checkpoint; a folder with best.pt or ckpt.pt is a
    run, else one with config.json and GPT-2 weights is a Hugging Face folder; a name that is neither
    file nor folder is a hub name when `hub` allows one and it is spelled like one. Anything else is
    refused in one line."""
    path = Path(name)
    if path.is_file():
        return ModelSource(CHECKPOINT, str(name))
    if path.is_dir():
        if any((path / file).is_file() for file in (BEST, LATEST)):
            return ModelSource(RUN, str(name))
        if (path / CONFIG_FILE).is_file() and any((path / file).is_file() for file in WEIGHTS_FILES):
            return ModelSource(HF_FOLDER, str(name))
        raise TinyGPTError(
            f"no checkpoint in {path}: it holds neither a checkpoint ({BEST}, {LATEST}) nor a Hugging Face model "
            f"({CONFIG_FILE} with {' or '.join(WEIGHTS_FILES)}); train a model into it first, or name another folder"
        )
    if hub and looks_like_hub_name(str(name)):
        return ModelSource(HUB, str(name))
    raise TinyGPTError(f"checkpoint not found: {path} (no such file or folder)")


def looks_like_hub_name(name: str) -> bool:
    """Whether `name` is spelled as a hub id is (`gpt2`, `openai-community/gpt2`), as huggingface_hub
    checks it, and is not a checkpoint file's name."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id  # installed with datasets

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return not name.endswith(CHECKPOINT_SUFFIX)


def load_source(source: ModelSource, device: str | torch.device = "cpu") -> tuple[GPT, CharTokenizer | TiktokenTokenizer]:
    """The model (on `device`, in the precision its checkpoint stores) and its tokenizer."""
    if source.kind == HUB:
        return load_pretrained(download(source.location), device)
    if source.kind == HF_FOLDER:
        return load_pretrained(source.location, device)
    model, tok, _ = load_model(source.location, device)
    return model, tok


def load_any_model(name: str | Path, device: str | torch.device = "cpu",
                   hub: bool = True) -> tuple[GPT, CharTokenizer | TiktokenTokenizer]:
    """(model, tokenizer) from a MODEL of any of the four kinds (see resolve_model)."""
    return load_source(resolve_model(name, hub), device)
