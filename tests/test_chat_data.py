"""Chat datasets: the template and its loss mask, one conversation per row, the shipped example,
bad conversation files, and fine-tuning with the chat tokens (new rows, exact resume)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import CHARS, final_weights, flags, tiny_gpt, tiny_overrides, train_losses
from model.cli import prepare_main, train_main
from model.data import chat
from model.data.chat_example import chat_example
from model.data.dataset import SHIPPED_DIR, TokenDataset, prepare_chat, read_corpus
from model.data.tokenizer import CharTokenizer, ChatTokenizer
from model.errors import TinyGPTError
from model.nn.gpt import IGNORE_INDEX

CONVERSATIONS = [
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
     {"role": "assistant", "content": "Hello."}],
    [{"role": "user", "content": "Say yes"}, {"role": "assistant", "content": "yes"},
     {"role": "user", "content": "Say no"}, {"role": "assistant", "content": "no"}],
    [{"role": "user", "content": "Name a king"}, {"role": "assistant", "content": "Lear"}],
] * 4


def write_jsonl(path: Path, conversations) -> Path:
    path.write_text(chat.conversations_jsonl(conversations), encoding="utf-8")
    return path


def prepared(tmp_path: Path, conversations=CONVERSATIONS, name: str = "talk") -> TokenDataset:
    tmp_path.mkdir(parents=True, exist_ok=True)
    prepare_chat(name, tmp_path / "data", str(write_jsonl(tmp_path / f"{name}.jsonl", conversations)), quiet=True)
    return TokenDataset(tmp_path / "data" / name)


def test_the_template_spells_each_turn_between_its_role_token_and_the_end_token():
    tok = ChatTokenizer(CharTokenizer(CHARS))
    ids, counts = chat.render(tok, CONVERSATIONS[0])
    assert tok.decode(ids) == "<|system|>Be brief.<|end|><|user|>Hi there<|end|><|assistant|>Hello.<|end|>"
    assert chat.prompt_ids(tok, CONVERSATIONS[0][:2]) == chat.render(tok, CONVERSATIONS[0][:2])[0] + [tok.role_id("assistant")]
    spelled = ChatTokenizer(CharTokenizer(CHARS + "<|>"))  # a message that spells a chat token: plain text
    assert spelled.encode("<|user|>") == spelled.base.encode("<|user|>") and len(spelled.encode("<|user|>")) == 8


def test_only_the_assistants_tokens_and_its_end_token_are_targets(tmp_path):
    dataset = prepared(tmp_path)
    tok = dataset.tokenizer()
    x, y = dataset.windows("train", 64)
    for row, (inputs, targets) in enumerate(zip(x.tolist(), y.tolist())):
        messages = CONVERSATIONS[row % len(CONVERSATIONS)]
        ids, _ = chat.render(tok, messages)
        assert inputs[: len(ids) - 1] == ids[:-1]
        expected = []  # every target the mask counts, spelled: each reply and its end token
        for message in messages:
            if message["role"] == "assistant":
                expected += tok.encode(message["content"]) + [tok.end_id]
        assert [t for t in targets if t != IGNORE_INDEX] == expected
        # each counted target sits where the conversation has that token next; the rest are ignored
        counted = [i for i, t in enumerate(targets) if t != IGNORE_INDEX]
        assert all(targets[i] == ids[i + 1] for i in counted)
        for i in range(len(ids) - 1):
            nxt = ids[i + 1]
            if nxt in (tok.role_id("system"), tok.role_id("user"), tok.role_id("assistant")):
                assert targets[i] == IGNORE_INDEX


def test_batches_hold_one_conversation_per_row_and_a_change_in_one_leaves_the_others_logits_alone(tmp_path):
    changed = [*CONVERSATIONS[:1], [{"role": "user", "content": "Hello there"},  # the same characters
                                    {"role": "assistant", "content": "Say yes"}], *CONVERSATIONS[2:]]
    a, b = prepared(tmp_path / "a", CONVERSATIONS), prepared(tmp_path / "b", changed)
    assert a.tokenizer().to_meta() == b.tokenizer().to_meta()
    xa, _ = a.windows("train", 64)
    xb, _ = b.windows("train", 64)
    model = tiny_gpt(vocab_size=a.vocab_size, block_size=64).eval()
    with torch.no_grad():
        la, lb = model(xa)[0], model(xb)[0]
    assert not torch.equal(la[1], lb[1])  # the changed conversation's row changed
    for row in [0, *range(2, len(xa))]:
        assert torch.equal(la[row], lb[row])


def test_a_conversation_longer_than_the_context_is_cut_at_a_turn_boundary_or_skipped(tmp_path):
    long = [{"role": "user", "content": "a" * 10}, {"role": "assistant", "content": "b" * 10},
            {"role": "user", "content": "c" * 40}, {"role": "assistant", "content": "d" * 40}]
    hopeless = [{"role": "user", "content": "e" * 60}, {"role": "assistant", "content": "f"}]
    dataset = prepared(tmp_path, [long, hopeless, *CONVERSATIONS])
    line = dataset.fit_chat(32)
    assert "train 12 (1 cut at a turn boundary, 1 skipped)" in line
    x, y = dataset.windows("train", 32)
    assert x.shape[1] == 32 and len(x) == 11
    tok = dataset.tokenizer()
    assert tok.decode([t for t in y[0].tolist() if t != IGNORE_INDEX]) == "b" * 10 + "<|end|>"


def asked(question: str) -> tuple[str, str, str]:
    """The task and operands a question of the shipped example asks, whichever way it is phrased."""
    import re

    from model.data.chat_example import PHRASINGS

    for task, phrasings in PHRASINGS.items():
        for phrasing in phrasings:
            pattern = re.escape(phrasing).replace(r"\{a\}", "(?P<a>[a-z0-9]+)").replace(r"\{b\}", "(?P<b>[0-9]+)")
            match = re.fullmatch(pattern, question)
            if match:
                return task, match["a"], match.groupdict().get("b") or ""
    raise AssertionError(f"not a question of the example: {question!r}")


def test_the_shipped_example_is_deterministic_and_never_asks_a_validation_question_in_training():
    from model.data.chat_example import ANSWERS

    corpus = read_corpus(SHIPPED_DIR / "tinyshakespeare.txt.gz")
    train, val = chat_example(corpus)
    assert (train, val) == chat_example(corpus)
    assert len(train) + len(val) >= 3000 and len(val) == (len(train) + len(val)) // 10

    def questions(conversations):
        out = set()
        for c in conversations:
            for q, a in zip(c, c[1:]):
                if q["role"] == "user":
                    task, x, y = asked(q["content"])
                    assert a["content"] == ANSWERS[task](x, y)  # answered by the task's rule
                    out.add((task, x, y))
        return out

    train_questions, val_questions = questions(train), questions(val)
    assert not train_questions & val_questions
    assert {task for task, _, _ in val_questions} == {"add", "sub", "reverse", "sort"}
    assert any(c[0]["role"] == "system" for c in train) and any(len(c) >= 4 for c in train)


def test_every_phrasing_is_recognised_and_subtraction_keeps_its_order():
    from model.data.chat_example import ANSWERS

    assert asked("Subtract 30 from 12.") == ("sub", "12", "30") and ANSWERS["sub"]("12", "30") == "12 - 30 = -18"
    assert asked("Spell lord backwards.") == ("reverse", "lord", "") and ANSWERS["sort"]("lord", "") == "dlor"


@pytest.mark.parametrize("line, words", [
    ('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}', "not valid JSON"),
    ('{"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "yo"}]}', "unknown role 'robot'"),
    ('{"messages": [{"role": "user", "content": "hi"}]}', "no assistant turn"),
    ('{"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "yo"}]}', "empty"),
    ('{"turns": []}', '"messages" list'),
])
def test_a_bad_line_is_refused_in_one_line_naming_file_and_line_and_nothing_is_written(tmp_path, capsys, line, words):
    good = chat.conversations_jsonl(CONVERSATIONS[:2])
    path = tmp_path / "talk.jsonl"
    path.write_text(good + line + "\n" + good, encoding="utf-8")
    assert prepare_main([f"--dataset=talk", f"--input={path}", "--format=chat", f"--data_dir={tmp_path / 'data'}"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{path}:3:" in err[0] and words in err[0], err
    assert not (tmp_path / "data").exists()


def test_non_utf8_bytes_are_refused_naming_the_line(tmp_path, capsys):
    path = tmp_path / "talk.jsonl"
    path.write_bytes(chat.conversations_jsonl(CONVERSATIONS[:1]).encode() + b'{"messages": "\xff"}\n')
    assert prepare_main(["--dataset=talk", f"--input={path}", "--format=chat", f"--data_dir={tmp_path}"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{path}:2:" in err[0] and "UTF-8" in err[0]


def test_a_damaged_chat_file_is_refused(tmp_path):
    dataset = prepared(tmp_path)
    folder = dataset.folder
    (folder / f"train{chat.LOSS_SUFFIX}").write_bytes(b"\x01" * 5)
    with pytest.raises(TinyGPTError, match="prepare the dataset again"):
        TokenDataset(folder)


@pytest.mark.parametrize("tokenizer", ["char", "bpe", "gpt2"])
def test_each_tokenizer_gets_the_chat_tokens_after_its_vocabulary(tmp_path, tokenizer):
    if tokenizer == "gpt2":
        from helpers import gpt2_unavailable

        if gpt2_unavailable():
            pytest.skip(gpt2_unavailable())
    extra = ["--vocab_size=280"] if tokenizer == "bpe" else []
    path = write_jsonl(tmp_path / "talk.jsonl", CONVERSATIONS * 3)
    assert prepare_main(["--dataset=talk", f"--input={path}", "--format=chat", f"--tokenizer={tokenizer}",
                         f"--data_dir={tmp_path}", "--quiet", *extra]) == 0
    dataset = TokenDataset(tmp_path / "talk")
    tok = dataset.tokenizer()
    assert isinstance(tok, ChatTokenizer) and tok.vocab_size == tok.base.vocab_size + 4 == dataset.vocab_size
    assert tok.end_id == tok.vocab_size - 1
    val = chat.read_conversations(tmp_path / "talk" / chat.VAL_FILE)
    assert val == (CONVERSATIONS * 3)[int(len(CONVERSATIONS) * 3 * 0.9):]


def chat_run(data_dir: Path, out_dir: Path, **extra) -> dict:
    return tiny_overrides(data_dir, out_dir, dataset="talk", block_size=64, dropout=0.1, dtype="float32",
                          log_interval=1, eval_interval=5, **extra)


@pytest.mark.slow
def test_fine_tuning_a_text_model_adds_chat_rows_from_the_mean_and_resumes_exactly(tmp_path, capsys):
    from model.checkpoint import model_state, save_checkpoint
    from model.config import GPTConfig
    from model.nn.gpt import GPT

    text_chars = "".join(sorted(set(chat.conversation_text(CONVERSATIONS))))
    base = CharTokenizer(text_chars)
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=base.vocab_size))
    (tmp_path / "base").mkdir()
    save_checkpoint(tmp_path / "base" / "ckpt.pt", model_state(model, model.config, base.to_meta()))
    prepare_chat("talk", tmp_path / "data", str(write_jsonl(tmp_path / "talk.jsonl", CONVERSATIONS * 3)), quiet=True)

    zero = chat_run(tmp_path / "data", tmp_path / "zero", init_from=str(tmp_path / "base"), max_iters=0)
    assert train_main(flags(zero)) == 0
    assert "added the chat template's 4 tokens" in capsys.readouterr().out
    rows = torch.load(tmp_path / "zero" / "ckpt.pt", weights_only=True)["model"]["transformer.wte.weight"]
    wte = model.transformer.wte.weight.detach()
    assert torch.allclose(rows[base.vocab_size:], wte.mean(0).expand(4, -1)) and torch.equal(rows[:base.vocab_size], wte)

    straight = chat_run(tmp_path / "data", tmp_path / "straight", init_from=str(tmp_path / "base"), max_iters=8)
    half = chat_run(tmp_path / "data", tmp_path / "resumed", init_from=str(tmp_path / "base"), max_iters=4)
    assert train_main(flags(straight) + ["--quiet"]) == 0 and train_main(flags(half) + ["--quiet"]) == 0
    assert train_main(flags({**half, "init_from": "resume", "max_iters": "8"}) + ["--quiet"]) == 0
    assert train_losses(tmp_path / "straight") == train_losses(tmp_path / "resumed")
    a, b = final_weights(tmp_path / "straight"), final_weights(tmp_path / "resumed")
    assert all(torch.equal(a[name], b[name]) for name in a)


def test_a_model_with_another_vocabulary_is_refused_for_fine_tuning(tmp_path, capsys):
    from serving_helpers import make_run

    make_run(tmp_path / "other", chars="xyz\n", block_size=64)
    prepare_chat("talk", tmp_path / "data", str(write_jsonl(tmp_path / "talk.jsonl", CONVERSATIONS)), quiet=True)
    assert train_main(flags(chat_run(tmp_path / "data", tmp_path / "out", init_from=str(tmp_path / "other"))) + ["--quiet"]) == 1
    err = capsys.readouterr().err
    assert "uses tokenizer char (4 tokens)" in err and "before the chat tokens" in err and len(err.strip().splitlines()) == 1


def test_validation_loss_counts_reply_tokens_only(tmp_path):
    from model.training.evaluate import split_loss

    dataset = prepared(tmp_path)
    model = tiny_gpt(vocab_size=dataset.vocab_size, block_size=64)
    x, y = dataset.windows("val", 64)
    counted = y != IGNORE_INDEX
    with torch.no_grad():
        logits, _ = model(x)
    expected = torch.nn.functional.cross_entropy(logits[counted].float(), y[counted]).item()
    loss = split_loss(model, dataset, "val", 64, 4, torch.autocast("cpu", enabled=False), "cpu")
    assert loss == pytest.approx(expected, rel=1e-5)
    assert dataset.target_count("val") == int(counted.sum())
