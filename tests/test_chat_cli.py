"""python -m model.chat: one --start reply equal to a plain greedy decode, the interactive loop's
commands and history trimming, a model without a chat template refused in one line; and
generate_text's stop_tokens, which the chat stops replies with."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from chat_helpers import ending_chat_run, greedy_reply
from helpers import ROOT, SUBPROCESS_ENV
from model.checkpoint import load_model
from model.cli import chat_main
from model.data.chat import prompt_ids, render
from model.sampling.chat import ChatSession, SamplingOptions, chat_loop
from model.sampling.generate import generate, generate_text
from serving_helpers import make_run


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory):
    return ending_chat_run(tmp_path_factory.mktemp("chat") / "run", block_size=64)


@pytest.fixture(scope="module")
def loaded(chat_run):
    model, tok, _ = load_model(chat_run / "ckpt.pt")
    return model.eval(), tok


def chat_command(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, **SUBPROCESS_ENV}
    return subprocess.run([sys.executable, "-m", "model.chat", *args], input=stdin, capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=120)


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


@pytest.mark.slow
def test_start_prints_just_the_greedy_reply(chat_run, loaded):
    model, tok = loaded
    expected, ended = greedy_reply(model, tok, prompt_ids(tok, user("Hi")), 20)
    assert ended and expected  # the reply stops at the end token, before the cap
    result = chat_command(str(chat_run), "--start=Hi", "--temperature=0", "--max_new_tokens=20")
    assert result.returncode == 0, result.stderr
    assert result.stdout == tok.decode(expected) + "\n"


@pytest.mark.slow
def test_stdin_loop_answers_until_quit(chat_run, loaded):
    model, tok = loaded
    hi = tok.decode(greedy_reply(model, tok, prompt_ids(tok, user("Hi")), 20)[0])
    result = chat_command(str(chat_run), "--temperature=0", "--max_new_tokens=20", stdin="Hi\n/reset\nHi\n/quit\nHi\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{hi}\n{hi}\n"  # after /reset the same greedy reply; nothing after /quit
    assert "(history cleared)" in result.stderr and "Traceback" not in result.stderr


def test_model_without_chat_template_is_one_line(tmp_path, capsys):
    run = make_run(tmp_path / "plain")
    assert chat_main([str(run), "--start=Hi"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "no chat template" in err


def test_mistyped_flag_gets_did_you_mean(chat_run, capsys):
    with pytest.raises(SystemExit) as exit_:
        chat_main([str(chat_run), "--temprature=0"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did you mean '--temperature'" in err


def run_loop(session: ChatSession, lines: list[str]) -> tuple[str, list[str]]:
    """Drive chat_loop with these input lines: (what it wrote, its notes)."""
    pending = iter(lines)
    written, notes = [], []
    chat_loop(session, lambda: next(pending, None), written.append, notes.append)
    return "".join(written), notes


def test_loop_keeps_history_and_obeys_reset_and_system(loaded):
    model, tok = loaded
    session = ChatSession(model, tok, SamplingOptions(max_new_tokens=8, temperature=0.0))
    out, notes = run_loop(session, ["Hi", "", "/system Be nice", "Yo"])
    first = tok.decode(greedy_reply(model, tok, prompt_ids(tok, user("Hi")), 8)[0])
    history = [{"role": "system", "content": "Be nice"}, *user("Hi"), {"role": "assistant", "content": first}]
    second = tok.decode(greedy_reply(model, tok, prompt_ids(tok, history + user("Yo")), 8)[0])
    alone = tok.decode(greedy_reply(model, tok, prompt_ids(tok, user("Yo")), 8)[0])
    assert out == f"{first}\n{second}\n" and second != alone  # the second reply saw the system prompt and the first exchange
    assert notes == ["(system prompt: Be nice)"]
    assert session.messages() == history + user("Yo") + [{"role": "assistant", "content": second}]

    _, notes = run_loop(session, ["/reset", "/nonsense", "/quit", "Hi"])
    assert session.messages() == [{"role": "system", "content": "Be nice"}]  # the system prompt stays
    assert notes[0] == "(history cleared)" and notes[1].startswith("unknown command /nonsense; commands:")
    assert len(notes) == 2 and session.replies == 2  # nothing is answered after /quit
    run_loop(session, ["/system"])
    assert session.messages() == []


def test_history_is_cut_to_the_context(loaded):
    model, tok = loaded  # block_size 64; 16 tokens kept for the reply leave the prompt 48
    session = ChatSession(model, tok, SamplingOptions(max_new_tokens=16, temperature=0.0), system="Be brief")
    _, notes = run_loop(session, ["Tell me more"] * 6)
    assert session.room == 48 and len(session.turns) == 12  # the history keeps every turn ...
    assert session.dropped > 0 and notes[-1].startswith(f"(the {session.dropped} oldest message(s)")
    prompt = session.prompt("Tell me more")  # ... but the prompt only the newest that fit
    assert len(prompt) <= 48
    system = render(tok, [{"role": "system", "content": "Be brief"}])[0]
    assert prompt[: len(system)] == system  # the system message stays first
    assert prompt[-len(prompt_ids(tok, user("Tell me more"))):] == prompt_ids(tok, user("Tell me more"))

    long = ChatSession(model, tok, SamplingOptions(max_new_tokens=16, temperature=0.0))
    assert len(long.prompt("x" * 200)) == 48  # a message longer than the room alone loses its start


def test_generate_text_ends_a_row_at_a_stop_token(loaded):
    model, tok = loaded
    prompt = prompt_ids(tok, user("Hi"))
    tokens = [int(t) for t in generate(model, [prompt], 12, temperature=0.0)]
    stop = tokens[3]
    expected = tok.decode(tokens[: tokens.index(stop)])
    pieces = generate_text(model, tok, [prompt, prompt], 12, temperature=0.0, stop_tokens=(stop,))
    texts = ["", ""]
    for row, text in pieces:
        texts[row] += text
    assert texts == [expected, expected]
    no_stop = "".join(text for _, text in generate_text(model, tok, [prompt], 12, temperature=0.0))
    assert no_stop == tok.decode(tokens) and torch.is_grad_enabled()
