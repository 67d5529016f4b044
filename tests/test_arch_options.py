"""Architecture options (rotary positions, RMSNorm, ReLU², QK-norm, untied head, no bias): shapes,
causality, a short training run, and checkpoints that round-trip with the options on."""

from __future__ import annotations

import json

import pytest
import torch

from model.nn.attention import MultiHeadAttention
from model.checkpoint import load_model
from model.cli import train_main
from model.config import GPTConfig, load_config
from model.errors import ConfigError
from model.nn.gpt import GPT
from model.fused import apply_kernels
from model.nn.layers import apply_rotary, rotary_frequencies
from model.training.trainer import Trainer
from helpers import tiny_gpt, tiny_overrides

OPTIONS = {
    "rope": dict(pos_embedding="rope"),
    "rmsnorm": dict(norm="rmsnorm"),
    "relu2": dict(activation="relu2"),
    "qk_norm": dict(qk_norm=True),
    "modern": dict(pos_embedding="rope", norm="rmsnorm", activation="relu2", qk_norm=True, bias=False,
                   tie_weights=False),
}




@pytest.mark.parametrize("name", OPTIONS)
def test_shapes_and_loss(name):
    model = tiny_gpt(**OPTIONS[name])
    idx = torch.randint(0, 50, (3, 16))
    logits, loss = model(idx, idx)
    assert logits.shape == (3, 16, 50)
    assert torch.isfinite(loss)
    patterns = model.attention_patterns(idx)
    assert len(patterns) == 2 and patterns[0].shape == (3, 2, 16, 16)
    assert torch.allclose(patterns[0].sum(-1), torch.ones(3, 2, 16), atol=1e-5)


@pytest.mark.parametrize("name", OPTIONS)
def test_causal(name):
    """Changing the token at position t changes no logit before t, and does change the logits at t."""
    model = tiny_gpt(**OPTIONS[name])
    idx = torch.randint(0, 50, (1, 16))
    changed = idx.clone()
    changed[0, 10] = (idx[0, 10] + 1) % 50
    a, _ = model(idx)
    b, _ = model(changed)
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-6)
    assert not torch.allclose(a[:, 10], b[:, 10], atol=1e-4)


def test_options_change_the_network():
    classic = dict(tiny_gpt().named_parameters())
    rope = dict(tiny_gpt(pos_embedding="rope").named_parameters())
    assert "transformer.wpe.weight" in classic and "transformer.wpe.weight" not in rope
    rms = dict(tiny_gpt(norm="rmsnorm").named_parameters())
    assert "transformer.h.0.ln_1.bias" in classic and "transformer.h.0.ln_1.bias" not in rms
    qk = dict(tiny_gpt(qk_norm=True).named_parameters())
    assert "transformer.h.0.attn.q_norm.weight" in qk
    idx = torch.randint(0, 50, (2, 16))
    gelu, relu2 = tiny_gpt()(idx)[0], tiny_gpt(activation="relu2")(idx)[0]
    assert not torch.allclose(gelu, relu2)


def test_rotary_scores_depend_only_on_distance():
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    freqs = rotary_frequencies(8)

    def score(i: int, j: int) -> float:
        qi = apply_rotary(q, torch.tensor([i]), freqs)
        kj = apply_rotary(k, torch.tensor([j]), freqs)
        return float((qi * kj).sum())

    assert score(3, 1) == pytest.approx(score(10, 8), abs=1e-5)
    assert score(3, 1) != pytest.approx(score(3, 2), abs=1e-3)
    rotated = apply_rotary(q, torch.tensor([7]), freqs)
    assert rotated.norm().item() == pytest.approx(q.norm().item(), rel=1e-5)  # a rotation keeps lengths


def test_rotary_uses_explicit_positions():
    """Shifting all positions by the same offset leaves self-attention unchanged (only distances count),
    while positions that are not evenly spaced change it: the pos argument really reaches the rotation."""
    torch.manual_seed(0)
    attn = MultiHeadAttention(32, 2, rope=True).eval()
    x = torch.randn(2, 6, 32)
    base = attn(x)
    assert torch.allclose(base, attn(x, pos=torch.arange(6) + 100), atol=1e-5)
    assert not torch.allclose(base, attn(x, pos=torch.arange(6) * 3), atol=1e-4)


def test_bad_option_is_a_config_error(capsys):
    with pytest.raises(ConfigError, match="pos_embedding"):
        load_config(None, ["--pos_embedding=alibi"])
    assert train_main(["--norm=batchnorm"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "norm" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("name", OPTIONS)
def test_training_run_and_checkpoint(name, char_data_dir, tmp_path):
    options = dict(OPTIONS[name], max_iters=30, lr_decay_iters=30, eval_interval=30, learning_rate=3e-3)
    model_config, train_config = load_config(None, tiny_overrides(char_data_dir, tmp_path / "out", **options))
    trainer = Trainer(model_config, train_config, quiet=True)
    trainer.run()
    evals = [r for r in map(json.loads, open(tmp_path / "out" / "metrics.jsonl")) if "val_loss" in r]
    assert evals[0]["iter"] == 0 and evals[-1]["iter"] == 30
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.5

    model, _, ckpt = load_model(tmp_path / "out" / "ckpt.pt")
    for key, value in OPTIONS[name].items():
        assert getattr(model.config, key) == value
    idx = torch.randint(0, model.config.vocab_size, (2, 16))
    trainer.model.eval()
    apply_kernels(model)  # as the trainer does: the same ops, so the same bits
    assert torch.equal(model.eval()(idx)[0], trainer.model(idx)[0])


def test_shipped_cpu_config_builds_the_fast_model():
    from helpers import ROOT

    model_config, train_config = load_config(ROOT / "configs" / "shakespeare_char_cpu.toml", ["--vocab_size=65"])
    assert (model_config.pos_embedding, model_config.norm, model_config.activation) == ("rope", "rmsnorm", "relu2")
    assert train_config.optimizer == "muon" and train_config.device == "cpu"
    model = GPT(model_config)
    assert model(torch.zeros(1, model_config.block_size, dtype=torch.long))[0].shape == (1, 64, 65)
    assert GPTConfig() == GPTConfig(pos_embedding="learned", norm="layernorm", activation="gelu", qk_norm=False)
