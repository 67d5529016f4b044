"""The parameter report counts what the model really holds and computes, for GPT-2 and GPT-3 sizes too."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from model import GPT
from model import GPTConfig
from model.config import load_config
from model.errors import ConfigError
from model.cli import report_main as main
from model.nn.report import GROUPS, Report, flops_per_token

CONFIGS = Path(__file__).resolve().parent.parent / "configs"

SMALL_CONFIGS = [
    dict(n_layer=2, n_head=4, n_embd=32, block_size=16, vocab_size=50),
    dict(n_layer=3, n_head=2, n_embd=24, block_size=8, vocab_size=37, tie_weights=False),
    dict(n_layer=1, n_head=3, n_embd=48, block_size=12, vocab_size=65, bias=False),
    dict(n_layer=2, n_head=8, n_embd=64, block_size=32, vocab_size=101, bias=False, tie_weights=False, mlp_ratio=2),
    dict(n_layer=4, n_head=1, n_embd=16, block_size=20, vocab_size=7, mlp_ratio=3),
]

GPT3_NOMINAL = {
    "gpt3-small": 125e6, "gpt3-medium": 350e6, "gpt3-large": 760e6, "gpt3-xl": 1.3e9,
    "gpt3-2.7b": 2.7e9, "gpt3-6.7b": 6.7e9, "gpt3-13b": 13e9, "gpt3-175b": 175e9,
}


def preset(name: str) -> GPTConfig:
    return load_config(CONFIGS / f"{name}.toml")[0]


def group_of(parameter_name: str) -> str:
    """Which report total a GPT parameter belongs to, from its GPT-2 style name."""
    if parameter_name.startswith(("transformer.wte", "transformer.wpe")):
        return "embeddings"
    if ".attn." in parameter_name:
        return "attention"
    if ".mlp." in parameter_name:
        return "mlp"
    if ".ln_" in parameter_name or parameter_name.startswith("transformer.ln_f"):
        return "norms"
    assert parameter_name.startswith("lm_head"), parameter_name
    return "lm_head"


@pytest.mark.parametrize("values", SMALL_CONFIGS, ids=lambda v: "-".join(f"{k}{v[k]}" for k in v))
def test_analytic_counts_equal_the_instantiated_model(values):
    config = GPTConfig(**values)
    report = Report(config)
    model = GPT(config)
    assert report.total == sum(p.numel() for p in model.parameters())
    measured = dict.fromkeys(GROUPS, 0)
    for name, p in model.named_parameters():  # a tied head's weight is listed once, as the embedding
        measured[group_of(name)] += p.numel()
    assert measured == {g: report.group_total(g) for g in GROUPS}
    assert report.non_embedding == report.total - measured["embeddings"]


@pytest.mark.parametrize("values", SMALL_CONFIGS[:2], ids=["tied", "untied"])
def test_per_component_rows_match_the_layer_tensors(values):
    config = GPTConfig(**values)
    rows = {c.name: c for c in Report(config).block}
    layer = GPT(config).transformer.h[0]
    q, k, v = layer.attn.c_attn.weight.split(config.n_embd, dim=0)
    for name, w in (("W_Q", q), ("W_K", k), ("W_V", v), ("W_O", layer.attn.c_proj.weight)):
        assert rows[name].weights == w.numel()
        assert rows[name].per_head[0] * config.n_head == w.numel()
    assert 3 * rows["W_Q"].biases == layer.attn.c_attn.bias.numel()
    assert rows["W_Q"].per_head[1] * config.n_head == rows["W_Q"].biases
    assert rows["MLP up"].total == sum(p.numel() for p in layer.mlp.c_fc.parameters())
    assert rows["MLP down"].total == sum(p.numel() for p in layer.mlp.c_proj.parameters())
    assert rows["attention LayerNorm"].total == sum(p.numel() for p in layer.ln_1.parameters())
    assert sum(r.total for r in rows.values()) == sum(p.numel() for p in layer.parameters())


@pytest.mark.parametrize("values", [SMALL_CONFIGS[0], SMALL_CONFIGS[3]], ids=["tied-bias", "untied-nobias"])
def test_flop_counts_equal_torch_flop_counter(values):
    """The explicit attention path does every matmul as an mm/bmm that FlopCounterMode sees."""
    from torch.utils.flop_counter import FlopCounterMode

    config = GPTConfig(**values)
    report = Report(config)
    model = GPT(config)
    B, T = 3, config.block_size
    idx = torch.randint(config.vocab_size, (B, T))
    with FlopCounterMode(display=False) as forward:
        hidden = model._hidden(idx, weights_out=[])  # the explicit attention path
        logits = model.lm_head(hidden)  # (B, T, vocab)
    assert forward.get_total_flops() == report.forward_flops * B * T
    with FlopCounterMode(display=False) as training:
        hidden = model._hidden(idx, weights_out=[])  # the explicit attention path
        model.lm_head(hidden).sum().backward()
    assert training.get_total_flops() == report.training_flops * B * T
    assert logits.shape == (B, T, config.vocab_size)


def test_adamw_memory_matches_the_optimizer_state():
    config = GPTConfig(**SMALL_CONFIGS[1])
    model = GPT(config)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randint(config.vocab_size, (2, 8)), torch.randint(config.vocab_size, (2, 8)))[1].backward()
    optimizer.step()
    moments = sum(t.numel() * t.element_size() for s in optimizer.state.values() for k, t in s.items() if k != "step")
    gradients = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters())
    memory = Report(config).memory_bytes()
    assert memory["fp32"]["adamw"] == moments
    assert memory["fp32"]["gradients"] == gradients
    assert memory["bf16"]["weights"] * 2 == memory["fp32"]["weights"]


@pytest.mark.parametrize("name", ["gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"])
def test_gpt2_presets_equal_transformers_parameter_counts(name):
    transformers = pytest.importorskip("transformers")
    config = preset(name)
    hf_config = transformers.GPT2Config(
        n_layer=config.n_layer, n_head=config.n_head, n_embd=config.n_embd,
        n_positions=config.block_size, vocab_size=config.vocab_size,
    )
    with torch.device("meta"):
        hf_model = transformers.GPT2LMHeadModel(hf_config)
    assert config.vocab_size == 50257 and config.block_size == 1024
    assert Report(config).total == sum(p.numel() for p in hf_model.parameters())


@pytest.mark.parametrize("name", list(GPT3_NOMINAL))
def test_gpt3_presets_are_within_two_percent_of_the_paper(name):
    config = preset(name)
    assert (config.block_size, config.vocab_size) == (2048, 50257)
    assert abs(Report(config).total / GPT3_NOMINAL[name] - 1) < 0.02


def test_gpt3_175b_attention_is_about_58_billion(capsys):
    report = Report(preset("gpt3-175b"))
    assert abs(report.group_total("attention") / 58e9 - 1) < 0.005
    assert main([str(CONFIGS / "gpt3-175b.toml")]) == 0
    attention_line = next(line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("attention (W_Q"))
    assert "58.0B" in attention_line


@pytest.mark.parametrize("name", ["gpt3-xl", "gpt3-13b"])
def test_configs_whose_heads_do_not_divide_the_width_are_counted_but_not_built(name, capsys):
    config = preset(name)
    assert config.n_embd % config.n_head != 0
    assert main([str(CONFIGS / f"{name}.toml")]) == 0
    out = capsys.readouterr().out
    assert "can't be instantiated as written" in out
    assert main([str(CONFIGS / f"{name}.toml"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["buildable"] is False and summary["total"] == Report(config).total
    with pytest.raises(ConfigError, match="not divisible"):
        GPT(config)


def test_json_has_integer_totals(capsys):
    assert main([str(CONFIGS / "gpt2.toml"), "--json", "--tie_weights=False"]) == 0
    summary = json.loads(capsys.readouterr().out)
    for key in ("total", "embeddings", "attention", "mlp", "norms", "lm_head", "non_embedding", "flops_per_token"):
        assert type(summary[key]) is int, key
    assert summary["lm_head"] == 768 * 50257  # untied: the head is a matrix of its own
    assert summary["total"] == sum(summary[g] for g in GROUPS)
    assert summary["non_embedding"] == summary["total"] - summary["embeddings"]
    assert summary["flops_per_token"] == summary["training_flops_per_token"] == 3 * summary["forward_flops_per_token"]


def test_tied_head_is_reported_as_zero_and_says_so(capsys):
    assert main([str(CONFIGS / "gpt2.toml")]) == 0
    head = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("LM head"))
    assert "tied to the token embedding" in head
    fields = head.split()
    assert fields[fields.index("tied") - 1] == "0"  # the total column, just before the note


def test_vocab_comes_from_the_prepared_dataset(char_data_dir, capsys):
    assert main(["--json", f"--data_dir={char_data_dir}", "--dataset=tiny"]) == 0
    summary = json.loads(capsys.readouterr().out)
    meta = json.loads((char_data_dir / "tiny" / "meta.json").read_text())
    assert summary["config"]["vocab_size"] == meta["vocab_size"]


def test_a_runs_config_json_is_read_like_a_toml_config(trained, capsys):
    from model.checkpoint import load_model

    assert main([str(trained / "config.json"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    model, _, _ = load_model(trained / "ckpt.pt")
    assert summary["total"] == model.num_params()  # the run's model, with its resolved vocab_size
    assert summary["config"]["n_layer"] == 2 and summary["config"]["vocab_size"] == model.config.vocab_size
    assert main([str(trained / "config.json"), "--n_layer=3"]) == 0  # flags still override it
    assert capsys.readouterr().out.startswith(f"{trained.name}: 3 layers")
    (trained / "broken.json").write_text("[1, 2]")
    assert main([str(trained / "broken.json")]) == 1
    assert "holds no config" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data_dir=/nonexistent", "--dataset=nothing"], "vocab_size is not set"),
        (["--vocab_size=50", "--n_layr=3"], "unknown config key 'n_layr'"),
        (["no-such-config.toml", "--vocab_size=50"], "config file not found"),
    ],
)
def test_bad_input_is_one_line_on_stderr(args, message, capsys):
    assert main(args) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.mark.slow
@pytest.mark.parametrize("quiet", [False, True])
def test_training_prints_the_summary_unless_quiet(char_data_dir, tmp_path, capsys, quiet):
    from helpers import tiny_overrides

    from model.training.trainer import train

    model_config, train_config = load_config(None, tiny_overrides(char_data_dir, tmp_path / "out", max_iters=1))
    train(model_config, train_config, quiet=quiet)
    out = capsys.readouterr().out
    vocab_size = json.loads((char_data_dir / "tiny" / "meta.json").read_text())["vocab_size"]
    expected = Report(dataclasses.replace(model_config, vocab_size=vocab_size)).summary()
    assert (expected in out) is not quiet


@pytest.mark.parametrize("values", SMALL_CONFIGS)
def test_flops_per_token_counts_every_matmul_weight(values):
    """6 FLOPs per weight of every matmul (blocks and LM head, tied or not) plus attention's scores and
    weighted sums: the count that the trainer's MFU and the training benchmark both use."""
    config = GPTConfig(**values)
    model = GPT(config)
    matmul_weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    attention = 12 * config.n_layer * config.n_embd * config.block_size
    assert flops_per_token(config) == Report(config).training_flops == 6 * matmul_weights + attention
