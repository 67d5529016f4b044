"""The models a server serves: training runs and Hugging Face GPT-2 folders, each with its engine.

A request names a model by its id (a run folder's name, or the GPT-2 folder's or hub model's name),
never by a path: the server only ever reads the files it was started with.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from model.checkpoint import BEST, LATEST
from model.data.tokenizer import ChatTokenizer
from model.device import resolve_inference_dtype
from model.errors import TinyGPTError
from model.nn.gpt import GPT
from model.sampling.generate import prepare_for_sampling
from model.serving.engine import DecodingThread, Engine
from model.sources import RUN, ModelSource, load_source


@dataclass
class Source:
    """Where one served model comes from."""

    id: str
    """The name requests use for it."""
    origin: ModelSource
    """A training run folder or checkpoint file, or a GPT-2 folder or hub name."""


@dataclass
class ServedModel:
    id: str
    model: GPT
    tok: object
    engine: Engine
    created: int

    def describe(self) -> dict:
        """The OpenAI model object, with the model's shape under "tinygpt" (the page uses it); "chat"
        says whether /v1/chat/completions can talk to it (its tokenizer has the chat template's tokens)."""
        c = self.model.config
        chat = isinstance(self.tok, ChatTokenizer)
        tokenizer = self.tok.base.to_meta() if chat else self.tok.to_meta()
        return {
            "id": self.id, "object": "model", "created": self.created, "owned_by": "tinygpt",
            "tinygpt": {
                "n_layer": c.n_layer, "n_head": c.n_head, "n_embd": c.n_embd, "block_size": c.block_size,
                "vocab_size": c.vocab_size, "parameters": self.model.num_params(),
                "tokenizer": tokenizer["kind"] if tokenizer["kind"] == "char" else tokenizer.get("name", "bpe"),
                "chat": chat,
            },
        }


def find_sources(models: Sequence[ModelSource], runs_dirs: Sequence[str] = ()) -> list[Source]:
    """The models to serve, with unique ids: every run (a folder holding best.pt or ckpt.pt) directly
    inside each runs folder, then each of `models`."""
    found: list[ModelSource] = []
    for folder in runs_dirs:
        root = Path(folder)
        if not root.is_dir():
            raise TinyGPTError(f"runs folder not found: {root}")
        runs = sorted(p for p in root.iterdir() if (p / BEST).is_file() or (p / LATEST).is_file())
        if not runs:
            raise TinyGPTError(f"no training runs in {root} (no subfolder holds {BEST} or {LATEST})")
        found += [ModelSource(RUN, str(run)) for run in runs]
    sources, taken = [], set()
    for origin in [*found, *models]:
        unique, k = origin.name, 2
        while unique in taken:
            unique, k = f"{origin.name}-{k}", k + 1
        taken.add(unique)
        sources.append(Source(unique, origin))
    return sources


def load_served(
    sources: list[Source], device: str, dtype: str | torch.dtype, c_decode: bool, max_batch: int, max_waiting: int,
) -> list[ServedModel]:
    """Load every source onto device, in dtype ('auto': each checkpoint's own precision), prepared
    for decoding (the C kernels on a CPU when c_decode). The models load on the decoding thread their
    engines share, which is left running (see model/serving/engine.py for why all tensor work happens there)."""
    thread = DecodingThread()
    thread.start()

    def load(source: Source) -> ServedModel:
        model, tok = load_source(source.origin, device)
        prepare_for_sampling(model, resolve_inference_dtype(dtype, model), c_decode=c_decode)
        engine = Engine(model, tok, thread, max_batch, max_waiting)
        return ServedModel(source.id, model, tok, engine, int(time.time()))

    try:
        return [thread.call(lambda source=source: load(source)).result() for source in sources]
    except BaseException:
        thread.stop()
        raise
