"""Exporting a chat model to transformers: the folder's tokenizer is AutoTokenizer's, with the chat
tokens at tinygpt's ids and the chat template, so apply_chat_template gives model.data.chat's ids and
GPT2LMHeadModel gives tinygpt's logits on them; and the folder comes back here as a chat model."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import torch

from model import huggingface as hf
from model.cli import hf_main
from model.config import GPTConfig
from model.data.chat import CHAT_TEMPLATE_JINJA, conversation_text, prompt_ids, render
from model.data.tokenizer import BPETokenizer, CharTokenizer, ChatTokenizer, TiktokenTokenizer, byte_level_alphabet
from model.errors import TinyGPTError
from model.nn.gpt import GPT

transformers = pytest.importorskip("transformers")
from transformers import AutoTokenizer, GPT2LMHeadModel  # noqa: E402

from serving_helpers import make_run  # noqa: E402

CONVERSATIONS = [
    [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi there!"}],
    [
        {"role": "system", "content": "You add numbers. Answer with the sum only."},
        {"role": "user", "content": "What is 12+30?"},
        {"role": "assistant", "content": "42"},
        {"role": "user", "content": "And  7 + 8 ?\n"},
        {"role": "assistant", "content": "15\n\n  (fifteen)  "},
    ],
    [
        {"role": "system", "content": "Réponds en français, s'il te plaît."},
        {"role": "user", "content": "  leading spaces,\ttabs\nand\r\nline breaks\n\n"},
        {"role": "assistant", "content": "Très bien — voilà: naïve café, 日本語, 😀."},
    ],
    [{"role": "user", "content": " "}, {"role": "assistant", "content": "\n"}, {"role": "user", "content": "'ll 've 're"}],
]
"""Conversations to render both ways: a system prompt, two exchanges, unicode, spaces and newlines."""

LITERAL = [{"role": "user", "content": "Say <|user|> or <|end|>, please"}, {"role": "assistant", "content": "<|end|>"}]
"""A conversation whose contents spell chat tokens, which tinygpt encodes as plain text."""


def chat_model(vocab_size: int, seed: int = 0, padding: int = 0) -> GPT:
    """A tiny random GPT with `padding` unused vocabulary rows past the tokenizer's (which export leaves out)."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=128, vocab_size=vocab_size + padding))
    return model.eval()


def check_exported_chat(folder: Path, model: GPT, tok: ChatTokenizer, conversations=CONVERSATIONS) -> None:
    """The folder's AutoTokenizer, chat template and GPT2LMHeadModel agree with tinygpt's tokenizer and model."""
    hf_tok = AutoTokenizer.from_pretrained(folder)
    for name, i in tok.special_ids.items():
        assert hf_tok.convert_tokens_to_ids(name) == i
        assert hf_tok.added_tokens_decoder[i].content == name and hf_tok.added_tokens_decoder[i].special
    assert set(tok.specials) <= set(hf_tok.all_special_tokens)
    assert len(hf_tok) == tok.vocab_size
    assert hf_tok.eos_token == "<|end|>" and hf_tok.eos_token_id == tok.end_id
    assert json.loads((folder / hf.HF_TOKENIZER_CONFIG).read_text())["chat_template"] == CHAT_TEMPLATE_JINJA

    theirs = GPT2LMHeadModel.from_pretrained(folder).eval()
    assert theirs.config.vocab_size == tok.vocab_size and theirs.config.eos_token_id == tok.end_id
    for messages in conversations:
        ids = render(tok, messages)[0]
        assert hf_tok.apply_chat_template(messages, tokenize=True, return_dict=False) == ids, messages
        assert hf_tok.apply_chat_template(messages, tokenize=True, return_dict=False,
                                          add_generation_prompt=True) == prompt_ids(tok, messages), messages
        assert hf_tok.apply_chat_template(messages, tokenize=False) == tok.decode(ids)
        assert hf_tok.decode(ids) == tok.decode(ids)
        idx = torch.tensor([ids])
        with torch.no_grad():
            ours = model(idx)[0][..., : tok.vocab_size]
            torch.testing.assert_close(theirs(idx).logits, ours, rtol=0, atol=1e-4)

    back, back_tok = hf.load_pretrained(folder)
    assert isinstance(back_tok, ChatTokenizer) and back_tok.to_meta() == tok.to_meta()
    assert back.config.vocab_size == tok.vocab_size


def has_sanitize() -> bool:
    """Whether this transformers' apply_chat_template can encode control tokens in messages as text."""
    return "sanitize_control_tokens" in inspect.signature(transformers.PreTrainedTokenizerFast.apply_chat_template).parameters


# -- a character-level chat model ------------------------------------------------------------------
@pytest.fixture
def char_chat(tmp_path):
    """A char chat run (its vocabulary: the conversations' characters), exported with `python -m model.hf`."""
    chars = "".join(sorted(set(conversation_text(CONVERSATIONS + [LITERAL]))))
    run = make_run(tmp_path / "run", chars=chars, block_size=128, chat=True)
    assert hf_main([str(run), str(tmp_path / "hf")]) == 0
    from model.checkpoint import load_model

    model, tok, _ = load_model(run / "ckpt.pt")
    return tmp_path / "hf", model.eval(), tok


def test_char_chat_export_matches_template_ids_and_logits(char_chat):
    folder, model, tok = char_chat
    assert isinstance(tok.base, CharTokenizer)
    check_exported_chat(folder, model, tok)


def test_char_chat_export_reads_spelled_chat_tokens_as_transformers_does(char_chat):
    """By default transformers matches a chat token spelled in a message (tinygpt keeps it as text);
    with sanitize_control_tokens=True it encodes the spelling as text, as tinygpt does."""
    folder, _, tok = char_chat
    hf_tok = AutoTokenizer.from_pretrained(folder)
    ids = render(tok, LITERAL)[0]
    default = hf_tok.apply_chat_template(LITERAL, tokenize=True, return_dict=False)
    assert default != ids and default.count(tok.special_ids["<|user|>"]) == 2
    if has_sanitize():
        assert hf_tok.apply_chat_template(LITERAL, tokenize=True, return_dict=False, sanitize_control_tokens=True) == ids


def test_char_chat_export_folder_is_a_model_for_the_other_commands(char_chat):
    from model.sources import load_any_model

    folder, model, tok = char_chat
    back, back_tok = load_any_model(str(folder))
    assert isinstance(back_tok, ChatTokenizer) and back_tok.to_meta() == tok.to_meta()
    idx = torch.tensor([prompt_ids(tok, CONVERSATIONS[1])])
    with torch.no_grad():
        torch.testing.assert_close(back.eval()(idx)[0], model(idx)[0], rtol=0, atol=0)


def test_char_tokenizer_keeps_text_as_it_is():
    """The char vocabulary's Hugging Face tokenizer: every character on its own, nothing normalised."""
    chars = "\n\t\r !<>|abcé😀日"
    hf_tok = hf.hf_tokenizer(ChatTokenizer(CharTokenizer(chars)))
    text = "a b\n\tc\r\n é😀日  <|"
    assert hf_tok.encode(text).ids == CharTokenizer(chars).encode(text)
    assert hf_tok.decode(hf_tok.encode(text).ids) == text


# -- a GPT-2-token chat model -----------------------------------------------------------------------
@pytest.mark.needs_gpt2
def test_gpt2_chat_export_matches_template_ids_and_logits(tmp_path):
    tok = ChatTokenizer(TiktokenTokenizer("gpt2"))
    model = chat_model(tok.vocab_size, seed=1, padding=43)  # 50304 rows, as a padded GPT-2 vocabulary
    folder = hf.save_pretrained(model, tmp_path / "hf", tok)
    check_exported_chat(folder, model, tok)


@pytest.mark.needs_gpt2
def test_gpt2_tokenizer_is_gpt2s_vocabulary_and_ids():
    """Every GPT-2 id spells tiktoken's bytes, and plain text encodes to tiktoken's ids."""
    from helpers import shakespeare_path
    from model.data.dataset import read_corpus

    base = TiktokenTokenizer("gpt2")
    hf_tok = hf.hf_tokenizer(ChatTokenizer(base))
    decoder = byte_level_alphabet()  # character -> byte
    for i in range(base.vocab_size - 1):
        assert bytes(decoder[ch] for ch in hf_tok.id_to_token(i)) == base.enc.decode_single_token_bytes(i), i
    assert hf_tok.id_to_token(base.eot_token) == "<|endoftext|>"
    texts = [m["content"] for messages in CONVERSATIONS for m in messages]
    texts += [read_corpus(shakespeare_path())[:20_000], "trailing   ", "a\n\n  b", "x  \n\n\ty", "\u00a0\u2003 z"]
    for text in texts:
        assert hf_tok.encode(text).ids == base.encode(text), text


@pytest.mark.needs_gpt2
def test_chat_export_refuses_a_tiktoken_encoding_it_cannot_write(tmp_path):
    tok = ChatTokenizer(TiktokenTokenizer("gpt2"))
    tok.base.name = "cl100k_base"  # as if the chat model's base were another tiktoken encoding
    with pytest.raises(TinyGPTError, match="cl100k_base"):
        hf.save_pretrained(chat_model(tok.vocab_size), tmp_path / "hf", tok)
    assert not (tmp_path / "hf").exists()  # refused before writing anything


# -- a learned-BPE chat model -----------------------------------------------------------------------
def test_bpe_chat_export_matches_template_ids_and_logits(tmp_path):
    text = conversation_text(CONVERSATIONS) * 20
    tok = ChatTokenizer(BPETokenizer.train(text, 300))
    model = chat_model(tok.vocab_size, seed=2)
    folder = hf.save_pretrained(model, tmp_path / "hf", tok)
    check_exported_chat(folder, model, tok)
    assert AutoTokenizer.from_pretrained(folder).bos_token == "<|endoftext|>"
