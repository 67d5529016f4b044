"""python -m model.eval --hellaswag: multiple-choice scores equal to those computed with transformers'
GPT2LMHeadModel, as lm-evaluation-harness defines acc and acc_norm; and its bad input in one line."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from model.cli import eval_main
from model.data.tokenizer import TiktokenTokenizer

transformers = pytest.importorskip("transformers")
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402


N_POSITIONS = 32
WORDS = "the a man woman dog runs into house and then quickly slowly sits on chair table garden ball eats".split()


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50257, n_positions=N_POSITIONS, n_embd=32, n_layer=2, n_head=4)).eval()
    folder = tmp_path_factory.mktemp("hf") / "gpt2-random"
    model.save_pretrained(folder)
    return folder, model


def make_items(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    sentence = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
    items = []
    for i in range(n):
        ctx_words = 40 if i == 0 else rng.randint(3, 12)  # the first item's context exceeds the model's block
        endings = [sentence(rng.randint(1, 6)) + rng.choice([".", "!", ""]) for _ in range(4)]
        items.append({"ctx": sentence(ctx_words).capitalize() + ",", "endings": endings, "label": rng.randrange(4)})
    return items


def reference_scores(model: GPT2LMHeadModel, items: list[dict]) -> tuple[list[list[float]], float, float]:
    """Per-ending log-likelihood sums, acc and acc_norm computed directly with transformers."""
    enc = TiktokenTokenizer("gpt2").enc
    sums_per_item, acc, acc_norm = [], 0, 0
    for item in items:
        sums = []
        for ending in item["endings"]:
            continuation = " " + ending
            ctx_ids, cont_ids = enc.encode_ordinary(item["ctx"]), enc.encode_ordinary(continuation)
            whole = (ctx_ids + cont_ids)[-(N_POSITIONS + 1):]
            with torch.no_grad():
                logprobs = torch.log_softmax(model(torch.tensor([whole[:-1]])).logits[0].double(), dim=-1)
            targets = torch.tensor(whole[1:])
            picked = logprobs[torch.arange(len(targets)), targets]
            sums.append(picked[-len(cont_ids):].sum().item())
        lengths = np.array([len(" " + e) for e in item["endings"]], dtype=float)
        acc += int(np.argmax(sums)) == item["label"]
        acc_norm += int(np.argmax(np.array(sums) / lengths)) == item["label"]
        sums_per_item.append(sums)
    return sums_per_item, acc / len(items), acc_norm / len(items)


@pytest.mark.needs_gpt2
def test_hellaswag_scores_equal_transformers(gpt2_folder, tmp_path, capsys):
    folder, model = gpt2_folder
    items = make_items(12)
    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    assert len(TiktokenTokenizer("gpt2").encode(items[0]["ctx"])) > N_POSITIONS  # truncation is exercised

    capsys.readouterr()
    assert eval_main([str(folder), f"--hellaswag={path}", "--json", "--quiet", "--batch_size=5"]) == 0
    result = json.loads(capsys.readouterr().out)["hellaswag"]
    sums, acc, acc_norm = reference_scores(model, items)
    assert result["n"] == 12
    assert [item["label"] for item in result["items"]] == [item["label"] for item in items]
    np.testing.assert_allclose([item["loglikelihoods"] for item in result["items"]], sums, rtol=0, atol=2e-4)
    assert result["acc"] == acc and result["acc_norm"] == acc_norm
    # a random model picks differently from the labels, so the numbers say something
    assert 0 <= acc < 1


@pytest.mark.needs_gpt2
def test_hellaswag_sentence_output_and_batching_do_not_change_scores(gpt2_folder, tmp_path, capsys):
    folder, _ = gpt2_folder
    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps(item) + "\n" for item in make_items(5, seed=1)))
    scores = []
    for batch in (1, 7):
        capsys.readouterr()
        assert eval_main([str(folder), f"--hellaswag={path}", "--json", "--quiet", f"--batch_size={batch}"]) == 0
        scores.append([i["loglikelihoods"] for i in json.loads(capsys.readouterr().out)["hellaswag"]["items"]])
    np.testing.assert_allclose(scores[0], scores[1], rtol=0, atol=1e-4)
    assert eval_main([str(folder), f"--hellaswag={path}", "--quiet"]) == 0
    assert "acc_norm" in capsys.readouterr().out


@pytest.mark.parametrize("content, message", [
    ('{"ctx": "a", "endings": ["b", "c"], "label": 0}\nnot json\n', "items.jsonl:2"),
    ('{"ctx": "a", "endings": ["b", "c"], "label": 2}\n', "label must be the index of one of its 2 endings"),
    ('{"ctx": "a", "endings": ["b"], "label": 0}\n', "endings must have at least 2 items"),
    ('{"ctx": "a", "endings": ["b", "c"], "label": 1e400}\n', "label must be an integer, got inf"),
    ('{"ctx": "a", "endings": ["b", "c"], "label": 1.7}\n', "label must be an integer, got 1.7"),
    ('{"ctx": "a", "endings": ["b", "c"], "label": "1"}\n', "label must be an integer, got '1'"),
    ('{"ctx": "a", "endings": ["b", "c"], "label": true}\n', "label must be an integer, got True"),
    ('\n', "holds no items"),
])
@pytest.mark.needs_gpt2
def test_bad_items_are_one_line(gpt2_folder, tmp_path, capsys, content, message):
    folder, _ = gpt2_folder
    path = tmp_path / "items.jsonl"
    path.write_text(content)
    assert eval_main([str(folder), f"--hellaswag={path}", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_bad_model_and_missing_task_are_one_line(tmp_path, capsys):
    assert eval_main([str(tmp_path), "--text=x.txt"]) == 1
    assert "neither a checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        eval_main([str(tmp_path)])
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.needs_gpt2
def test_runs_as_python_dash_m_model_eval(gpt2_folder, tmp_path):
    folder, _ = gpt2_folder
    (tmp_path / "t.txt").write_text("To be, or not to be, that is the question.\n")
    result = subprocess.run([sys.executable, "-m", "model.eval", str(folder), f"--text={tmp_path / 't.txt'}", "--json",
                             "--quiet"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert set(json.loads(result.stdout)) == {"loss", "bpb", "tokens", "bytes"}


def test_acc_norm_divides_by_the_continuation_length_with_its_leading_space(monkeypatch):
    from model.evaluation import multiple_choice as mc

    # sums -2 and -5: per character of " a" and " bbb" that is -1.0 against -1.25 (ending 0 wins), while
    # per character of "a" and "bbb" it would be -2.0 against -1.67 (ending 1)
    monkeypatch.setattr(mc, "loglikelihoods", lambda model, requests, *args, **kw: [-2.0, -5.0, -7.0, -6.0])
    monkeypatch.setattr(mc, "request", lambda tok, ctx, cont, block: ([0, 1], 1))
    items = [mc.Item("x", ["a", "bbb"], 0), mc.Item("y", ["cc", "dd"], 1)]
    result = mc.score_items(type("M", (), {"config": type("C", (), {"block_size": 8})})(), None, items, 4, "cpu", True)
    assert result["acc"] == 1.0  # item 0: -2 > -5; item 1: -6 > -7
    assert result["acc_norm"] == 1.0
    assert [i["loglikelihoods"] for i in result["items"]] == [[-2.0, -5.0], [-7.0, -6.0]]
