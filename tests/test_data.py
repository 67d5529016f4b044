import json

import numpy as np
import pytest
import torch

from model.data.dataset import TokenDataset, prepare
from model.errors import TinyGPTError
from model.data.tokenizer import from_meta


@pytest.mark.parametrize("tokenizer", ["char", pytest.param("gpt2", marks=pytest.mark.needs_gpt2)])
def test_prepare_round_trip_and_split(tmp_path, corpus, tokenizer):
    text = corpus.read_text()
    meta = prepare("ds", tmp_path, input_path=str(corpus), tokenizer=tokenizer)
    folder = tmp_path / "ds"
    assert json.loads((folder / "meta.json").read_text()) == meta
    tok = from_meta(meta["tokenizer"])
    dtype = np.uint16
    assert meta["dtype"] == "uint16"
    train = np.fromfile(folder / "train.bin", dtype=dtype)
    val = np.fromfile(folder / "val.bin", dtype=dtype)
    n = int(len(text) * 0.9)
    assert tok.decode(train.tolist()) == text[:n]
    assert tok.decode(val.tolist()) == text[n:]
    assert (len(train), len(val)) == (meta["train_tokens"], meta["val_tokens"])
    if tokenizer == "char":
        assert meta["vocab_size"] == len(set(text)) and len(train) == n
    else:
        assert meta["vocab_size"] == 50257 and len(train) < n  # BPE packs several characters per token


def test_large_vocabulary_uses_uint32(tmp_path):
    text = "".join(chr(0x10000 + i) for i in range(70_000)) * 2
    path = tmp_path / "wide.txt"
    path.write_text(text, encoding="utf-8")
    meta = prepare("wide", tmp_path, input_path=str(path), tokenizer="char")
    assert meta["dtype"] == "uint32" and meta["vocab_size"] == 70_000
    assert int(np.fromfile(tmp_path / "wide" / "train.bin", dtype=np.uint32).max()) >= 2**16
    x, _ = TokenDataset(tmp_path / "wide").get_batch("train", 64, 32, torch.Generator().manual_seed(0))
    assert int(x.max()) >= 2**16


def test_batches_are_shifted_windows(char_data_dir):
    ds = TokenDataset(char_data_dir / "tiny")
    x, y = ds.get_batch("train", 4, 16, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])
    x2, _ = ds.get_batch("train", 4, 16, torch.Generator().manual_seed(0))
    assert torch.equal(x, x2)


def test_windows_cover_every_target_once(char_data_dir):
    ds = TokenDataset(char_data_dir / "tiny")
    val = np.fromfile(char_data_dir / "tiny" / "val.bin", dtype=np.uint16).astype(np.int64)
    x, y = ds.windows("val", 64)
    kept = y[y != -1]
    assert torch.equal(kept, torch.from_numpy(val[1:]))
    assert torch.equal(x.flatten()[: len(val) - 1], torch.from_numpy(val[:-1]))


def test_missing_dataset_says_how_to_prepare(tmp_path):
    with pytest.raises(TinyGPTError, match="dataset not prepared.*prepare.py --dataset=nothing"):
        TokenDataset(tmp_path / "nothing")


def test_truncated_bin_is_refused(char_data_dir):
    path = char_data_dir / "tiny" / "val.bin"
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(TinyGPTError, match="truncated"):
        TokenDataset(char_data_dir / "tiny")


def test_empty_and_non_utf8_corpora_are_refused(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(TinyGPTError, match="empty"):
        prepare("e", tmp_path, input_path=str(empty))
    latin = tmp_path / "latin.txt"
    latin.write_bytes("café".encode("latin-1") * 10)
    with pytest.raises(TinyGPTError, match="not UTF-8"):
        prepare("l", tmp_path, input_path=str(latin))
    assert not (tmp_path / "l" / "meta.json").exists()


def test_tinyshakespeare_comes_from_the_environment_variable(tmp_path, shakespeare_text, monkeypatch):
    meta = prepare("shakespeare_char", tmp_path)
    assert meta["vocab_size"] == 65
    assert meta["train_tokens"] + meta["val_tokens"] == len(shakespeare_text) == 1_115_394
    assert meta["source_sha256"].startswith("86c4e6aa")
