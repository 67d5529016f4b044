"""The models a server serves: training runs and Hugging Face GPT-2 folders, each with its engine.

A request names a model by its id (a run folder's name, or the GPT-2 folder's or hub model's name),
never by a path: the server only ever reads the files it was started with.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from model.checkpoint import BEST, LATEST, load_model
from model.errors import TinyGPTError
from model.huggingface import load_pretrained
from model.nn.gpt import GPT
from model.sampling.generate import prepare_for_sampling
from model.serving.engine import DecodingThread, Engine


@dataclass
class Source:
    """Where one served model comes from."""

    id: str
    """The name requests use for it."""
    path: str
    """A training run folder or checkpoint file, or a GPT-2 folder or hub name."""
    hugging_face: bool = False
    """path is a transformers GPT-2 folder or hub name (else a tinygpt run or checkpoint)."""


@dataclass
class ServedModel:
    id: str
    model: GPT
    tok: object
    engine: Engine
    created: int

    def describe(self) -> dict:
        """The OpenAI model object, with the model's shape under "tinygpt" (the page uses it)."""
        c = self.model.config
        tokenizer = self.tok.to_meta()
        return {
            "id": self.id, "object": "model", "created": self.created, "owned_by": "tinygpt",
            "tinygpt": {
                "n_layer": c.n_layer, "n_head": c.n_head, "n_embd": c.n_embd, "block_size": c.block_size,
                "vocab_size": c.vocab_size, "parameters": self.model.num_params(),
                "tokenizer": tokenizer["kind"] if tokenizer["kind"] == "char" else tokenizer.get("name", "bpe"),
            },
        }


def find_sources(out_dirs: list[str], runs_dirs: list[str], init_from: list[str]) -> list[Source]:
    """The models to serve, with unique ids: each --out_dir, every run (a folder holding best.pt or
    ckpt.pt) directly inside each runs folder, and each --init_from."""
    found: list[tuple[str, str, bool]] = []
    for folder in runs_dirs:
        root = Path(folder)
        if not root.is_dir():
            raise TinyGPTError(f"runs folder not found: {root}")
        runs = sorted(p for p in root.iterdir() if (p / BEST).is_file() or (p / LATEST).is_file())
        if not runs:
            raise TinyGPTError(f"no training runs in {root} (no subfolder holds {BEST} or {LATEST})")
        found += [(run.name, str(run), False) for run in runs]
    for out_dir in out_dirs:
        path = Path(out_dir)
        name = path.resolve().name if path.is_dir() else path.resolve().parent.name  # a run or a checkpoint in it
        found.append((name, out_dir, False))
    found += [(Path(name).resolve().name if Path(name).is_dir() else name, name, True) for name in init_from]
    sources, taken = [], set()
    for name, path, hf in found:
        unique, k = name, 2
        while unique in taken:
            unique, k = f"{name}-{k}", k + 1
        taken.add(unique)
        sources.append(Source(unique, path, hf))
    return sources


def load_served(
    sources: list[Source], device: str, dtype: torch.dtype, c_decode: bool, max_batch: int, max_waiting: int,
) -> list[ServedModel]:
    """Load every source onto device, prepared for decoding (the C kernels on a CPU when c_decode).
    The models load on the decoding thread their engines share, which is left running (see
    model/serving/engine.py for why all tensor work happens there)."""
    thread = DecodingThread()
    thread.start()

    def load(source: Source) -> ServedModel:
        if source.hugging_face:
            model, tok = load_pretrained(source.path, device)
        else:
            model, tok, _ = load_model(source.path, device)
        prepare_for_sampling(model, dtype, c_decode=c_decode)
        engine = Engine(model, tok, thread, max_batch, max_waiting)
        return ServedModel(source.id, model, tok, engine, int(time.time()))

    try:
        return [thread.call(lambda source=source: load(source)).result() for source in sources]
    except BaseException:
        thread.stop()
        raise
