"""Datasets on disk: preparing a text corpus into token files, and reading batches back.

A prepared dataset is a folder with
    train.bin, val.bin   the token ids, flat, uint16 when the vocabulary fits, else uint32
    meta.json            tokenizer, dtype, vocab_size, token counts, source and its sha256
meta.json is written last, so a folder without it was never finished. As in nanoGPT, the first 90%
of the text (by characters) is the training split and the last 10% the validation split.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import os
import shutil
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from model.data import schema
from model.data import tokenizer as tokenizers
from model.errors import TinyGPTError
from model.files import atomic_write_bytes, read_json, read_user_file, staged_folder, write_json
from model.progress import progress

TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINYSHAKESPEARE_ENV = "TINYSHAKESPEARE_PATH"
SHIPPED_DIR = Path(__file__).resolve().parent
"""Where corpora that ship with the package live (as package data, so a wheel carries them too)."""
TRAIN_FRACTION = 0.9
META = "meta.json"
"""A prepared dataset's description (tokenizer, dtype, vocabulary, token counts), written last."""
ENCODE_PIECE_CHARS = 1 << 20
DOWNLOAD_CACHE = "input.txt"
"""A downloaded corpus is kept in the dataset folder under this name, and read from there next time."""


@dataclass(frozen=True)
class Source:
    """Where a named dataset's text comes from and how it is tokenized by default."""

    url: str
    tokenizer: str
    env: str | None = None
    """Environment variable that may point at a local copy (for machines without a network)."""
    shipped: str | None = None
    """Gzipped copy shipped in SHIPPED_DIR, read when neither --input nor the variable is given."""


KNOWN_DATASETS = {
    "shakespeare_char": Source(TINYSHAKESPEARE_URL, "char", TINYSHAKESPEARE_ENV, "tinyshakespeare.txt.gz"),
    "shakespeare": Source(TINYSHAKESPEARE_URL, "gpt2", TINYSHAKESPEARE_ENV, "tinyshakespeare.txt.gz"),
}


def read_corpus(path: str | Path) -> str:
    """The UTF-8 text of a corpus file; a name ending in .gz is decompressed first."""
    path = Path(path)
    raw = read_user_file(path, "input file")
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise TinyGPTError(f"{path} is not a readable gzip file ({e})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TinyGPTError(f"{path} is not UTF-8 text (bad byte at offset {e.start})") from None
    if not text.strip():
        raise TinyGPTError(f"{path} is empty; a corpus needs some text")
    return text


def download(url: str, dest: Path, dataset: str, timeout: float = 30.0) -> None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            data = response.read()
    except Exception as e:
        source = KNOWN_DATASETS.get(dataset)
        env = f", or set {source.env}=FILE" if source and source.env else ""
        raise TinyGPTError(
            f"could not download {url} ({type(e).__name__}: {e}); with a local copy of the text, run "
            f"python data/prepare.py --dataset={dataset} --input=FILE{env}"
        ) from None
    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(dest, data)


def resolve_input(dataset: str, input_path: str | None, url: str | None, folder: Path, staging: Path) -> Path:
    """The local text file for a dataset: --input, else $ENV, else (unless --url is given) the shipped
    copy, else a download cached in the dataset `folder`, else a download into `staging` (the folder
    being prepared, which takes the dataset folder's place when it is done)."""
    if input_path:
        return Path(input_path)
    source = KNOWN_DATASETS.get(dataset)
    if source and source.env and os.environ.get(source.env):
        return Path(os.environ[source.env])
    if not url and source and source.shipped and (SHIPPED_DIR / source.shipped).is_file():
        return SHIPPED_DIR / source.shipped
    url = url or (source.url if source else None)
    if url is None:
        raise TinyGPTError(
            f"don't know where to get dataset '{dataset}'; pass --input=FILE or --url=URL "
            f"(known datasets: {', '.join(KNOWN_DATASETS)})"
        )
    cached = folder / DOWNLOAD_CACHE
    if cached.is_file():
        return cached
    print(f"downloading {url} -> {cached}")
    download(url, staging / DOWNLOAD_CACHE, dataset)
    return staging / DOWNLOAD_CACHE


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def prepare(
    dataset: str = "shakespeare_char",
    data_dir: str | Path = "data",
    input_path: str | None = None,
    url: str | None = None,
    tokenizer: str | None = None,
    quiet: bool = False,
    vocab_size: int | None = None,
    synthetic: str | None = None,
) -> dict[str, Any]:
    """Tokenize a corpus into data_dir/dataset/{train.bin, val.bin, meta.json}; returns the meta.
    tokenizer='bpe' learns a byte-level BPE of vocab_size tokens from the training split (only), saved
    as tokenizer.json beside meta.json. synthetic names a generated corpus (model/data/synthetic.py)
    to use instead of a text file."""
    folder = Path(data_dir) / dataset
    source = KNOWN_DATASETS.get(dataset)
    kind = tokenizer or (source.tokenizer if source else "char")
    with staged_dataset_folder(folder) as staging:
        return _prepare_into(staging, folder, dataset, kind, input_path, url, quiet, vocab_size, synthetic)


@contextlib.contextmanager
def staged_dataset_folder(folder: Path) -> Iterator[Path]:
    """The folder to prepare a dataset in: it replaces `folder` only once the preparation has
    succeeded, so a failed one leaves a prepared dataset as it was; nor does a failed one leave
    behind any parent folder it created."""
    created = next((p for p in reversed([folder, *folder.parents]) if not p.exists()), None)
    try:
        with staged_folder(folder, carry_over=(DOWNLOAD_CACHE,), what="dataset folder") as staging:
            yield staging
    except BaseException:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise


def _prepare_into(staging: Path, folder: Path, dataset: str, kind: str, input_path: str | None, url: str | None,
                  quiet: bool, vocab_size: int | None, synthetic: str | None = None) -> dict[str, Any]:
    if synthetic is not None:
        from model.data.synthetic import synthetic_text

        text, path = synthetic_text(synthetic), f"synthetic:{synthetic}"
    else:
        path = resolve_input(dataset, input_path, url, folder, staging)
        text = read_corpus(path)
    n = int(len(text) * TRAIN_FRACTION)
    # a character vocabulary must cover the validation split's characters too; a byte-level BPE
    # encodes anything, so it learns from the training split alone and validation stays unseen
    tok = tokenizers.make(kind, text[:n] if kind == "bpe" else text, vocab_size, quiet)
    dtype = token_dtype(tok.vocab_size)
    counts = {}
    for split, part in (("train", text[:n]), ("val", text[n:])):
        ids = encode_with_progress(tok, part, dtype, f"{dataset} {split}", quiet)
        if len(ids) < 2:
            raise TinyGPTError(f"the {split} split of {path} has fewer than 2 tokens; the corpus is too small")
        atomic_write_bytes(staging / f"{split}.bin", ids.tobytes())
        counts[split] = len(ids)
    meta = {
        "tokenizer": tok.to_file_meta(staging) if isinstance(tok, tokenizers.BPETokenizer) else tok.to_meta(),
        "vocab_size": tok.vocab_size,
        "dtype": dtype.name,
        "train_tokens": counts["train"],
        "val_tokens": counts["val"],
        "source": path if isinstance(path, str) else str(folder / path.name if path.parent == staging else path),
        "source_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
    }
    write_json(staging / META, meta)
    return meta


class Shards:
    """A split stored as one or more memory-mapped token files. A window never crosses from one shard
    to the next; window starts are numbered across all shards, so a random start picks each shard in
    proportion to its size."""

    def __init__(self, arrays: list[np.ndarray]):
        self.arrays = arrays
        self.lengths = np.array([len(a) for a in arrays], dtype=np.int64)
        self.longest = int(self.lengths.max())

    def __len__(self) -> int:
        return int(self.lengths.sum())

    def starts(self, window: int) -> int:
        """How many windows of `window` + 1 tokens fit inside the shards (the range of random starts)."""
        return int(self._starts_per_shard(window).sum())

    def _starts_per_shard(self, window: int) -> np.ndarray:
        return np.maximum(self.lengths - window, 0)  # a shard shorter than a window offers none

    def windows(self, starts: np.ndarray, length: int) -> np.ndarray:
        """The windows of `length` tokens at global start numbers `starts` (from `starts(length - 1)`),
        as int64 (len(starts), length): one fancy-index per shard touched, no loop over tokens."""
        per_shard = np.cumsum(self._starts_per_shard(length - 1))  # starts in shards 0..i
        shard_of = np.searchsorted(per_shard, starts, side="right")
        offsets = starts - np.concatenate(([0], per_shard[:-1]))[shard_of]
        out = np.empty((len(starts), length), dtype=np.int64)
        for shard in np.unique(shard_of):
            pick = shard_of == shard
            out[pick] = self.arrays[shard][offsets[pick, None] + np.arange(length)]
        return out

    def concatenated(self) -> np.ndarray:
        """The whole split as one int64 array (for exact evaluation over a validation split)."""
        return np.concatenate([np.asarray(a, dtype=np.int64) for a in self.arrays])


def encode_with_progress(tok, text: str, dtype: np.dtype, desc: str, quiet: bool = False,
                         piece_chars: int = ENCODE_PIECE_CHARS) -> np.ndarray:
    """tok.encode(text) as an array, done in pieces of about piece_chars so a progress bar can move.
    The pieces are cut where GPT-2-style pre-tokenisation cuts anyway (tokenizer.text_pieces), so the
    ids are exactly those of encoding the whole text at once."""
    pieces = []
    with progress(total=len(text), desc=desc, unit="char", unit_scale=True, quiet=quiet) as bar:
        for piece in tokenizers.text_pieces(text, piece_chars):
            pieces.append(np.array(tok.encode(piece), dtype=dtype))
            bar.update(len(piece))
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=dtype)


class TokenDataset:
    """A prepared dataset, memory-mapped: batches are gathered with one numpy fancy-index, no Python
    loop over tokens, and nothing larger than a batch is read into memory."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        meta_path = self.folder / META
        if not meta_path.is_file():
            raise TinyGPTError(
                f"dataset not prepared: {meta_path} is missing; run `python data/prepare.py "
                f"--dataset={self.folder.name}`"
            )
        self.meta = read_json(meta_path)
        schema.check(self.meta, schema.DatasetMeta, str(meta_path))
        self.vocab_size = self.meta["vocab_size"]
        self.dtype = np.dtype(self.meta["dtype"])
        if self.vocab_size > np.iinfo(self.dtype).max + 1:
            raise TinyGPTError(f"{meta_path}: vocab_size {self.vocab_size} does not fit dtype {self.dtype}")
        self.meta["tokenizer"] = tokenizers.resolve_meta(self.meta.get("tokenizer", {}), self.folder)
        tokenizer_vocab = self.meta["tokenizer"].get("vocab_size")
        if tokenizer_vocab != self.vocab_size:
            raise TinyGPTError(
                f"{meta_path}: vocab_size {self.vocab_size} does not match its tokenizer's ({tokenizer_vocab})"
            )
        self.splits = {split: self._open_split(split) for split in ("train", "val")}

    def _open_split(self, split: str) -> Shards:
        """A split is one {split}.bin file, or the list of shards that meta.json names under "shards"."""
        listed = self.meta.get("shards", {}).get(split)
        if listed is None:
            return Shards([self._open(self.folder / f"{split}.bin", self.meta.get(f"{split}_tokens"))])
        return Shards([self._open(self.folder / s["file"], s["tokens"]) for s in listed])

    def _open(self, path: Path, expected: int | None) -> np.ndarray:
        if not path.is_file():
            raise TinyGPTError(f"dataset file missing: {path}; prepare the dataset again")
        size = path.stat().st_size
        if size % self.dtype.itemsize or (expected is not None and size // self.dtype.itemsize != expected):
            raise TinyGPTError(
                f"{path} holds {size} bytes, which does not match meta.json ({expected} tokens of "
                f"{self.dtype}); the file is truncated or from another preparation; prepare it again"
            )
        if size // self.dtype.itemsize < 2:
            raise TinyGPTError(f"{path} has fewer than 2 tokens")
        return np.memmap(path, dtype=self.dtype, mode="r")

    def _check_ids(self, ids: np.ndarray, split: str) -> None:
        # An id the vocabulary doesn't have means a corrupted .bin (or one from another preparation); the
        # embedding lookup would otherwise fail with an index error deep inside the model.
        if ids.size and int(ids.max()) >= self.vocab_size:
            raise TinyGPTError(
                f"{self.folder / split}.bin holds token id {int(ids.max())} but meta.json's vocabulary has "
                f"{self.vocab_size} tokens; the file is corrupted or from another preparation; prepare it again"
            )

    def tokenizer(self):
        return tokenizers.from_meta(self.meta["tokenizer"], str(self.folder / META))

    @functools.cached_property
    def byte_lengths(self) -> Tensor:
        """UTF-8 bytes of text per token id, int64 (vocab_size,): for bits per byte."""
        return torch.from_numpy(tokenizers.token_byte_lengths(self.tokenizer()))

    def target_bytes(self, split: str) -> int:
        """UTF-8 bytes of the text spelled by every target of `windows(split)` (all tokens but the first)."""
        data = self.splits[split].concatenated()
        self._check_ids(data, split)
        return int(self.byte_lengths[torch.from_numpy(data[1:])].sum())

    def get_batch(
        self, split: str, batch_size: int, block_size: int, generator: torch.Generator, rank: int = 0,
        world_size: int = 1,
    ) -> tuple[Tensor, Tensor]:
        """batch_size random windows: inputs x (B, T) and next-token targets y (B, T), int64.

        Under data parallelism the generator (seeded alike on every rank) draws the starts of the whole
        global batch, world_size * batch_size windows, and rank r reads only its rows r*B .. r*B+B-1:
        the ranks together see exactly what one process with batch world_size * B would see."""
        shards = self.splits[split]
        block_size = min(block_size, shards.longest - 1)
        starts = torch.randint(shards.starts(block_size), (world_size * batch_size,), generator=generator).numpy()
        rows = shards.windows(starts[rank * batch_size : (rank + 1) * batch_size], block_size + 1)  # (B, T+1)
        self._check_ids(rows, split)
        rows = torch.from_numpy(rows)
        return rows[:, :-1], rows[:, 1:]

    def windows(self, split: str, block_size: int) -> tuple[Tensor, Tensor]:
        """Every token of a split once as a target: non-overlapping windows of block_size, the last one
        shorter and right-padded with IGNORE_INDEX targets. Returns x, y of shape (N, block_size)."""
        data = self.splits[split].concatenated()
        self._check_ids(data, split)
        return eval_windows(data, block_size)


def eval_windows(data: np.ndarray, block_size: int) -> tuple[Tensor, Tensor]:
    """Every token of `data` but the first once as a target of the one before it: non-overlapping
    windows of block_size, the last one shorter and right-padded with IGNORE_INDEX targets.
    Returns x, y of shape (N, block_size)."""
    from model.nn.gpt import IGNORE_INDEX

    n_targets = len(data) - 1
    n_windows = -(-n_targets // block_size)
    x = np.zeros(n_windows * block_size, dtype=np.int64)
    y = np.full(n_windows * block_size, IGNORE_INDEX, dtype=np.int64)
    x[:n_targets] = data[:-1]
    y[:n_targets] = data[1:]
    return torch.from_numpy(x).view(n_windows, block_size), torch.from_numpy(y).view(n_windows, block_size)


class BatchLoader:
    """A rank's training batches, on the device. On CUDA, while a step runs, the next batch is already
    read (into pinned memory, which the GPU copies from without the CPU's help) and its copy queued
    behind the step, so the GPU never waits for data. Elsewhere each batch is read when it is asked for.

    `generator_state()` is the batch generator's state *before* the batch read in advance, so a
    checkpoint resumes at the first batch that was not trained on."""

    def __init__(self, dataset: TokenDataset, split: str, batch_size: int, block_size: int,
                 generator: torch.Generator, device: str, rank: int = 0, world_size: int = 1,
                 prefetch: bool | None = None):
        self.dataset, self.split, self.batch_size, self.block_size = dataset, split, batch_size, block_size
        self.generator, self.device, self.rank, self.world_size = generator, device, rank, world_size
        self.cuda = device.startswith("cuda")
        self.prefetch = self.cuda if prefetch is None else prefetch
        self.ahead: tuple[Tensor, Tensor] | None = None
        self.state_before_ahead: Tensor | None = None

    def _read(self) -> tuple[Tensor, Tensor]:
        x, y = self.dataset.get_batch(self.split, self.batch_size, self.block_size, self.generator, self.rank,
                                      self.world_size)
        if self.cuda:
            x, y = x.pin_memory(), y.pin_memory()
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def next(self) -> tuple[Tensor, Tensor]:
        """The next batch x, y (B, T) on the device."""
        batch = self.ahead if self.ahead is not None else self._read()
        self.ahead = None
        if self.prefetch:
            self.state_before_ahead = self.generator.get_state()
            self.ahead = self._read()
        return batch

    def generator_state(self) -> Tensor:
        return self.state_before_ahead if self.ahead is not None else self.generator.get_state()

    def set_generator_state(self, state: Tensor) -> None:
        self.generator.set_state(state)
        self.ahead = None
