"""python -m model.eval --chat: exact match of greedily generated final replies, counted against a plain
greedy decode of the same model; the reference replies' teacher-forced loss and bits per byte against
a direct computation; --chat=DATASET; bad input in one line."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from chat_helpers import ending_chat_run, greedy_reply
from helpers import ROOT
from model.checkpoint import load_model
from model.cli import eval_main
from model.data.chat import prompt_ids
from model.evaluation.chat import REPLY_MARGIN
from serving_helpers import make_run

CONTEXTS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be nice"}, {"role": "user", "content": "How are you"}],
    [{"role": "user", "content": "Yo there"}],
    [{"role": "user", "content": "Good day sir"}],
    [{"role": "user", "content": "A"}, {"role": "assistant", "content": "B"}, {"role": "user", "content": "What is up?"}],
    [{"role": "user", "content": "Hello"}],
]


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory):
    return ending_chat_run(tmp_path_factory.mktemp("chat") / "run", block_size=64)


@pytest.fixture(scope="module")
def replies(chat_run) -> list[str]:
    """Each context's greedy reply, decoded the plain way; every one non-empty and ended by the model."""
    model, tok, _ = load_model(chat_run / "ckpt.pt")
    out = []
    for context in CONTEXTS:
        ids, ended = greedy_reply(model.eval(), tok, prompt_ids(tok, context), 40)
        assert ended and ids, "the test model must end its replies"
        out.append(tok.decode(ids))
    return out


def write_conversations(path, references: list[str], after: bool = False):
    """The contexts with these final replies (after: one more user turn follows, which is dropped)."""
    lines = []
    for context, reference in zip(CONTEXTS, references):
        messages = [*context, {"role": "assistant", "content": reference}]
        if after:
            messages.append({"role": "user", "content": "Thanks"})
        lines.append(json.dumps({"messages": messages}))
    path.write_text("\n".join(lines) + "\n")
    return path


def evaluate(capsys, *args: str) -> dict:
    capsys.readouterr()
    assert eval_main([*args, "--json", "--quiet"]) == 0
    return json.loads(capsys.readouterr().out)["chat"]


def test_exact_match_counts_the_right_replies(chat_run, replies, tmp_path, capsys):
    # every other reference is the model's own greedy reply; the rest differ from it by one character
    references = [r if i % 2 == 0 else r + "x" for i, r in enumerate(replies)]
    path = write_conversations(tmp_path / "c.jsonl", references, after=True)
    result = evaluate(capsys, str(chat_run), f"--chat={path}", "--batch_size=4")
    assert set(result) == {"exact_match", "loss", "bpb", "tokens", "bytes", "n", "items"}
    assert result["n"] == len(CONTEXTS) and result["exact_match"] == 0.5
    assert [item["match"] for item in result["items"]] == [i % 2 == 0 for i in range(len(CONTEXTS))]
    assert [item["reply"] for item in result["items"]] == replies  # batched, cached greedy == the plain decode
    assert [item["reference"] for item in result["items"]] == references

    wrong = write_conversations(tmp_path / "wrong.jsonl", [r + "x" for r in replies])
    assert evaluate(capsys, str(chat_run), f"--chat={wrong}")["exact_match"] == 0.0


def test_one_by_one_equals_batched(chat_run, replies, tmp_path, capsys):
    path = write_conversations(tmp_path / "c.jsonl", replies)
    batched = evaluate(capsys, str(chat_run), f"--chat={path}", "--batch_size=6")
    alone = evaluate(capsys, str(chat_run), f"--chat={path}", "--batch_size=1")
    assert batched["exact_match"] == alone["exact_match"] == 1.0
    assert batched["loss"] == pytest.approx(alone["loss"], rel=1e-5)


def test_reply_loss_and_bits_per_byte(chat_run, tmp_path, capsys):
    references = ["Hello there", "Fine, thanks", "No", "Yes sir", "Up is up", "Hi!"]
    path = write_conversations(tmp_path / "c.jsonl", references)
    result = evaluate(capsys, str(chat_run), f"--chat={path}")
    model, tok, _ = load_model(chat_run / "ckpt.pt")
    total, count = 0.0, 0
    with torch.no_grad():
        for context, reference in zip(CONTEXTS, references):
            prompt, target = prompt_ids(tok, context), tok.encode(reference) + [tok.end_id]
            ids = prompt + target
            logits, _ = model.eval()(torch.tensor([ids[:-1]]))
            logprobs = torch.log_softmax(logits[0].double(), dim=-1)
            total -= sum(logprobs[len(prompt) - 1 + j, t].item() for j, t in enumerate(target))
            count += len(target)
    n_bytes = sum(len(r.encode()) for r in references)  # the end token spells no bytes
    assert result["tokens"] == count and result["bytes"] == n_bytes
    assert result["loss"] == pytest.approx(total / count, rel=1e-4)
    assert result["bpb"] == pytest.approx(total / (math.log(2) * n_bytes), rel=1e-4)
    assert result["exact_match"] == 0.0
    # a reply that can't match stops at its reference's length plus the margin
    assert all(len(item["reply"]) <= len(item["reference"]) + 1 + REPLY_MARGIN for item in result["items"])


def test_chat_dataset_name_reads_its_val_jsonl(chat_run, replies, tmp_path, capsys):
    folder = tmp_path / "data" / "mychat"
    folder.mkdir(parents=True)
    write_conversations(folder / "val.jsonl", replies)
    result = evaluate(capsys, str(chat_run), "--chat=mychat", f"--data_dir={tmp_path / 'data'}")
    assert result["n"] == len(CONTEXTS) and result["exact_match"] == 1.0


def test_sentence_output(chat_run, replies, tmp_path, capsys):
    path = write_conversations(tmp_path / "c.jsonl", replies)
    capsys.readouterr()
    assert eval_main([str(chat_run), f"--chat={path}", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith(f"{path}: exact match 1.0000 over 6 conversations")


@pytest.mark.parametrize("content, words", [
    ('{"messages": [{"role": "user", "content": "Hi"}]}\nnot json\n', ":1: the conversation has no assistant turn"),
    ('{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}\nnot json\n',
     ":2: not valid JSON"),
    ("", "holds no conversations"),
])
def test_bad_file_is_one_line(chat_run, tmp_path, capsys, content, words):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    assert eval_main([str(chat_run), f"--chat={path}"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and words in err


def test_missing_dataset_and_non_chat_model_are_one_line(chat_run, tmp_path, capsys):
    assert eval_main([str(chat_run), "--chat=nosuch", f"--data_dir={tmp_path}"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no chat dataset" in err and "nosuch" in err
    path = write_conversations(tmp_path / "c.jsonl", ["Yo"] * len(CONTEXTS))
    plain = make_run(tmp_path / "plain")
    assert eval_main([str(plain), f"--chat={path}"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no chat template" in err


@pytest.mark.slow
def test_command_line(chat_run, replies, tmp_path):
    path = write_conversations(tmp_path / "c.jsonl", replies)
    result = subprocess.run([sys.executable, "-m", "model.eval", str(chat_run), f"--chat={path}", "--json"],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["chat"]["exact_match"] == 1.0
