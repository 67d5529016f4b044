"""Where a known dataset's text comes from: --input, else its environment variable, else the copy the
package ships (so the quick start works offline), else a download. Downloads here read files the test
writes, through file:// URLs: no network."""

from __future__ import annotations

import dataclasses
import fnmatch
import gzip
import hashlib
import tomllib

import pytest

from helpers import ROOT
from model.data import dataset
from model.data.dataset import KNOWN_DATASETS, SHIPPED_DIR, TINYSHAKESPEARE_ENV, prepare, read_corpus
from model.errors import TinyGPTError

# The corpus nanoGPT downloads from karpathy/char-rnn: its length in characters and its sha256.
TINYSHAKESPEARE_CHARS = 1_115_394
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


@pytest.fixture
def offline(monkeypatch):
    """No environment variable, and any download attempt fails the test."""
    monkeypatch.delenv(TINYSHAKESPEARE_ENV, raising=False)

    def no_download(url, dest, timeout=30.0):
        raise AssertionError(f"tried to download {url}")

    monkeypatch.setattr(dataset, "download", no_download)


def shipped_path(name: str = "shakespeare_char"):
    return SHIPPED_DIR / KNOWN_DATASETS[name].shipped


def test_the_shipped_copy_is_tiny_shakespeare():
    text = gzip.decompress(shipped_path().read_bytes()).decode("utf-8")
    assert len(text) == TINYSHAKESPEARE_CHARS
    assert hashlib.sha256(text.encode("utf-8")).hexdigest() == TINYSHAKESPEARE_SHA256
    assert shipped_path("shakespeare") == shipped_path("shakespeare_char")


def test_the_shipped_copy_is_package_data():
    """A non-editable install (a wheel) carries only what pyproject.toml lists as package data."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = pyproject["tool"]["setuptools"]["package-data"]["model"]
    inside_package = shipped_path().relative_to(ROOT / "model").as_posix()
    assert any(fnmatch.fnmatch(inside_package, pattern) for pattern in patterns), (inside_package, patterns)


def test_known_dataset_prepares_from_the_shipped_copy_offline(tmp_path, offline):
    meta = prepare("shakespeare_char", tmp_path, quiet=True)
    assert meta["source"] == str(shipped_path())
    assert meta["source_sha256"] == TINYSHAKESPEARE_SHA256
    assert meta["vocab_size"] == 65
    assert meta["train_tokens"] + meta["val_tokens"] == TINYSHAKESPEARE_CHARS
    assert not (tmp_path / "shakespeare_char" / "input.txt").exists()  # nothing downloaded or copied


def test_the_environment_variable_wins_over_the_shipped_copy(tmp_path, offline, monkeypatch):
    local = tmp_path / "local.txt"
    local.write_text("To be, or not to be: that is the question.\n" * 20, encoding="utf-8")
    monkeypatch.setenv(TINYSHAKESPEARE_ENV, str(local))
    meta = prepare("shakespeare_char", tmp_path / "data", quiet=True)
    assert meta["source"] == str(local)
    assert meta["train_tokens"] + meta["val_tokens"] == len(local.read_text(encoding="utf-8"))


@pytest.fixture
def served_text(tmp_path):
    """A text file the test 'downloads' through a file:// URL."""
    path = tmp_path / "served.txt"
    path.write_text("Now is the winter of our discontent\n" * 30, encoding="utf-8")
    return path


def test_without_the_shipped_copy_the_download_is_the_fallback(tmp_path, served_text, monkeypatch, capsys):
    monkeypatch.delenv(TINYSHAKESPEARE_ENV, raising=False)
    monkeypatch.setattr(dataset, "SHIPPED_DIR", tmp_path / "not-installed")
    source = dataclasses.replace(KNOWN_DATASETS["shakespeare_char"], url=served_text.as_uri())
    monkeypatch.setitem(KNOWN_DATASETS, "shakespeare_char", source)

    meta = prepare("shakespeare_char", tmp_path / "data", quiet=True)
    cached = tmp_path / "data" / "shakespeare_char" / "input.txt"
    assert f"downloading {served_text.as_uri()}" in capsys.readouterr().out
    assert cached.read_bytes() == served_text.read_bytes()
    assert meta["source"] == str(cached)

    served_text.unlink()  # a second prepare reads the cached download
    assert prepare("shakespeare_char", tmp_path / "data", quiet=True)["source_sha256"] == meta["source_sha256"]


def test_an_explicit_url_is_downloaded_even_with_a_shipped_copy(tmp_path, served_text, monkeypatch):
    monkeypatch.delenv(TINYSHAKESPEARE_ENV, raising=False)
    meta = prepare("shakespeare_char", tmp_path, url=served_text.as_uri(), quiet=True)
    assert meta["source"] == str(tmp_path / "shakespeare_char" / "input.txt")
    assert meta["train_tokens"] + meta["val_tokens"] == len(served_text.read_text(encoding="utf-8"))


def test_a_failed_download_is_one_clear_error(tmp_path):
    missing = (tmp_path / "nowhere.txt").as_uri()
    with pytest.raises(TinyGPTError, match=f"could not download {missing}"):
        prepare("elsewhere", tmp_path / "data", url=missing, quiet=True)
    assert not (tmp_path / "data" / "elsewhere" / "input.txt").exists()


def test_gzipped_input_is_read_and_a_broken_one_refused(tmp_path):
    text = "All the world's a stage\n" * 10
    good = tmp_path / "good.txt.gz"
    good.write_bytes(gzip.compress(text.encode("utf-8")))
    assert read_corpus(good) == text
    broken = tmp_path / "broken.txt.gz"
    broken.write_bytes(gzip.compress(text.encode("utf-8"))[:-12])
    with pytest.raises(TinyGPTError, match="not a readable gzip file"):
        read_corpus(broken)
    garbage = tmp_path / "garbage.txt.gz"
    garbage.write_bytes(b"plain text, not gzip")
    with pytest.raises(TinyGPTError, match="not a readable gzip file"):
        read_corpus(garbage)
