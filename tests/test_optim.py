"""Muon (with AdamW for the non-matrix parameters): the orthogonalisation, the parameter split, the
learning-rate scaling, a short training run, and checkpoints that save, load and resume."""

from __future__ import annotations

import io
import json

import pytest
import torch

from model.config import TrainConfig, load_config
from model.errors import ConfigError
from model.training.optim import CombinedOptimizer, Muon, make_optimizer, orthogonalize
from model.training.trainer import Trainer
from helpers import tiny_gpt, tiny_overrides


@pytest.mark.parametrize("shape", [(16, 16), (48, 16), (16, 64), (3, 32, 8)])
def test_orthogonalize_flattens_singular_values(shape):
    torch.manual_seed(0)
    g = torch.randn(shape) * torch.logspace(-1, 0.5, shape[-1])  # columns of different scales
    before = torch.linalg.svdvals(g)
    after = torch.linalg.svdvals(orthogonalize(g))
    # five quintic steps pull the bulk of the singular values into a band around 1 (not exactly 1;
    # the very smallest of a random square matrix stay behind)
    spread = lambda s: (s.amax(-1) / s.median(-1).values).max()
    assert spread(before) > 2 and spread(after) < 1.6
    assert after.max() < 1.3 and after.median() > 0.6
    assert orthogonalize(g).shape == g.shape and orthogonalize(g).dtype == g.dtype


def test_muon_rejects_vectors():
    with pytest.raises(ValueError, match="2-D"):
        Muon([torch.nn.Parameter(torch.zeros(4))])


def test_muon_minimises_a_matrix_problem():
    torch.manual_seed(0)
    target = torch.randn(8, 8)
    w = torch.nn.Parameter(torch.zeros(8, 8))
    opt = Muon([w], lr=0.05, momentum=0.9)
    first = None
    for _ in range(100):
        loss = ((w - target) ** 2).mean()
        first = first if first is not None else loss.item()
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert loss.item() < 0.05 * first


def test_muon_split_covers_every_parameter_once():
    model = tiny_gpt(tie_weights=False)
    opt = make_optimizer(model, TrainConfig(optimizer="muon", learning_rate=1e-3, muon_lr=0.02), "cpu")
    assert isinstance(opt, CombinedOptimizer)
    muon, adamw = opt.optimizers
    muon_ids = {id(p) for g in muon.param_groups for p in g["params"]}
    adamw_ids = {id(p) for g in adamw.param_groups for p in g["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    assert muon_ids.isdisjoint(adamw_ids) and muon_ids | adamw_ids == set(names)
    assert {names[i] for i in muon_ids} == {n for n, p in model.named_parameters() if p.dim() == 2 and ".h." in n}
    assert "lm_head.weight" in {names[i] for i in adamw_ids}
    assert muon.param_groups[0]["lr_scale"] == pytest.approx(20.0)


def test_bad_optimizer_is_a_config_error():
    with pytest.raises(ConfigError, match="optimizer"):
        load_config(None, ["--optimizer=sgd"])
    with pytest.raises(ConfigError, match="muon_momentum"):
        load_config(None, ["--muon_momentum=1.5"])


def run(data_dir, out_dir, **extra):
    values = dict(optimizer="muon", learning_rate=3e-3, muon_lr=0.03, max_iters=30, lr_decay_iters=30,
                  eval_interval=10)
    values.update(extra)
    model_config, train_config = load_config(None, tiny_overrides(data_dir, out_dir, **values))
    trainer = Trainer(model_config, train_config, quiet=True)
    trainer.run()
    return trainer


@pytest.mark.slow
def test_muon_training_run(char_data_dir, tmp_path):
    trainer = run(char_data_dir, tmp_path / "out", full_eval_interval=10)
    records = [json.loads(line) for line in open(tmp_path / "out" / "metrics.jsonl")]
    evals = [r["val_loss"] for r in records if "val_loss" in r]
    assert evals[-1] < evals[0] - 0.5
    full = [r for r in records if "full_val_loss" in r]
    assert [r["iter"] for r in full] == [10, 20, 30]  # every full_eval_interval, and at the end
    assert all(a["train_time"] <= b["train_time"] for a, b in zip(full, full[1:]))
    # the schedule gives Muon its own peak learning rate, in the same warmup/decay shape
    muon_group, adam_group = trainer.optimizer.param_groups[0], trainer.optimizer.param_groups[1]
    assert muon_group["lr"] / adam_group["lr"] == pytest.approx(0.03 / 3e-3)


@pytest.mark.slow
def test_muon_checkpoint_resume_matches_one_run(char_data_dir, tmp_path):
    straight = run(char_data_dir, tmp_path / "a", max_iters=20, lr_decay_iters=20)
    run(char_data_dir, tmp_path / "b", max_iters=10, lr_decay_iters=20)
    resumed = run(char_data_dir, tmp_path / "b", max_iters=20, lr_decay_iters=20, init_from="resume")
    state = resumed.optimizer.state_dict()
    assert len(state["optimizers"]) == 2 and state["optimizers"][0]["state"]  # momentum buffers came back
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), name
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    torch.load(buffer, weights_only=True)  # optimizer state is plain tensors and numbers


@pytest.mark.slow
@pytest.mark.parametrize("first, second", [("muon", "adamw"), ("adamw", "muon")])
def test_resume_with_another_optimizer_is_one_line(first, second, char_data_dir, tmp_path, capsys):
    from model.cli import train_main

    run(char_data_dir, tmp_path / "out", optimizer=first, max_iters=10)
    values = tiny_overrides(char_data_dir, tmp_path / "out", optimizer=second, max_iters=20, init_from="resume")
    assert train_main([f"--{k}={v}" for k, v in values.items()] + ["--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert "optimizer" in err and len(err.splitlines()) == 1
