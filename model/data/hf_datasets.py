"""Preparing Hugging Face datasets of any size into token shards, in constant memory.

    python data/prepare.py --dataset=tinystories                         # a preset
    python data/prepare.py --dataset=owt --hf_dataset=Skylion007/openwebtext --streaming --num_proc=8
    python data/prepare.py --dataset=mine --hf_dataset=parquet --data_files='my/*.parquet'

Documents are read in chunks (from the `datasets` Arrow cache, or streamed when --streaming), tokenized
by a pool of processes (tiktoken, a chunk of documents per task), and appended to fixed-size shards
(train_000.bin, train_001.bin, ..., val_000.bin) whose list meta.json records. Memory holds a few
chunks and one shard buffer per split, never the corpus. Every document is preceded by the encoding's
end-of-text token, so documents are separated by it and `sample.py` with an empty prompt (which starts
from that token) begins a fresh document.

Validation documents come from a separate split (val_split, e.g. TinyStories' "validation") or else
are every k-th document of the training split, k = round(1 / val_fraction): deterministic, and it
needs no shuffle of a corpus that is only streamed.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import signal
import sys
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from model.data.dataset import META, staged_dataset_folder, token_dtype
from model.files import atomic_write_bytes, write_json
from model.errors import TinyGPTError, first_line
from model.data.tokenizer import TiktokenTokenizer

DOCS_PER_TASK = 1024
"""Documents per chunk handed to a worker: large enough to amortise the inter-process hand-off."""
TASKS_IN_FLIGHT_PER_WORKER = 2
"""Chunks queued per worker; bounds memory when reading outpaces tokenizing (or the reverse)."""
MIN_SHARD_TOKENS = 64
"""The fewest tokens --shard_tokens may ask for: a smaller shard holds no window of even a tiny model's
context (training draws windows inside one shard), and --shard_tokens=1 would write a file per token."""


@dataclass(frozen=True)
class HFSource:
    """Which Hugging Face dataset to read, and which column holds the text."""

    path: str
    """Hub name (e.g. 'roneneldan/TinyStories') or a file format builder ('parquet', 'json', 'csv', 'text')."""
    config: str | None = None
    """The dataset's configuration (subset), e.g. 'sample-10BT' for FineWeb-Edu."""
    split: str = "train"
    """Split whose documents are tokenized for training."""
    text_column: str = "text"
    """Column holding each document's text."""
    val_split: str | None = None
    """A separate split for validation; None takes every k-th training document instead."""


PRESETS = {
    "openwebtext": HFSource("Skylion007/openwebtext"),
    "fineweb-edu-10BT": HFSource("HuggingFaceFW/fineweb-edu", config="sample-10BT"),
    "tinystories": HFSource("roneneldan/TinyStories", val_split="validation"),
}


@functools.lru_cache(maxsize=None)
def _encoder(name: str):
    """One tiktoken encoding per process (workers load it on their first chunk)."""
    return TiktokenTokenizer(name).enc


def tokenize_chunk(
    texts: list[str], first_doc: int, encoding: str, val_every: int, dtype: str
) -> tuple[np.ndarray, np.ndarray, int]:
    """Tokenize one chunk of documents; each becomes [EOT, its tokens...]. Returns the train tokens,
    the val tokens (documents whose index is a multiple of val_every; none when val_every is 0) and
    the chunk's document count."""
    enc = _encoder(encoding)
    # Not encode_ordinary_batch: it hands each document to a thread pool as its own task, which costs
    # more than it saves on short documents (BENCHMARKS.md); processes give the parallelism.
    encoded = [enc.encode_ordinary(text) for text in texts]
    is_val = [val_every > 0 and (first_doc + i) % val_every == 0 for i in range(len(texts))]
    out = []
    for want_val in (False, True):
        docs = [ids for ids, v in zip(encoded, is_val) if v == want_val]
        tokens = np.empty(sum(len(ids) + 1 for ids in docs), dtype=dtype)
        pos = 0
        for ids in docs:  # one slice assignment per document, not a loop over tokens
            tokens[pos] = enc.eot_token
            tokens[pos + 1 : pos + 1 + len(ids)] = ids
            pos += len(ids) + 1
        out.append(tokens)
    return out[0], out[1], len(texts)


class ShardWriter:
    """Appends tokens to {split}_000.bin, {split}_001.bin, ..., each exactly shard_tokens long but the
    last. Each shard is written atomically once full, from one preallocated buffer."""

    def __init__(self, folder: Path, split: str, dtype: np.dtype, shard_tokens: int):
        self.folder, self.split = folder, split
        self.buffer = np.empty(shard_tokens, dtype=dtype)  # pages are only committed as they fill
        self.filled = 0
        self.shards: list[dict[str, Any]] = []

    @property
    def tokens(self) -> int:
        return sum(s["tokens"] for s in self.shards) + self.filled

    def write(self, tokens: np.ndarray) -> None:
        while len(tokens):
            take = min(len(tokens), len(self.buffer) - self.filled)
            self.buffer[self.filled : self.filled + take] = tokens[:take]
            self.filled += take
            tokens = tokens[take:]
            if self.filled == len(self.buffer):
                self._flush()

    def close(self) -> list[dict[str, Any]]:
        if self.filled:
            self._flush()
        return self.shards

    def _flush(self) -> None:
        name = f"{self.split}_{len(self.shards):03d}.bin"
        atomic_write_bytes(self.folder / name, memoryview(self.buffer[: self.filled]))
        self.shards.append({"file": name, "tokens": self.filled})
        self.filled = 0


def open_split(source: HFSource, split: str, streaming: bool, data_files: str | None, cache_dir: str | None):
    """The split as a `datasets` Dataset (Arrow, memory-mapped from its cache) or IterableDataset."""
    import datasets

    try:
        ds = datasets.load_dataset(
            source.path, source.config, split=split, streaming=streaming, data_files=data_files, cache_dir=cache_dir
        )
    except Exception as e:  # the library raises many types (missing files, no network, bad names)
        raise TinyGPTError(
            f"could not load Hugging Face dataset '{source.path}'"
            f"{f' ({source.config})' if source.config else ''} split '{split}': {type(e).__name__}: {first_line(e, 300)}"
        ) from None
    columns = ds.column_names
    if columns is not None and source.text_column not in columns:
        raise TinyGPTError(
            f"dataset '{source.path}' has no column '{source.text_column}'; pass --text_column, one of: "
            f"{', '.join(columns)}"
        )
    return ds


def document_chunks(ds, text_column: str) -> Iterator[list[str]]:
    try:
        for batch in ds.select_columns([text_column]).iter(batch_size=DOCS_PER_TASK):
            yield [t if isinstance(t, str) else "" for t in batch[text_column]]
    except KeyError:
        raise TinyGPTError(f"the dataset's records have no column '{text_column}'; pass --text_column") from None


def tokenizer_pool(num_proc: int) -> contextlib.AbstractContextManager:
    """num_proc worker processes (None for one: tokenize in this process).

    On Linux they are forked, so they start at once with the modules already imported, and before the
    dataset is opened, so before `datasets`/pyarrow start threads that a fork could copy mid-lock.
    Elsewhere they are spawned (fresh interpreters), as Python does by default on macOS and Windows."""
    if num_proc <= 1:
        return contextlib.nullcontext()
    method = "fork" if sys.platform == "linux" else "spawn"
    return multiprocessing.get_context(method).Pool(num_proc, initializer=_leave_ctrl_c_to_the_parent)


def _leave_ctrl_c_to_the_parent() -> None:
    """Workers ignore Ctrl-C: the parent stops the pool and prints one line, not one traceback each."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def tokenize_into(
    chunks: Iterator[list[str]], writers: tuple[ShardWriter, ShardWriter], encoding: str, val_every: int,
    pool, num_proc: int, bar: tqdm,
) -> int:
    """Tokenize every chunk (in order) into the train and val writers; returns the document count."""
    dtype = writers[0].buffer.dtype.name
    documents = 0

    def consume(result: tuple[np.ndarray, np.ndarray, int]) -> None:
        nonlocal documents
        train, val, n_docs = result
        writers[0].write(train)
        writers[1].write(val)
        documents += n_docs
        bar.update(n_docs)
        bar.set_postfix(tokens=f"{writers[0].tokens + writers[1].tokens:,}", refresh=False)

    if pool is None:
        first = 0
        for texts in chunks:
            consume(tokenize_chunk(texts, first, encoding, val_every, dtype))
            first += len(texts)
        return documents
    # In order, and at most num_proc * TASKS_IN_FLIGHT_PER_WORKER chunks waiting at any time.
    pending: deque = deque()
    first = 0
    for texts in chunks:
        pending.append(pool.apply_async(tokenize_chunk, (texts, first, encoding, val_every, dtype)))
        first += len(texts)
        if len(pending) >= num_proc * TASKS_IN_FLIGHT_PER_WORKER:
            consume(pending.popleft().get())
    while pending:
        consume(pending.popleft().get())
    return documents


def prepare_hf(
    dataset: str,
    data_dir: str | Path = "data",
    source: HFSource | None = None,
    data_files: str | None = None,
    streaming: bool = False,
    num_proc: int = 1,
    shard_tokens: int = 100_000_000,
    val_fraction: float = 0.0005,
    encoding: str = "gpt2",
    cache_dir: str | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Tokenize a Hugging Face dataset into data_dir/dataset/{train_*.bin, val_*.bin, meta.json}."""
    source = source or PRESETS.get(dataset)
    if source is None:
        raise TinyGPTError(f"no Hugging Face dataset given for '{dataset}'; pass --hf_dataset "
                           f"(presets: {', '.join(PRESETS)})")
    if encoding in ("char", "bpe"):
        raise TinyGPTError(f"Hugging Face datasets are tokenized with tiktoken (e.g. --tokenizer=gpt2), not "
                           f"'{encoding}', whose vocabulary would need the whole corpus first")
    if num_proc < 1:
        raise TinyGPTError(f"--num_proc must be positive, got {num_proc}")
    if shard_tokens < MIN_SHARD_TOKENS:
        raise TinyGPTError(f"--shard_tokens={shard_tokens} is too small: a shard needs at least {MIN_SHARD_TOKENS} "
                           f"tokens (one file per shard; 100,000,000, the default, suits most corpora)")
    if source.val_split is None and not 0.0 < val_fraction <= 0.5:
        raise TinyGPTError(f"--val_fraction must be in (0, 0.5], got {val_fraction}")
    tok = TiktokenTokenizer(encoding)
    with staged_dataset_folder(Path(data_dir) / dataset) as staging:
        return _prepare_hf_into(staging, source, data_files, streaming, num_proc, shard_tokens, val_fraction,
                                tok, cache_dir, quiet)


def _prepare_hf_into(folder: Path, source: HFSource, data_files: str | None, streaming: bool, num_proc: int,
                     shard_tokens: int, val_fraction: float, tok: TiktokenTokenizer, cache_dir: str | None,
                     quiet: bool) -> dict[str, Any]:
    encoding = tok.name
    dtype = token_dtype(tok.vocab_size)
    writers = (ShardWriter(folder, "train", dtype, shard_tokens), ShardWriter(folder, "val", dtype, shard_tokens))
    val_every = 0 if source.val_split else max(1, round(1 / val_fraction))

    def tokenize_split(split: str, targets: tuple[ShardWriter, ShardWriter], every: int, pool) -> int:
        ds = open_split(source, split, streaming, data_files, cache_dir)
        total = None if streaming else len(ds)
        with tqdm(total=total, unit="doc", desc=f"tokenizing {split}", disable=quiet, dynamic_ncols=True) as bar:
            return tokenize_into(document_chunks(ds, source.text_column), targets, encoding, every, pool, num_proc, bar)

    with tokenizer_pool(num_proc) as pool:
        documents = {source.split: tokenize_split(source.split, writers, val_every, pool)}
        if source.val_split:  # every document of the separate split goes to the val writer
            documents[source.val_split] = tokenize_split(source.val_split, (writers[1], writers[1]), 0, pool)
    shards = {"train": writers[0].close(), "val": writers[1].close()}
    for split, listed in shards.items():
        if sum(s["tokens"] for s in listed) < 2:
            raise TinyGPTError(f"the {split} split came out with fewer than 2 tokens; is the dataset empty?")
    meta = {
        "tokenizer": tok.to_meta(),
        "vocab_size": tok.vocab_size,
        "dtype": dtype.name,
        "train_tokens": writers[0].tokens,
        "val_tokens": writers[1].tokens,
        "shards": shards,
        "documents": documents,
        "source": {"hf_dataset": source.path, "config": source.config, "split": source.split,
                   "val_split": source.val_split, "text_column": source.text_column, "data_files": data_files,
                   "val_every": val_every},
    }
    write_json(folder / META, meta)
    return meta
