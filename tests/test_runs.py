"""python -m model.runs compare: a table of runs and one picture of their val-loss curves."""

from __future__ import annotations

import json
from pathlib import Path

from model.config import GPTConfig, TrainConfig, to_dict
from model.nn.gpt import GPT
from model.cli import runs_main as main
from model.tools.runs import compare, differing_keys


def make_run(folder: Path, val_losses: list[float], tokens_per_sec: list[float], **config) -> Path:
    """A run folder as the trainer leaves it: config.json and metrics.jsonl."""
    folder.mkdir(parents=True)
    model_keys = {k: v for k, v in config.items() if k in GPTConfig.__dataclass_fields__}
    train_keys = {k: v for k, v in config.items() if k not in model_keys}
    values = to_dict(GPTConfig(vocab_size=65, **model_keys), TrainConfig(out_dir=str(folder), **train_keys))
    (folder / "config.json").write_text(json.dumps(values))
    lines = []
    for i, (val, speed) in enumerate(zip(val_losses, tokens_per_sec)):
        lines.append({"iter": 10 * i, "train_loss": val - 0.1, "val_loss": val, "wall_time": 5.0 * i})
        lines.append({"iter": 10 * i + 5, "loss": val, "lr": 1e-3, "tokens_per_sec": speed, "wall_time": 5.0 * i + 2})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return folder


def test_compare_table_and_plot(tmp_path):
    a = make_run(tmp_path / "a", [4.0, 3.0, 3.2], [100.0, 300.0, 200.0], n_embd=64, learning_rate=1e-3)
    b = make_run(tmp_path / "b", [4.1, 2.5, 2.25], [50.0, 60.0, 70.0], n_embd=32, learning_rate=3e-3)
    plot = tmp_path / "compare.png"
    table = compare([str(a), str(b)], plot).splitlines()

    header = table[0].split()
    assert header[:2] == ["run", "best"] and header[-2:] == ["learning_rate", "n_embd"]
    row_a, row_b = table[2].split(), table[3].split()
    params_a = GPT(GPTConfig(vocab_size=65, n_embd=64)).num_params()
    # run, best val, final val, best val bpb, full val bpb (none logged), median tok/s, wall time,
    # parameters, then the keys that differ
    assert row_a == [str(a), "3.0000", "3.2000", "-", "-", "200.0", "12.0", f"{params_a:,}", "0.001", "64"]
    assert row_b[1:3] == ["2.2500", "2.2500"] and row_b[-2:] == ["0.003", "32"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_only_keys_that_differ_are_listed():
    assert differing_keys([{"a": 1, "b": 2, "out_dir": "x"}, {"a": 1, "b": 3, "out_dir": "y"}]) == ["b"]
    assert differing_keys([{"a": 1}, {"a": 1, "c": None}]) == []  # absent and None are the same here
    assert differing_keys([{"a": 1}, {"a": 1.5}, {"a": 1}]) == ["a"]


def test_cli_writes_plot_and_rejects_a_folder_that_is_not_a_run(tmp_path, capsys):
    a = make_run(tmp_path / "a", [4.0, 3.0], [100.0, 100.0])
    plot = tmp_path / "p.png"
    assert main(["compare", str(a), "--plot", str(plot)]) == 0
    assert "(the runs' configs are identical apart from out_dir)" in capsys.readouterr().out
    assert plot.is_file()

    (tmp_path / "empty").mkdir()
    assert main(["compare", str(a), str(tmp_path / "empty"), "--plot", str(tmp_path / "q.png")]) == 1
    err = capsys.readouterr().err
    assert "is not a training run folder: config.json is missing" in err and err.count("\n") == 1
    assert not (tmp_path / "q.png").exists()
