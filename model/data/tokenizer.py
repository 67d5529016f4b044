"""Tokenizers: characters (one token per distinct character in the corpus), GPT-2's BPE via tiktoken,
or a byte-level BPE learned from your own corpus.

A tokenizer round-trips through a small JSON-able dict (`to_meta` / `from_meta`) that is stored in the
dataset's meta.json and in every checkpoint, so sampling always decodes with the training vocabulary.
A learned BPE keeps its merges in a Hugging Face tokenizer.json: beside meta.json in a dataset folder
(meta.json names the file), and inline in checkpoints (`to_meta` carries the file's text).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from model.data import schema
from model.errors import TinyGPTError

EOT = "<|endoftext|>"
"""The end-of-text special token (GPT-2's spelling) that separates documents in a learned BPE."""
BPE_FILE = "tokenizer.json"
"""The file name of a learned BPE (Hugging Face tokenizers' format) in a dataset folder."""
CHAT_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
"""The chat template's special tokens: the start of a system, user and assistant turn, and the end of
any turn. A chat tokenizer numbers them after its base vocabulary, in this order."""
CHAT_ROLES = ("system", "user", "assistant")
BPE_TRAIN_PIECE_CHARS = 1 << 16
"""The training text is handed to the BPE trainer in pieces of about this many characters, so that it
counts words on every core."""


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


class ChatTokenizer:
    """A base tokenizer (char, GPT-2 or a learned BPE) plus the chat template's special tokens, numbered
    base.vocab_size, base.vocab_size + 1, ... (CHAT_TOKENS' order). Text never encodes to a special
    token: `encode` is the base tokenizer's, so a message that spells "<|user|>" stays plain text; the
    template (model/data/chat.py) places the special ids between turns."""

    def __init__(self, base: CharTokenizer | TiktokenTokenizer, specials: tuple[str, ...] | list[str] = CHAT_TOKENS):
        if isinstance(base, ChatTokenizer):
            raise TinyGPTError("a chat tokenizer's base can't be another chat tokenizer")
        if tuple(specials) != CHAT_TOKENS:
            raise TinyGPTError(f"chat tokens must be {', '.join(CHAT_TOKENS)}, got {', '.join(map(str, specials))}")
        self.base = base
        self.specials = tuple(specials)
        self.special_ids = {name: base.vocab_size + i for i, name in enumerate(self.specials)}
        self.vocab_size = base.vocab_size + len(self.specials)
        self.eot_token = base.eot_token

    def role_id(self, role: str) -> int:
        """The id that starts a turn of `role` ('system', 'user' or 'assistant')."""
        return self.special_ids[f"<|{role}|>"]

    @property
    def end_id(self) -> int:
        """The id that ends every turn."""
        return self.special_ids[CHAT_TOKENS[-1]]

    def encode(self, text: str) -> list[int]:
        return self.base.encode(text)

    def decode(self, ids: list[int]) -> str:
        return token_bytes(self, ids).decode("utf-8", errors="replace")

    def to_meta(self) -> dict[str, Any]:
        return {"kind": "chat", "base": self.base.to_meta(), "special_tokens": list(self.specials),
                "vocab_size": self.vocab_size}


def check_bpe_ids(ranks: dict[bytes, int], specials: dict[str, int]) -> None:
    """Refuse a vocabulary that tiktoken can't hold (it would abort the process with a Rust panic, not
    raise): the tokens, special ones included, must be numbered 0, 1, ... without gaps or repeats, and
    every single byte must be a token (a byte-level BPE spells any text with them)."""
    ids = sorted([*ranks.values(), *specials.values()])
    if ids != list(range(len(ids))):
        raise TinyGPTError("BPE tokenizer.json must number its tokens 0, 1, 2, ... without gaps or repeats")
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise TinyGPTError(f"BPE tokenizer.json lacks {len(missing)} of the 256 single bytes (e.g. byte {missing[0]})")


def byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level alphabet: the character that stands for each byte in a byte-level BPE's
    vocabulary (printable Latin-1 characters stand for themselves, the other bytes for the characters
    from U+0100 on, in byte order). Maps character -> byte."""
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    others = [b for b in range(256) if b not in printable]
    return {**{chr(b): b for b in printable}, **{chr(256 + i): b for i, b in enumerate(others)}}


class BPETokenizer(TiktokenTokenizer):
    """A byte-level BPE learned from the user's own corpus: GPT-2's pre-tokenisation (the text is cut
    into words, numbers, punctuation and whitespace runs, and merges never cross those cuts), any
    UTF-8 text round-trips exactly, and one end-of-text special token.

    Hugging Face `tokenizers` learns the merges (`train`) and its tokenizer.json is what is stored.
    Encoding runs the same merges in tiktoken, which is faster: each merge makes a new token numbered
    in merge order, so tiktoken's ranks (token ids) are the trainer's merge priorities and both give
    the same ids (the tests check this against `tokenizers` itself)."""

    def __init__(self, hf_json: str):
        import tiktoken
        from tiktoken_ext.openai_public import r50k_pat_str  # GPT-2's pre-tokenisation regex

        try:
            spec = json.loads(hf_json)
        except ValueError as e:
            raise TinyGPTError(f"a BPE tokenizer.json is not valid JSON ({e})") from None
        schema.check(spec, schema.BPETokenizerJSON, "BPE tokenizer.json")
        vocab, added = spec["model"]["vocab"], spec["added_tokens"]
        specials = {t["content"]: t["id"] for t in added}
        if EOT not in specials:
            raise TinyGPTError(f"not a byte-level BPE tokenizer.json with an {EOT} token")
        alphabet = byte_level_alphabet()
        try:
            ranks = {bytes(alphabet[ch] for ch in token): i for token, i in vocab.items() if token not in specials}
        except KeyError as e:
            raise TinyGPTError(f"BPE tokenizer.json has a token with a character outside the byte-level alphabet: {e}") from None
        check_bpe_ids(ranks, specials)
        self.hf_json = hf_json
        self.name = "bpe"
        try:
            self.enc = tiktoken.Encoding("tinygpt-bpe", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                                         special_tokens=specials, explicit_n_vocab=len(ranks) + len(specials))
        except (ValueError, AssertionError) as e:
            raise TinyGPTError(f"BPE tokenizer.json has an inconsistent vocabulary ({e})") from None
        self.vocab_size = self.enc.n_vocab
        self.eot_token = specials[EOT]

    @classmethod
    def train(cls, text: str, vocab_size: int, quiet: bool = True) -> "BPETokenizer":
        """Learn vocab_size - 257 merges from `text` (256 single bytes and the end-of-text token come first)."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        smallest = 256 + 1
        if vocab_size < smallest:
            raise TinyGPTError(f"--vocab_size must be at least {smallest} (256 bytes + {EOT}), got {vocab_size}")
        n_bytes = len(text.encode("utf-8"))
        if vocab_size > smallest + n_bytes:  # each merge joins a pair of the text's tokens: one per byte at most
            raise TinyGPTError(
                f"--vocab_size={vocab_size:,} is more than the training text can give: its {n_bytes:,} bytes "
                f"allow at most {smallest + n_bytes:,} tokens; use a smaller --vocab_size or more text"
            )
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=not quiet,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(text_pieces(text, BPE_TRAIN_PIECE_CHARS), trainer=trainer)
        if tok.get_vocab_size() < vocab_size:
            raise TinyGPTError(
                f"the training text ({len(text):,} characters) has too few distinct adjacent pairs for "
                f"{vocab_size - smallest:,} merges (it gave {tok.get_vocab_size() - smallest:,}); use a smaller "
                f"--vocab_size (at most {tok.get_vocab_size()}) or more text"
            )
        return cls(tok.to_str())

    def to_meta(self) -> dict[str, Any]:
        return {"kind": "bpe", "vocab_size": self.vocab_size, "json": self.hf_json}

    def to_file_meta(self, folder: str | Path) -> dict[str, Any]:
        """Write tokenizer.json into `folder`; returns the meta entry that names it (for meta.json)."""
        from model.files import atomic_write_bytes

        data = self.hf_json.encode("utf-8")
        atomic_write_bytes(Path(folder) / BPE_FILE, data)
        return {"kind": "bpe", "vocab_size": self.vocab_size, "file": BPE_FILE,
                "sha256": hashlib.sha256(data).hexdigest()}


def dataset_meta(tok: CharTokenizer | TiktokenTokenizer | ChatTokenizer, folder: str | Path) -> dict[str, Any]:
    """The tokenizer entry a dataset's meta.json holds: to_meta(), except that a learned BPE (a chat
    tokenizer's base too) writes its tokenizer.json into `folder` and names it (resolve_meta reads it)."""
    if isinstance(tok, ChatTokenizer):
        return {**tok.to_meta(), "base": dataset_meta(tok.base, folder)}
    if isinstance(tok, BPETokenizer):
        return tok.to_file_meta(folder)
    return tok.to_meta()


def resolve_meta(meta: dict[str, Any], folder: str | Path) -> dict[str, Any]:
    """A tokenizer entry made self-contained: one that names a file in `folder` (as a dataset's
    meta.json does for a learned BPE) gets the file's text inline, as checkpoints store it."""
    if isinstance(meta, dict) and meta.get("kind") == "chat" and isinstance(meta.get("base"), dict):
        return {**meta, "base": resolve_meta(meta["base"], folder)}
    if not isinstance(meta, dict) or "file" not in meta:
        return meta
    path = Path(folder) / str(meta["file"])
    if path.name != str(meta["file"]) or not path.is_file():
        raise TinyGPTError(f"tokenizer file {path} is missing; prepare the dataset again")
    data = path.read_bytes()
    if meta.get("sha256") not in (None, hashlib.sha256(data).hexdigest()):
        raise TinyGPTError(f"{path} does not match meta.json (another preparation?); prepare the dataset again")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise TinyGPTError(f"{path} is not UTF-8 JSON; prepare the dataset again") from None
    return {"kind": meta.get("kind"), "vocab_size": meta.get("vocab_size"), "json": text}


def from_meta(meta: dict[str, Any], where: str = "tokenizer entry") -> CharTokenizer | TiktokenTokenizer:
    """The tokenizer a stored entry describes (`where` names the file it came from, for errors)."""
    schema.check(meta, schema.TokenizerEntry, where)
    kind = meta.get("kind")
    if kind == "chat":
        tok = ChatTokenizer(from_meta(meta["base"], where), meta["special_tokens"])
        if meta.get("vocab_size") not in (None, tok.vocab_size):
            raise TinyGPTError(f"{where}: chat tokenizer has {tok.vocab_size} tokens, its entry says {meta['vocab_size']}")
        return tok
    if kind == "char":
        return CharTokenizer(meta["chars"])
    if kind == "tiktoken":
        return TiktokenTokenizer(meta.get("name", "gpt2"))
    if kind == "bpe":
        if not isinstance(meta.get("json"), str):
            raise TinyGPTError("a 'bpe' tokenizer entry must hold its tokenizer.json text under 'json'")
        tok = BPETokenizer(meta["json"])
        if meta.get("vocab_size") not in (None, tok.vocab_size):
            raise TinyGPTError(f"BPE tokenizer has {tok.vocab_size} tokens, its entry says {meta['vocab_size']}")
        return tok
    raise TinyGPTError(f"unknown tokenizer kind {kind!r} (expected 'char', 'tiktoken', 'bpe' or 'chat')")


def make(kind: str, text: str | None = None, vocab_size: int | None = None, quiet: bool = True) -> CharTokenizer | TiktokenTokenizer:
    """'char' (its vocabulary: the characters of `text`), 'bpe' (learns vocab_size tokens from `text`)
    or a tiktoken encoding name like 'gpt2'."""
    if kind == "bpe":
        if vocab_size is None:
            raise TinyGPTError("--tokenizer=bpe needs --vocab_size=N (e.g. 4096): the number of tokens to learn")
        return BPETokenizer.train(text or "", vocab_size, quiet)
    if vocab_size is not None:
        raise TinyGPTError(f"--vocab_size applies to --tokenizer=bpe only; the {kind} vocabulary is fixed")
    if kind == "char":
        if not text:
            raise TinyGPTError("a character-level tokenizer needs a non-empty corpus")
        return CharTokenizer.from_text(text)
    return TiktokenTokenizer(kind)


def text_pieces(text: str, piece_chars: int):
    """`text` in consecutive pieces of about piece_chars, each cut just before a newline that has a
    letter or digit before it and a non-space character after it, as at the end of most lines of prose.
    GPT-2's pre-tokenisation (tiktoken's gpt2, r50k, and the BPE learned here) cuts text there anyway (no
    pre-token joins a letter to a newline, or a lone newline to the word after it), so encoding or
    counting words piece by piece gives exactly what the whole text would."""
    start = 0
    while start < len(text):
        end = _piece_end(text, start + piece_chars)
        yield text[start:end]
        start = end


def _piece_end(text: str, near: int) -> int:
    """The first newline at or after `near` that sits between a letter or digit and a non-space."""
    while near < len(text):
        newline = text.find("\n", near)
        if newline == -1 or newline + 1 >= len(text):
            break
        if newline > 0 and text[newline - 1].isalnum() and not text[newline + 1].isspace():
            return newline
        near = newline + 1
    return len(text)


def token_bytes(tok: CharTokenizer | TiktokenTokenizer | ChatTokenizer, ids: list[int]) -> bytes:
    """The UTF-8 bytes `ids` spell; a chat token spells its name (e.g. b"<|user|>")."""
    if isinstance(tok, ChatTokenizer):
        out, run, names = [], [], {i: name.encode() for name, i in tok.special_ids.items()}
        for i in ids:
            if i in names:
                out += [token_bytes(tok.base, run), names[i]]
                run = []
            else:
                run.append(i)
        return b"".join([*out, token_bytes(tok.base, run)])
    if isinstance(tok, TiktokenTokenizer):
        return tok.enc.decode_bytes(ids)
    return tok.decode(ids).encode("utf-8")


def token_byte_lengths(tok: CharTokenizer | TiktokenTokenizer) -> np.ndarray:
    """How many UTF-8 bytes of text each token id stands for, as int64 (vocab_size,). Special tokens
    (end of text, the chat template's tokens) stand for none: they separate documents or turns rather
    than spell text."""
    if isinstance(tok, ChatTokenizer):
        return np.concatenate([token_byte_lengths(tok.base), np.zeros(len(tok.specials), dtype=np.int64)])
    if isinstance(tok, TiktokenTokenizer):
        lengths = np.array([len(tok.enc.decode_single_token_bytes(i)) for i in range(tok.vocab_size)], dtype=np.int64)
        lengths[[tok.enc.encode_single_token(s) for s in tok.enc.special_tokens_set]] = 0
        return lengths
    return np.array([len(ch.encode("utf-8")) for ch in tok.chars], dtype=np.int64)


def bits_per_byte(total_nats: float, n_bytes: int) -> float:
    """Bits per byte: a summed cross-entropy (in nats) over some tokens, divided by ln 2 times the
    number of UTF-8 bytes of text those tokens spell. Unlike loss per token it doesn't depend on the
    tokenizer, so runs with different vocabularies compare."""
    return total_nats / (math.log(2) * n_bytes) if n_bytes > 0 else float("nan")


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
