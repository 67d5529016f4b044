import json

import pytest
import torch

from helpers import tiny_overrides
from model.checkpoint import load_checkpoint, load_model
from model.cli import train_main
from model.config import load_config
from model.training.trainer import Trainer, train


def run(data_dir, out_dir, **extra):
    model_config, train_config = load_config(None, tiny_overrides(data_dir, out_dir, **extra))
    return train(model_config, train_config, quiet=True)


@pytest.mark.slow
def test_training_writes_checkpoints_config_and_metrics(char_data_dir, tmp_path):
    out = tmp_path / "out"
    summary = run(char_data_dir, out)
    assert summary["iter_num"] == 20
    for name in ("ckpt.pt", "best.pt", "config.json", "metrics.jsonl"):
        assert (out / name).is_file(), name
    ckpt = load_checkpoint(out / "ckpt.pt")
    assert ckpt["iter_num"] == 20 and ckpt["config"]["max_iters"] == 20
    model, tok, _ = load_model(out / "ckpt.pt")
    assert model.config.vocab_size == tok.vocab_size
    assert json.loads((out / "config.json").read_text())["n_layer"] == 2
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    full = [r["full_val_loss"] for r in records if "full_val_loss" in r]
    assert len(full) == 1 and full[0] == pytest.approx(summary["full_val_loss"])
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses[-1] < losses[0]


@pytest.mark.slow
def test_resume_continues_the_iteration_count(char_data_dir, tmp_path):
    out = tmp_path / "out"
    run(char_data_dir, out)
    before = load_checkpoint(out / "ckpt.pt")
    summary = run(char_data_dir, out, init_from="resume", max_iters=30, lr_decay_iters=30)
    assert summary["iter_num"] == 30
    after = load_checkpoint(out / "ckpt.pt")
    assert after["iter_num"] == 30
    assert not torch.equal(after["model"]["transformer.wte.weight"], before["model"]["transformer.wte.weight"])
    iters = [json.loads(line).get("iter") for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(iters) == 30 and 25 in iters


@pytest.mark.slow
def test_gradient_accumulation_and_eval_only(char_data_dir, tmp_path):
    out = tmp_path / "out"
    run(char_data_dir, out, gradient_accumulation_steps=2, max_iters=4, lr_decay_iters=4)
    summary = run(char_data_dir, out, init_from="resume", eval_only=True)
    assert summary["iter_num"] == 4 and summary["full_val_loss"] > 0


@pytest.mark.parametrize("k", [2, 3])
def test_k_micro_batches_of_b_give_the_update_of_one_batch_of_k_times_b(char_data_dir, tmp_path, k):
    B, T = 4, 32

    def trainer(batch_size: int, steps: int, name: str) -> Trainer:
        values = tiny_overrides(char_data_dir, tmp_path / name, batch_size=batch_size, block_size=T,
                                gradient_accumulation_steps=steps, dropout=0.0, dtype="float32")
        return Trainer(*load_config(None, values), quiet=True)

    def serve(batches):  # the trainer's batches, in order, instead of random draws
        batches = iter(batches)
        return lambda *args, **kwargs: next(batches)

    one, accumulated = trainer(k * B, 1, "one"), trainer(B, k, "accumulated")
    before = [p.detach().clone() for p in one.model.parameters()]
    assert all(torch.equal(p, q) for p, q in zip(before, accumulated.model.parameters()))  # same seed
    x, y = one.dataset.get_batch("train", k * B, T, torch.Generator().manual_seed(0))
    one.dataset.get_batch = serve([(x, y)])
    accumulated.dataset.get_batch = serve([(x[i * B:(i + 1) * B], y[i * B:(i + 1) * B]) for i in range(k)])

    loss_one, norm_one = map(float, one.train_step(1e-3))
    loss_accumulated, norm_accumulated = map(float, accumulated.train_step(1e-3))
    assert loss_accumulated == pytest.approx(loss_one, rel=1e-5)
    assert norm_accumulated == pytest.approx(norm_one, rel=1e-5)  # the summed gradient, not k times it
    for (name, p), q, p0 in zip(one.model.named_parameters(), accumulated.model.parameters(), before):
        assert not torch.equal(p, p0), name  # the step moved every weight
        # 1e-5 is 1% of a first AdamW step at lr 1e-3: sums in another order may flip a near-zero gradient
        torch.testing.assert_close(q, p, rtol=0, atol=1e-5, msg=name)


@pytest.mark.slow
def test_cli_trains_and_reports_full_val_loss(char_data_dir, tmp_path, capsys):
    args = [f"--{k}={v}" for k, v in tiny_overrides(char_data_dir, tmp_path / "out", max_iters=5).items()]
    assert train_main(args + ["--quiet"]) == 0
    assert train_main(args + ["--overwrite=True"]) == 0  # the same run again, this time printing
    printed = capsys.readouterr().out
    assert "full-val loss" in printed


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert train_main(["--n_layer=abc"]) == 1
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and err.startswith("error: config key 'n_layer' expects int")
    assert train_main([str(tmp_path / "missing.toml")]) == 1
    assert "config file not found" in capsys.readouterr().err
