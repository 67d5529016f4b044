"""Tokenizers: characters (one token per distinct character in the corpus) or GPT-2's BPE via tiktoken.

A tokenizer round-trips through a small JSON-able dict (`to_meta` / `from_meta`) that is stored in the
dataset's meta.json and in every checkpoint, so sampling always decodes with the training vocabulary.
"""

from __future__ import annotations

from typing import Any

from model.errors import TinyGPTError


class CharTokenizer:
    """Each distinct character is a token, numbered in sorted order (as nanoGPT's shakespeare_char)."""

    def __init__(self, chars: str | list[str]):
        self.chars = "".join(chars)
        if len(set(self.chars)) != len(self.chars):
            raise TinyGPTError("character vocabulary has repeated characters")
        self.stoi = {ch: i for i, ch in enumerate(self.chars)}
        self.vocab_size = len(self.chars)
        self.eot_token = None

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls(sorted(set(text)))

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[ch] for ch in text]
        except KeyError as e:
            missing = sorted({ch for ch in text if ch not in self.stoi})
            shown = ", ".join(repr(ch) for ch in missing[:10])
            raise TinyGPTError(
                f"text has {len(missing)} character(s) outside this character-level vocabulary: {shown}"
            ) from e

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def to_meta(self) -> dict[str, Any]:
        return {"kind": "char", "chars": self.chars, "vocab_size": self.vocab_size}


class TiktokenTokenizer:
    """A tiktoken byte-pair encoding (default GPT-2's, 50257 tokens)."""

    def __init__(self, name: str = "gpt2"):
        import tiktoken

        try:
            self.enc = tiktoken.get_encoding(name)
        except ValueError as e:
            raise TinyGPTError(f"unknown tiktoken encoding '{name}': {e}") from None
        except Exception as e:  # no network and no cache: say how to fix it in one line
            raise TinyGPTError(
                f"could not load tiktoken encoding '{name}' ({type(e).__name__}); offline, set "
                "TIKTOKEN_CACHE_DIR to a folder holding tiktoken's cache files"
            ) from None
        self.name = name
        self.vocab_size = self.enc.n_vocab
        self.eot_token = self.enc.eot_token

    def encode(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)

    def decode(self, ids: list[int]) -> str:
        return self.enc.decode(ids)

    def to_meta(self) -> dict[str, Any]:
        return {"kind": "tiktoken", "name": self.name, "vocab_size": self.vocab_size}


def from_meta(meta: dict[str, Any]) -> CharTokenizer | TiktokenTokenizer:
    kind = meta.get("kind")
    if kind == "char":
        return CharTokenizer(meta["chars"])
    if kind == "tiktoken":
        return TiktokenTokenizer(meta.get("name", "gpt2"))
    raise TinyGPTError(f"unknown tokenizer kind {kind!r} (expected 'char' or 'tiktoken')")


def make(kind: str, text: str | None = None) -> CharTokenizer | TiktokenTokenizer:
    """'char' (needs the corpus text to build its vocabulary) or a tiktoken encoding name like 'gpt2'."""
    if kind == "char":
        if not text:
            raise TinyGPTError("a character-level tokenizer needs a non-empty corpus")
        return CharTokenizer.from_text(text)
    return TiktokenTokenizer(kind)


def token_bytes(tok: CharTokenizer | TiktokenTokenizer, ids: list[int]) -> bytes:
    if isinstance(tok, TiktokenTokenizer):
        return tok.enc.decode_bytes(ids)
    return tok.decode(ids).encode("utf-8")


class StreamDecoder:
    """Turns tokens into text as they arrive. A BPE token can end in the middle of a multi-byte
    character, so bytes are held back until they form whole characters."""

    def __init__(self, tok: CharTokenizer | TiktokenTokenizer):
        import codecs

        self.tok = tok
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, ids: list[int]) -> str:
        return self.decoder.decode(token_bytes(self.tok, ids))

    def flush(self) -> str:
        return self.decoder.decode(b"", final=True)
