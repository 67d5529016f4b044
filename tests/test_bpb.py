"""Bits per byte: total cross-entropy over ln 2 times the UTF-8 bytes the predicted tokens spell,
computed by hand here and compared with the trainer's, the evaluation command's and `runs compare`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from model import checkpoint
from model.cli import eval_main, runs_main, train_main
from model.config import GPTConfig
from model.data.dataset import TokenDataset, prepare
from model.data.tokenizer import TiktokenTokenizer
from model.nn.gpt import GPT
from model.training.evaluate import estimate_loss, split_bpb, split_loss
from helpers import tiny_overrides


NON_ASCII = "Grüße aus Köln! 東京は晴れ。 naïve café 😀👍 e\u0301\n"


def summed_ce_by_hand(model: GPT, ids: list[int], block: int) -> tuple[float, int]:
    """Every token but the first predicted once, in consecutive windows of `block` inputs."""
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, block):
            x = torch.tensor([ids[start : start + block]])
            y = torch.tensor(ids[start + 1 : start + block + 1])
            logits, _ = model(x[:, : len(y)])
            total += F.cross_entropy(logits[0], y, reduction="sum").item()
            count += len(y)
    return total, count


def save_random_model(out: Path, vocab: int, tokenizer_meta: dict, block: int = 16) -> Path:
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=block, vocab_size=vocab)).eval()
    out.mkdir(parents=True, exist_ok=True)
    checkpoint.save_checkpoint(out / checkpoint.LATEST, checkpoint.model_state(model, model.config, tokenizer_meta))
    return out


def eval_json(capsys, *args) -> dict:
    capsys.readouterr()
    assert eval_main([*map(str, args), "--json", "--quiet"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def non_ascii_chars(tmp_path, shakespeare_text) -> Path:
    text = "".join(shakespeare_text[i : i + 300] + NON_ASCII for i in range(0, 6000, 300))
    (tmp_path / "mixed.txt").write_text(text, encoding="utf-8")
    prepare("mixed", tmp_path / "data", str(tmp_path / "mixed.txt"), tokenizer="char", quiet=True)
    return tmp_path


def test_character_level_bpb_counts_bytes_not_characters(non_ascii_chars, capsys):
    root = non_ascii_chars
    text = (root / "mixed.txt").read_text(encoding="utf-8")
    val = text[int(len(text) * 0.9):]
    dataset = TokenDataset(root / "data" / "mixed")
    tok = dataset.tokenizer()
    out = save_random_model(root / "out", dataset.vocab_size, dataset.meta["tokenizer"])
    model, _, _ = checkpoint.load_model(out)

    total, count = summed_ce_by_hand(model, tok.encode(val), 16)
    n_bytes = len(val[1:].encode("utf-8"))
    assert n_bytes > len(val) - 1  # there are multi-byte characters in the validation split
    by_hand = total / (math.log(2) * n_bytes)

    loss = split_loss(model, dataset, "val", 16, 8, torch.autocast("cpu", enabled=False), "cpu")
    assert split_bpb(loss, dataset, "val") == pytest.approx(by_hand, rel=1e-5)
    result = eval_json(capsys, out, "--dataset=mixed", f"--data_dir={root / 'data'}")
    assert result["tokens"] == count and result["bytes"] == n_bytes
    assert result["loss"] == pytest.approx(total / count, rel=1e-5)
    assert result["bpb"] == pytest.approx(by_hand, rel=1e-5)


@pytest.mark.needs_gpt2
def test_gpt2_bpe_bpb_of_a_text_file(tmp_path, shakespeare_text, capsys):
    tok = TiktokenTokenizer("gpt2")
    text = shakespeare_text[:1500] + NON_ASCII * 3
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    out = save_random_model(tmp_path / "out", tok.vocab_size, tok.to_meta(), block=32)
    model, _, _ = checkpoint.load_model(out)

    ids = [tok.eot_token] + tok.encode(text)  # the text's first token is predicted too, after end-of-text
    total, count = summed_ce_by_hand(model, ids, 32)
    by_hand = total / (math.log(2) * len(text.encode("utf-8")))
    result = eval_json(capsys, out, f"--text={tmp_path / 't.txt'}")
    assert result["tokens"] == count == len(ids) - 1 and result["bytes"] == len(text.encode("utf-8"))
    assert result["bpb"] == pytest.approx(by_hand, rel=1e-5)
    assert result["loss"] == pytest.approx(total / count, rel=1e-5)


def test_estimate_bpb_counts_the_bytes_of_the_batches_targets(non_ascii_chars):
    dataset = TokenDataset(non_ascii_chars / "data" / "mixed")
    tok = dataset.tokenizer()
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=dataset.vocab_size)).eval()
    out = estimate_loss(model, dataset, 4, 16, 3, torch.autocast("cpu", enabled=False), "cpu", seed=7)

    generator = torch.Generator().manual_seed(7)
    total, n_bytes = 0.0, 0
    for _ in range(3):
        x, y = dataset.get_batch("val", 4, 16, generator)
        with torch.no_grad():
            logits, _ = model(x)
        total += F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1), reduction="sum").item()
        n_bytes += sum(len(tok.decode(row).encode("utf-8")) for row in y.tolist())
    assert out["val_bpb"] == pytest.approx(total / (math.log(2) * n_bytes), rel=1e-5)
    assert out["val"] == pytest.approx(total / (3 * 4 * 16), rel=1e-5)


def test_training_reports_val_bpb_and_full_val_bpb(char_data_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert train_main([f"--{k}={v}" for k, v in tiny_overrides(char_data_dir, out).items()]) == 0
    console = capsys.readouterr().out
    assert "val bpb" in console and "full-val loss" in console and ", bpb " in console
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "val_loss" in r]
    assert evals and all("val_bpb" in r for r in evals)
    full = [r for r in records if "full_val_loss" in r][-1]
    # Tiny Shakespeare is ASCII: one byte per character token, so bits per byte = nats per token / ln 2
    assert full["full_val_bpb"] == pytest.approx(full["full_val_loss"] / math.log(2), rel=1e-6)

    capsys.readouterr()
    plot = tmp_path / "bpb.png"
    assert runs_main(["compare", str(out), str(out), f"--plot={plot}", "--metric=val_bpb"]) == 0
    table = capsys.readouterr().out.splitlines()
    header = table[0]
    assert "best val bpb" in header and "full val bpb" in header
    assert f"{min(r['val_bpb'] for r in evals):.4f}" in table[2] and f"{full['full_val_bpb']:.4f}" in table[2]
    assert plot.read_bytes()[:4] == b"\x89PNG"
