"""What a training run leaves behind: metrics.jsonl, config.json, loss.png, and a wandb run."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from helpers import tiny_overrides
from model.training import plots
from model.config import GPTConfig, load_config
from model.errors import ConfigError
from model.nn.report import Report
from model.training.metrics import read_metrics
from model.training.trainer import Trainer

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FAST = dict(max_iters=4, eval_interval=2, eval_iters=1, log_interval=1, warmup_iters=1, lr_decay_iters=4)


def train(data_dir: Path, out_dir: Path, **extra) -> Trainer:
    model_config, config = load_config(None, tiny_overrides(data_dir, out_dir, **{**FAST, **extra}))
    trainer = Trainer(model_config, config, quiet=True)
    trainer.run()
    return trainer


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    return struct.unpack(">II", data[16:24])  # IHDR width, height


@pytest.mark.slow
def test_training_run_writes_metrics_config_and_loss_plot(char_data_dir, tmp_path, monkeypatch):
    drawn = []
    real_plot_loss = plots.plot_loss
    monkeypatch.setattr(plots, "plot_loss", lambda out_dir: drawn.append(out_dir) or real_plot_loss(out_dir))
    out = tmp_path / "out"
    trainer = train(char_data_dir, out, grad_clip=0.0)

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "val_loss" in r]
    steps = [r for r in records if "loss" in r]
    assert [r["iter"] for r in evals] == [0, 2, 4]
    assert [r["iter"] for r in steps] == [1, 2, 3, 4]
    for r in steps:
        assert {"lr", "grad_norm", "tokens_per_sec", "mfu", "wall_time"} <= set(r)
        assert r["grad_norm"] > 0  # measured even with clipping off
        assert 0 < r["mfu"] < 1
    times = [r["wall_time"] for r in records]
    assert times == sorted(times)

    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == trainer.dataset.vocab_size  # the resolved value, not None
    assert config["n_embd"] == 32 and config["max_iters"] == 4 and config["out_dir"] == str(out)

    assert len(drawn) == len(evals)  # redrawn at each evaluation
    width, height = png_size(out / "loss.png")
    assert width > 500 and height > 200


@pytest.mark.slow
def test_new_run_starts_new_metrics_and_resume_continues_them(char_data_dir, tmp_path):
    out = tmp_path / "out"
    train(char_data_dir, out)
    stale = (out / "metrics.jsonl").read_text()
    (out / "metrics.jsonl").write_text(stale + json.dumps({"iter": 99, "loss": 1.0, "wall_time": 1e6}) + "\n")
    train(char_data_dir, out, init_from="resume", max_iters=6, lr_decay_iters=6)
    records = read_metrics(out / "metrics.jsonl")
    assert all(r["iter"] != 99 for r in records)  # logged after the checkpoint: dropped
    assert [r["iter"] for r in records if "val_loss" in r] == [0, 2, 4, 6]
    times = [r["wall_time"] for r in records]
    assert times == sorted(times)  # wall time continues across the restart

    train(char_data_dir, out, overwrite=True)  # from scratch again, replacing the run: a fresh file
    assert [r["iter"] for r in read_metrics(out / "metrics.jsonl") if "val_loss" in r] == [0, 2, 4]


def test_read_metrics_skips_a_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"iter": 0, "val_loss": 4.0}\n{"iter": 1, "val_lo')
    assert read_metrics(path) == [{"iter": 0, "val_loss": 4.0}]


def test_mfu_uses_the_reports_flops_per_token():
    from model.nn.report import flops_per_token
    from model.training.mfu import MFUMeter

    cfg = GPTConfig(n_layer=2, n_embd=32, block_size=16, n_head=2, vocab_size=10)
    meter = MFUMeter(cfg, peak_flops=1e9, device="cpu", dtype=None)
    assert meter.flops_per_token == flops_per_token(cfg)
    assert meter(1e4) == pytest.approx(1e4 * flops_per_token(cfg) / 1e9)
    assert MFUMeter(cfg, peak_flops=-1, device="cpu", dtype=None)(1e4) is None


def test_measured_peak_is_a_plausible_matmul_rate():
    import torch

    from model.device import measure_peak_flops

    peak = measure_peak_flops("cpu", torch.float32, size=256, seconds=0.05)
    assert 1e7 < peak < 1e14


def test_wandb_mode_is_validated():
    with pytest.raises(ConfigError, match="wandb_mode"):
        load_config(None, ["--wandb_mode=sometimes"])


# -- wandb, offline, read back from the run's own .wandb file ------------------------------------------


def wandb_records(path: Path):
    """The protobuf records of a .wandb file: a LevelDB-style log of 32 KiB blocks whose records are
    split into FULL (1), FIRST (2), MIDDLE (3) and LAST (4) fragments behind 7-byte headers
    (crc32 4, length 2, type 1), after a 7-byte file header that starts with ':W&B'."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # too little room for a header: the block is padded
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        payload, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:
            continue
        pending = payload if kind in (1, 2) else pending + payload
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


@pytest.mark.slow
def test_wandb_offline_run_logs_config_metrics_samples_and_checkpoint(char_data_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)  # the config key alone must pick offline
    out = tmp_path / "out"
    trainer = train(char_data_dir, out, wandb_log=True, wandb_mode="offline", wandb_run_name="tiny run",
                    wandb_log_checkpoint=True, sample_tokens=12)
    import wandb

    wandb.teardown()  # run.finish() returns before wandb's service process has written the last records
    (run_file,) = out.glob("wandb/offline-run-*/run-*.wandb")
    config, history, summary, artifacts, kinds = {}, [], {}, [], []
    for record in wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            config.update({item.key: json.loads(item.value_json) for item in record.run.config.update})
            assert record.run.display_name == "tiny run"
        elif kind == "config":
            config.update({item.key: json.loads(item.value_json) for item in record.config.update})
        elif kind == "history":
            history.append({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            summary.update({i.key: json.loads(i.value_json) for i in record.summary.update if i.key})
        elif kind == "artifact":
            artifacts.append(record.artifact)
        kinds.append(kind)
    assert kinds[-1] == "exit"  # the file is complete

    def value(v):  # wandb stores config entries as {"value": ...}
        return v["value"] if isinstance(v, dict) and "value" in v else v

    assert value(config["n_embd"]) == 32 and value(config["vocab_size"]) == trainer.dataset.vocab_size
    assert value(config["out_dir"]) == str(out)

    local = read_metrics(out / "metrics.jsonl")
    for key in ("train_loss", "val_loss", "loss", "lr", "grad_norm", "tokens_per_sec", "mfu", "full_val_loss"):
        logged = {row["iter"]: row[key] for row in history if key in row}
        expected = {r["iter"]: r[key] for r in local if key in r}
        assert logged == pytest.approx(expected), (key, logged, expected)

    report = Report(trainer.model_config)
    assert summary["params"] == report.total == trainer.model.num_params()
    assert summary["params_non_embedding"] == report.non_embedding

    tables = [row for row in history if row.get("samples/_type") == "table-file"]
    assert [row["samples/nrows"] for row in tables] == [1, 2, 3]  # one more row per evaluation
    (table_file,) = run_file.parent.glob("files/" + tables[-1]["samples/path"])
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["iter", "val_loss", "text"]
    assert [row[0] for row in table["data"]] == [0, 2, 4]
    assert all(isinstance(row[2], str) and row[2] for row in table["data"])

    (artifact,) = [a for a in artifacts if a.type == "model"]
    assert artifact.name == "tiny-run-best"
    assert [entry.path for entry in artifact.manifest.contents] == ["best.pt"]


@pytest.mark.parametrize("env, key", [("disabled", ""), ("offline", "disabled")])
def test_wandb_disabled_by_env_or_key_writes_only_local_files(tmp_path, monkeypatch, env, key):
    from model.training.logger import RunLogger

    monkeypatch.setenv("WANDB_MODE", env)
    logger = RunLogger(tmp_path, {"n_layer": 2}, wandb_log=True, wandb_mode=key)
    assert not logger.wants_samples  # no text is generated for nobody
    logger.log({"iter": 1, "loss": 2.5})
    logger.finish()
    assert not (tmp_path / "wandb").exists()
    assert read_metrics(tmp_path / "metrics.jsonl")[0]["loss"] == 2.5


def test_progress_bars_are_off_when_quiet_or_not_a_terminal():
    from model.progress import progress

    assert progress(total=3, quiet=True).disable
    assert progress(total=3).disable  # pytest captures stderr: not a terminal


@pytest.mark.parametrize("kind", ["char", pytest.param("gpt2", marks=pytest.mark.needs_gpt2)])
def test_encoding_in_pieces_gives_the_same_ids(shakespeare_text, kind):
    from model.data import tokenizer as tokenizers
    from model.data.dataset import encode_with_progress

    text = shakespeare_text[:20_000] + "\n\n  indented\n\tend\n"
    tok = tokenizers.make(kind, text)
    whole = np.array(tok.encode(text), dtype=np.uint32)
    pieces = encode_with_progress(tok, text, np.dtype(np.uint32), "test", quiet=True, piece_chars=997)
    np.testing.assert_array_equal(pieces, whole)


def test_metrics_write_failure_warns_once_and_training_goes_on(tmp_path, capsys):
    from model.training.logger import RunLogger

    logger = RunLogger(tmp_path, config={})
    logger.path.mkdir()  # appending to a folder fails like a full disk would: with an OSError
    for i in range(3):
        logger.log({"iter": i, "loss": 1.0})
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "could not write" in err and "metrics.jsonl" in err
