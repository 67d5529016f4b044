"""python -m model.visualize: heatmaps of attention patterns and the raw weights behind them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from model import checkpoint
from model.config import GPTConfig
from model.data.dataset import TokenDataset
from model.nn.gpt import GPT
from model.cli import visualize_main as attention_main

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "ROMEO:\nBut soft"


@pytest.fixture
def ckpt(char_data_dir, tmp_path) -> Path:
    """A checkpoint of an untrained 3-layer, 2-head model over the 'tiny' character vocabulary."""
    dataset = TokenDataset(char_data_dir / "tiny")
    torch.manual_seed(0)
    config = GPTConfig(n_layer=3, n_head=2, n_embd=16, block_size=16, vocab_size=dataset.vocab_size)
    path = tmp_path / "ckpt.pt"
    checkpoint.save_checkpoint(path, checkpoint.model_state(GPT(config), config, dataset.meta["tokenizer"]))
    return path


@pytest.mark.slow
def test_saved_weights_are_causal_normalised_and_one_per_layer_and_head(ckpt, tmp_path):
    png, npy, js = tmp_path / "att.png", tmp_path / "att.npy", tmp_path / "att.json"
    assert attention_main(["--checkpoint", str(ckpt), "--start", PROMPT, "--out", str(png), "--save", str(npy)]) == 0
    weights = np.load(npy)
    T = len(PROMPT)
    assert weights.shape == (3, 2, T, T)  # (layers, heads, queries, keys)
    above_diagonal = np.triu(np.ones((T, T), dtype=bool), k=1)
    assert np.all(weights[..., above_diagonal] == 0)  # the causal mask: no query sees a later key
    assert np.all(weights[..., ~above_diagonal] > 0)
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)  # each query's weights are a distribution
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert attention_main(["--checkpoint", str(ckpt), "--start", PROMPT, "--layer", "2", "--head", "1",
                           "--out", str(png), "--save", str(js)]) == 0
    saved = json.loads(js.read_text())
    assert saved["layers"] == [2] and saved["heads"] == [1]
    assert saved["tokens"] == ["R", "O", "M", "E", "O", ":", "\\n", "B", "u", "t", "␣", "s", "o", "f", "t"]
    np.testing.assert_allclose(np.array(saved["weights"]), weights[2:3, 1:2], atol=1e-6)


def test_weights_match_what_the_model_computes(ckpt, tmp_path):
    """The saved pattern really is the one the model uses: pattern @ values reproduces the layer."""
    model, tok, _ = checkpoint.load_model(ckpt)
    model.eval()
    npy = tmp_path / "att.npy"
    attention_main(["--checkpoint", str(ckpt), "--start", PROMPT, "--layer", "0", "--out", str(tmp_path / "a.png"),
                    "--save", str(npy)])
    idx = torch.tensor([tok.encode(PROMPT)])
    block = model.transformer.h[0]
    x = block.ln_1(model.transformer.wte(idx) + model.transformer.wpe(torch.arange(idx.shape[1])))
    _, _, v = block.attn.project_qkv(x)  # (1, nh, T, hs)
    y = torch.from_numpy(np.load(npy)[0]) @ v[0]  # (nh, T, T) @ (nh, T, hs)
    expected = torch.nn.functional.scaled_dot_product_attention(*block.attn.project_qkv(x), is_causal=True)[0]
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--layer", "3"], "--layer must be between 0 and 2"),
        (["--head", "-1"], "--head must be between 0 and 1"),
        (["--start", "x" * 17], "the prompt is 17 tokens but the model sees at most 16"),
        (["--start", "€"], "outside this character-level vocabulary"),
        (["--save", "weights.csv"], "--save must end in .npy or .json"),
    ],
)
def test_bad_input_is_one_line_on_stderr_and_writes_nothing(ckpt, tmp_path, capsys, args, message):
    png = tmp_path / "att.png"
    assert attention_main(["--checkpoint", str(ckpt), "--out", str(png), "--start", "ROMEO:", *args]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not png.exists()


@pytest.mark.slow
def test_runs_as_python_dash_m_model_attention(ckpt, tmp_path):
    png = tmp_path / "att.png"
    result = subprocess.run(
        [sys.executable, "-m", "model.visualize", f"--checkpoint={ckpt}", "--start=ROMEO:", f"--out={png}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # in particular no runpy warning about model.nn.attention being imported twice
    assert "3 layer(s) x 2 head(s), 6 tokens" in result.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
