"""Hugging Face dataset preparation, offline: small local parquet/json datasets read through `datasets`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tiktoken

from model.cli import prepare_main
from model.data.dataset import Shards, TokenDataset
from model.data.hf_datasets import HFSource, prepare_hf

TEXTS = [f"Document {i}: " + "héllo wörld, 東京 " * (i % 7) + "\n\nthe end." for i in range(40)] + [""]


def expected_tokens(texts: list[str], val_every: int) -> dict[str, np.ndarray]:
    """Independent reference: plain single-text tiktoken, EOT before each document, every k-th to val."""
    enc = tiktoken.get_encoding("gpt2")
    out: dict[str, list[int]] = {"train": [], "val": []}
    for i, text in enumerate(texts):
        split = "val" if val_every and i % val_every == 0 else "train"
        out[split] += [enc.eot_token] + enc.encode_ordinary(text)
    return {k: np.array(v) for k, v in out.items()}


def write_parquet(path: Path, texts: list[str]) -> Path:
    import datasets

    datasets.Dataset.from_dict({"body": texts, "id": list(range(len(texts)))}).to_parquet(str(path))
    return path


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t, "n": i}) + "\n" for i, t in enumerate(texts)), encoding="utf-8")
    return path


@pytest.mark.needs_gpt2
def test_parquet_tokens_equal_tiktoken_with_eot_between_documents(tmp_path: Path):
    files = str(write_parquet(tmp_path / "docs.parquet", TEXTS))
    source = HFSource("parquet", text_column="body")
    meta = prepare_hf("hf", tmp_path / "data", source, files, shard_tokens=64, val_fraction=0.25,
                      cache_dir=str(tmp_path / "cache"), quiet=True)
    dataset = TokenDataset(tmp_path / "data" / "hf")
    expected = expected_tokens(TEXTS, val_every=4)
    for split in ("train", "val"):
        np.testing.assert_array_equal(dataset.splits[split].concatenated(), expected[split])
        shards = meta["shards"][split]
        assert all(s["tokens"] == 64 for s in shards[:-1]) and 0 < shards[-1]["tokens"] <= 64
    assert len(meta["shards"]["train"]) > 3
    assert meta["documents"] == {"train": len(TEXTS)}

    # preparing again with bigger shards leaves no stale shard files behind
    prepare_hf("hf", tmp_path / "data", source, files, shard_tokens=10_000, val_fraction=0.25,
               cache_dir=str(tmp_path / "cache"), quiet=True)
    assert sorted(p.name for p in (tmp_path / "data" / "hf").glob("*.bin")) == ["train_000.bin", "val_000.bin"]
    np.testing.assert_array_equal(TokenDataset(tmp_path / "data" / "hf").splits["train"].concatenated(),
                                  expected["train"])


@pytest.mark.needs_gpt2
def test_streaming_json_with_two_processes_from_the_command_line(tmp_path: Path, capsys):
    files = str(write_jsonl(tmp_path / "docs.jsonl", TEXTS))
    status = prepare_main(["--dataset=stream", f"--data_dir={tmp_path / 'data'}", "--hf_dataset=json",
                           f"--data_files={files}", "--streaming", "--num_proc=2", "--shard_tokens=100",
                           "--val_fraction=0.1", f"--cache_dir={tmp_path / 'cache'}"])
    assert status == 0, capsys.readouterr().err
    dataset = TokenDataset(tmp_path / "data" / "stream")
    expected = expected_tokens(TEXTS, val_every=10)
    for split in ("train", "val"):
        np.testing.assert_array_equal(dataset.splits[split].concatenated(), expected[split])
    import torch

    x, y = dataset.get_batch("train", 16, 32, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (16, 32) and torch.equal(x[:, 1:], y[:, :-1])


@pytest.mark.needs_gpt2
def test_separate_validation_split(tmp_path: Path):
    train_texts, val_texts = TEXTS[:30], TEXTS[30:]
    files = {"train": str(write_jsonl(tmp_path / "train.jsonl", train_texts)),
             "validation": str(write_jsonl(tmp_path / "val.jsonl", val_texts))}
    meta = prepare_hf("tv", tmp_path / "data", HFSource("json", val_split="validation"), files,
                      cache_dir=str(tmp_path / "cache"), quiet=True)
    dataset = TokenDataset(tmp_path / "data" / "tv")
    np.testing.assert_array_equal(dataset.splits["train"].concatenated(), expected_tokens(train_texts, 0)["train"])
    np.testing.assert_array_equal(dataset.splits["val"].concatenated(), expected_tokens(val_texts, 0)["train"])
    assert meta["documents"] == {"train": 30, "validation": len(val_texts)}


@pytest.mark.parametrize("flags, message", [
    pytest.param(["--text_column=content"], "no column 'content'", marks=pytest.mark.needs_gpt2),
    (["--tokenizer=char"], "not 'char'"),
    (["--val_fraction=0"], "--val_fraction"),
])
def test_bad_input_is_one_line_and_no_meta(tmp_path: Path, capsys, flags: list[str], message: str):
    files = str(write_jsonl(tmp_path / "docs.jsonl", TEXTS))
    status = prepare_main(["--dataset=bad", f"--data_dir={tmp_path / 'data'}", "--hf_dataset=json",
                           f"--data_files={files}", f"--cache_dir={tmp_path / 'cache'}", *flags])
    err = capsys.readouterr().err  # may also hold the datasets library's own progress bars
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert status == 1 and len(errors) == 1 and message in errors[0] and "Traceback" not in err
    assert not (tmp_path / "data" / "bad" / "meta.json").exists()


def test_shard_windows_stay_inside_one_shard_and_cover_every_start():
    shards = Shards([np.arange(0, 10), np.arange(100, 103), np.arange(200, 230)])  # the middle one is too short
    length = 6
    n = shards.starts(length - 1)
    assert n == (10 - 5) + 0 + (30 - 5)
    rows = shards.windows(np.arange(n), length)
    assert (np.diff(rows, axis=1) == 1).all()  # consecutive tokens: no window crosses a shard boundary
    assert len({tuple(r) for r in rows}) == n
    assert set(rows[:, 0]) == set(range(0, 5)) | set(range(200, 225))
