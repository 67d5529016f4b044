"""The one-line messages of the command-line programs for the mistakes a new user makes."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from model.cli import chat_main, guarded, runs_main, sample_main, train_main, visualize_main
from model.config import GPTConfig, TrainConfig, config_fields, describe_keys
from model.training.signals import GracefulStop


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def exit_status(main, argv: list[str]) -> int:
    """A program's exit status: argparse's mistakes exit (2), the others return one (1)."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


@pytest.mark.parametrize("main, argv, suggestion", [
    (sample_main, ["--tempreture=0.5"], "'--temperature'"),
    (sample_main, ["--num_smaples", "3"], "'--num_samples'"),
    (runs_main, ["compare", "a", "--metrc=val_bpb"], "'--metric'"),
    (visualize_main, ["--haed=1"], "'--head'"),
    (chat_main, ["--tempreture=0.5"], "'--temperature'"),
    (train_main, ["--max_iter=5"], "'max_iters'"),  # a config key: the same name in a file
])
def test_a_mistyped_flag_gets_a_did_you_mean(capsys, main, argv, suggestion):
    assert exit_status(main, argv) != 0
    assert f"did you mean {suggestion}?" in error_line(capsys)


@pytest.mark.parametrize("main, arg", [(train_main, "-max_iters=5"), (sample_main, "-num_samples=3")])
def test_a_flag_with_one_dash_is_explained(capsys, main, arg):
    assert exit_status(main, [arg]) != 0
    line = error_line(capsys)
    assert "has one dash" in line and f"'-{arg}'" in line and "not found" not in line


def test_train_help_has_aligned_columns(capsys):
    text = describe_keys()
    rows = [line for line in text.splitlines() if line.startswith("  --")]
    assert len(rows) == len(config_fields(GPTConfig)) + len(config_fields(TrainConfig))
    starts = {len(row) - len(row[2:].split("  ", 1)[1].lstrip()) for row in rows}
    assert len(starts) == 1, starts


def test_an_offline_hub_name_says_the_hub_cant_be_reached(capsys, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("cannot reach the hub and no local copy")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    assert sample_main(["--init_from=gpt2", "--device=cpu"]) == 1
    line = error_line(capsys)
    assert "can't be reached" in line and "save_pretrained" in line and "a local folder" in line
    assert "known names" not in line


def send(signum: int) -> None:
    os.kill(os.getpid(), signum)
    time.sleep(0.05)  # the handler runs between bytecodes of the main thread


def test_a_second_signal_names_the_checkpoint_that_remains(capsys):
    with GracefulStop() as stop:
        stop.checkpoint_written(Path("out/ckpt.pt"), 250)
        send(signal.SIGINT)  # the first: finish the step, then save
        with pytest.raises(KeyboardInterrupt) as raised:
            send(signal.SIGINT)  # the second: stop at once
    message = str(raised.value)
    assert "out/ckpt.pt remains, from iteration 250" in message and "--init_from=resume" in message

    @guarded
    def interrupted_main(argv):
        raise raised.value

    assert interrupted_main([]) == 130
    assert capsys.readouterr().err.strip() == message


def test_a_second_signal_before_any_checkpoint_says_so():
    with GracefulStop() as stop:
        send(signal.SIGTERM)
        assert stop.requested
        with pytest.raises(KeyboardInterrupt, match="second SIGTERM: .* before this run wrote a checkpoint"):
            send(signal.SIGTERM)
