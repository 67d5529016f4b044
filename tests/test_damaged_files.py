"""Lose nothing, and one line instead of a traceback, for files an unlucky or hostile user hands us
(issue 28): a failed re-preparation, a fresh run or an export into a used folder, a full disk, a
damaged metrics.jsonl, crafted checkpoints, meta.json files and resume state."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import flags, tiny_overrides
from model.cli import eval_main, hf_main, prepare_main, runs_main, sample_main, serve_main, train_main, visualize_main
from test_errors import fails_with_one_line, leftovers


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# -- 6: a failed re-preparation keeps the good dataset ----------------------------------------------
def test_a_failed_re_preparation_leaves_the_prepared_dataset_as_it_was(capsys, corpus, tmp_path):
    data_dir = tmp_path / "data"
    assert prepare_main(["--dataset=keep", f"--data_dir={data_dir}", f"--input={corpus}", "--quiet"]) == 0
    before = files_of(data_dir / "keep")
    (tmp_path / "tiny.txt").write_text("ab\n")  # too small for two splits: fails after encoding it
    fails_with_one_line(capsys, prepare_main, ["--dataset=keep", f"--data_dir={data_dir}",
                                               f"--input={tmp_path / 'tiny.txt'}", "--quiet"], "fewer than 2 tokens")
    assert files_of(data_dir / "keep") == before
    assert sorted(p.name for p in data_dir.iterdir()) == ["keep"]  # no staging folder left beside it


def test_a_successful_re_preparation_replaces_the_dataset_whole(corpus, tmp_path, shakespeare_text):
    from model.data.dataset import TokenDataset, prepare

    data_dir = tmp_path / "data"
    prepare("keep", data_dir, input_path=str(corpus), tokenizer="bpe", vocab_size=300, quiet=True)
    assert (data_dir / "keep" / "tokenizer.json").is_file()
    (tmp_path / "other.txt").write_text(shakespeare_text[-20_000:])
    prepare("keep", data_dir, input_path=str(tmp_path / "other.txt"), tokenizer="char", quiet=True)
    assert sorted(p.name for p in (data_dir / "keep").iterdir()) == ["meta.json", "train.bin", "val.bin"]
    assert TokenDataset(data_dir / "keep").meta["source"] == str(tmp_path / "other.txt")
    assert sorted(p.name for p in data_dir.iterdir()) == ["keep"]


@pytest.mark.needs_gpt2
@pytest.mark.parametrize("flag", ["--split=nope", "--text_column=body"])
def test_a_failed_hugging_face_re_preparation_keeps_meta_json(capsys, tmp_path, flag):
    from test_hfdata import TEXTS, write_jsonl

    files = str(write_jsonl(tmp_path / "docs.jsonl", TEXTS))
    argv = ["--dataset=hf", f"--data_dir={tmp_path / 'data'}", "--hf_dataset=json", f"--data_files={files}",
            "--shard_tokens=100", f"--cache_dir={tmp_path / 'cache'}", "--quiet"]
    assert prepare_main(argv) == 0
    before = files_of(tmp_path / "data" / "hf")
    assert "meta.json" in before
    capsys.readouterr()
    assert prepare_main(argv + [flag]) == 1
    err = capsys.readouterr().err  # after the datasets library's progress bars
    assert err.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in err
    assert files_of(tmp_path / "data" / "hf") == before


# -- 7: a fresh run into a used folder --------------------------------------------------------------
def test_a_fresh_run_in_a_folder_holding_a_run_is_refused(capsys, trained, char_data_dir):
    before = files_of(trained)
    line = fails_with_one_line(capsys, train_main, flags(tiny_overrides(char_data_dir, trained, max_iters=1)),
                               f"out_dir {trained} holds a training run", "--init_from=resume", "--overwrite=True")
    assert "ckpt.pt" in line and "metrics.jsonl" in line
    assert files_of(trained) == before  # metrics.jsonl not truncated, checkpoints untouched


def test_overwrite_deletes_the_old_run_so_none_of_it_is_sampled(capsys, trained, char_data_dir):
    old_best = (trained / "best.pt").read_bytes()
    values = tiny_overrides(char_data_dir, trained, max_iters=1, overwrite=True)  # never saves a best.pt
    assert train_main(flags(values) + ["--quiet"]) == 0, capsys.readouterr().err
    assert not (trained / "best.pt").exists() or (trained / "best.pt").read_bytes() != old_best
    records = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert max(r["iter"] for r in records) == 1  # only the new run's


def test_a_run_refused_in_a_used_folder_can_resume_instead(trained, char_data_dir):
    values = tiny_overrides(char_data_dir, trained, max_iters=3, init_from="resume")
    assert train_main(flags(values) + ["--quiet"]) == 0


# -- 8: HF export over a run ------------------------------------------------------------------------
def test_export_refuses_a_destination_holding_a_run_or_an_empty_name(capsys, trained, tmp_path, monkeypatch):
    before = files_of(trained)
    fails_with_one_line(capsys, hf_main, [str(trained), str(trained)], "holds a training run", "another folder")
    assert files_of(trained) == before  # the run's config.json is still the training config
    monkeypatch.chdir(tmp_path)
    fails_with_one_line(capsys, hf_main, [str(trained), ""], "destination folder is empty")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing written into the current folder
    assert hf_main([str(trained), str(tmp_path / "hf")]) == 0  # a fresh folder is fine


# -- 9: a full disk during a save, as torch reports it ----------------------------------------------
@pytest.mark.parametrize("with_cause", [True, False], ids=["file-error-inside", "bare-runtime-error"])
def test_disk_full_reported_by_torch_save_is_one_line(capsys, trained, char_data_dir, monkeypatch, with_cause):
    import errno
    import os

    before = {name: (trained / name).read_bytes() for name in ("ckpt.pt", "best.pt")}

    def disk_full(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        message = "[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/0: file write failed"
        if not with_cause:
            raise RuntimeError(message)
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            raise RuntimeError(message)  # as torch's zip writer does when the file's write fails

    monkeypatch.setattr(torch, "save", disk_full)
    values = tiny_overrides(char_data_dir, trained, init_from="resume", max_iters=4)
    expected = "No space left on device" if with_cause else "is the disk full?"
    fails_with_one_line(capsys, train_main, flags(values), "could not write checkpoint", expected,
                        "previous one is intact")
    monkeypatch.undo()
    assert {name: (trained / name).read_bytes() for name in before} == before
    assert leftovers(trained) == []


# -- 10: a damaged metrics.jsonl --------------------------------------------------------------------
DAMAGED_LINES = [b"\xff\xfe stray bytes", b"not json", b'{"iter": 1, "loss": "2.5"}', b'{"iter": "x", "loss": 1}',
                 b"[1, 2]", b'{"iter": true, "loss": 1.0}']


def damage(path: Path) -> list[bytes]:
    good = path.read_bytes().splitlines()
    path.write_bytes(b"\n".join(good[:1] + DAMAGED_LINES + good[1:]) + b"\n")
    return good


def test_the_metrics_reader_skips_damaged_lines_with_one_warning(capsys, tmp_path):
    from model.training.metrics import read_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"iter": 0, "val_loss": 4.0}\n' + b"\n".join(DAMAGED_LINES) + b'\n{"iter": 5, "loss": 3.0}\n{"iter": 6, "lo')
    assert read_metrics(path) == [{"iter": 0, "val_loss": 4.0}, {"iter": 5, "loss": 3.0}]
    assert read_metrics(path) == [{"iter": 0, "val_loss": 4.0}, {"iter": 5, "loss": 3.0}]
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"warning: skipped {len(DAMAGED_LINES)} damaged line(s) of {path} (each line should be a JSON "
                   "object of numbers)"]  # once, not once per read; the torn last line silently


def test_a_damaged_metrics_file_stops_neither_resume_plot_nor_comparison(capsys, trained, char_data_dir, tmp_path):
    from model.training.plots import plot_loss

    damage(trained / "metrics.jsonl")
    plot_loss(trained)  # the evaluation's plot that used to raise UnicodeDecodeError
    assert runs_main(["compare", str(trained), f"--plot={tmp_path / 'c.png'}"]) == 0
    values = tiny_overrides(char_data_dir, trained, init_from="resume", max_iters=4)
    assert train_main(flags(values) + ["--quiet"]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "warning: skipped" in err
    records = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert max(r["iter"] for r in records) == 4  # the resumed run logged on


# -- 11: crafted and damaged files ------------------------------------------------------------------
def edit_checkpoint(path: Path, edit) -> None:
    ckpt = torch.load(path, weights_only=True)
    edit(ckpt)
    torch.save(ckpt, path)


def panicking_bpe_json() -> str:
    """A tokenizer.json whose two tokens share an id: tiktoken would abort the process with a Rust panic."""
    from model.data.tokenizer import byte_level_alphabet

    vocab = {ch: i + 1 for i, ch in enumerate(byte_level_alphabet())} | {"ab": 5}
    return json.dumps({"model": {"type": "BPE", "vocab": vocab}, "added_tokens": [{"id": 0, "content": "<|endoftext|>"}]})


CRAFTED_CHECKPOINTS = {
    "n_layer-as-text": (lambda c: c["model_config"].update(n_layer="1"), "model_config.n_layer must be an integer"),
    "no-tokenizer": (lambda c: c.pop("tokenizer"), "tokenizer is missing"),
    "char-without-chars": (lambda c: c["tokenizer"].pop("chars"), "tokenizer.chars is missing"),
    "tokenizer-as-text": (lambda c: c.update(tokenizer="char"), "tokenizer must be a mapping"),
    "bpe-that-panics": (lambda c: c.update(tokenizer={"kind": "bpe", "json": panicking_bpe_json()}),
                        "without gaps or repeats"),
    "huge-block_size": (lambda c: c["model_config"].update(block_size=2**40), "block_size must be from 1 to"),
    "wrong-position-table": (lambda c: c["model_config"].update(block_size=64), "transformer.wpe.weight is (32, 32)"),
    "missing-layer": (lambda c: c["model_config"].update(n_layer=3), "hold 2 layer(s) but model_config says n_layer=3"),
    "unknown-option": (lambda c: c["model_config"].update(flash=True), "options this version doesn't know: flash"),
    "weights-not-tensors": (lambda c: c["model"].update({"lm_head.weight": [1.0]}), "lm_head.weight must be a tensor"),
    "non-finite-weights": (lambda c: c["model"]["transformer.h.0.mlp.c_fc.weight"].fill_(float("nan")),
                           "non-finite weights"),
}


@pytest.mark.parametrize("case", list(CRAFTED_CHECKPOINTS))
def test_a_crafted_checkpoint_is_one_line_for_every_program(capsys, trained, tmp_path, case):
    edit, message = CRAFTED_CHECKPOINTS[case]
    path = trained / "best.pt"
    edit_checkpoint(path, edit)
    fails_with_one_line(capsys, sample_main, [f"--checkpoint={path}", "--max_new_tokens=3", "--quiet"], message)
    (tmp_path / "t.txt").write_text("ROMEO: but soft\n")
    fails_with_one_line(capsys, eval_main, [str(path), f"--text={tmp_path / 't.txt'}", "--quiet"], message)
    fails_with_one_line(capsys, visualize_main, [f"--checkpoint={path}", f"--out={tmp_path / 'a.png'}"], message)
    fails_with_one_line(capsys, hf_main, [str(path), str(tmp_path / "hf")], message)


def test_the_server_refuses_a_crafted_checkpoint_at_start_up(capsys, trained):
    import socket

    edit_checkpoint(trained / "best.pt", lambda c: c["model_config"].update(n_layer="1"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fails_with_one_line(capsys, serve_main, [f"--out_dir={trained}", f"--port={port}", "--quiet"],
                        "model_config.n_layer must be an integer")


CRAFTED_RESUME_STATES = {
    "iter_num-as-text": (lambda c: c.update(iter_num="2"), "iter_num must be an integer"),
    "negative-iter_num": (lambda c: c.update(iter_num=-3), "iter_num must be at least 0"),
    "data_position-as-text": (lambda c: c.update(data_position="start"), "data_position must be a mapping"),
    "bad-generator-state": (lambda c: c["data_position"].update(batch_generator=torch.zeros(3, dtype=torch.uint8)),
                            "data_position.batch_generator must be a torch.uint8 tensor of shape (5056,)"),
    "bad-rng": (lambda c: c["rng"][0].update(numpy_pos=10**6), "rng[0].numpy_pos must be from 0 to 624"),
    "python-rng-position": (lambda c: c["rng"][0]["python"].__setitem__(-1, 999), "rng[0].python must end in"),
    "rng-as-number": (lambda c: c.update(rng=7), "rng must be a list"),
    "no-optimizer": (lambda c: c.pop("optimizer"), "holds no optimizer state"),
    "schedule-as-text": (lambda c: c["config"].update(learning_rate="fast"), "config.learning_rate must be a number"),
}


@pytest.mark.parametrize("case", list(CRAFTED_RESUME_STATES))
def test_crafted_resume_state_is_one_line(capsys, trained, char_data_dir, case):
    edit, message = CRAFTED_RESUME_STATES[case]
    edit_checkpoint(trained / "ckpt.pt", edit)
    before = files_of(trained)
    values = tiny_overrides(char_data_dir, trained, init_from="resume", max_iters=4)
    line = fails_with_one_line(capsys, train_main, flags(values), message)
    assert "does not fit optimizer" not in line
    assert files_of(trained) == before


CRAFTED_METAS = {
    "vocab_size-as-text": ({"vocab_size": "59"}, "vocab_size must be an integer"),
    "tokenizer-as-text": ({"tokenizer": "char"}, "tokenizer must be a mapping"),
    "shards-as-text": ({"shards": "train_000.bin"}, "shards must be a mapping"),
    "shard-outside-the-folder": ({"shards": {"train": [{"file": "../../x.bin", "tokens": 9}]}},
                                 "shards.train[0].file must be a file name in the same folder"),
    "train_tokens-as-text": ({"train_tokens": "45000"}, "train_tokens must be an integer"),
    "dtype": ({"dtype": "float64"}, "dtype must be one of 'uint16', 'uint32'"),
    "unknown-tokenizer": ({"tokenizer": {"kind": "sentencepiece"}}, "tokenizer.kind must be one of"),
    "not-an-object": ([1, 2, 3], "must be a mapping"),
}


@pytest.mark.parametrize("case", list(CRAFTED_METAS))
def test_a_malformed_meta_json_is_one_line(capsys, char_data_dir, tmp_path, case):
    changes, message = CRAFTED_METAS[case]
    meta_path = char_data_dir / "tiny" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, **changes} if isinstance(changes, dict) else changes))
    fails_with_one_line(capsys, train_main, flags(tiny_overrides(char_data_dir, tmp_path / "out")), message)


def test_bpe_files_that_would_make_tiktoken_panic_are_one_line():
    from model.data.tokenizer import BPETokenizer, byte_level_alphabet
    from model.errors import TinyGPTError

    alphabet = list(byte_level_alphabet())
    eot = [{"id": 0, "content": "<|endoftext|>"}]

    def spec(vocab, added=eot):
        return json.dumps({"model": {"type": "BPE", "vocab": vocab}, "added_tokens": added})

    base = {ch: i + 1 for i, ch in enumerate(alphabet)}
    cases = {
        "a repeated id": (spec({**base, "ab": 5}), "without gaps or repeats"),
        "a missing byte": (spec({ch: i + 1 for i, ch in enumerate(alphabet[:100])}), "lacks 156 of the 256 single bytes"),
        "a fractional id": (spec({**base, "ab": 1.5}), "model.vocab.ab must be an integer"),
        "a negative id": (spec({**base, "ab": -1}), "model.vocab.ab must be at least 0"),
        "no end-of-text": (spec(base, []), "with an <|endoftext|> token"),
    }
    for name, (text, message) in cases.items():
        with pytest.raises(TinyGPTError, match=message.replace("|", r"\|")):
            BPETokenizer(text)


# -- 13: evaluation's memory check and folders passed as files -----------------------------------------
def test_eval_lowers_a_batch_that_would_not_fit_and_refuses_a_model_that_never_fits(capsys, trained, tmp_path,
                                                                                     monkeypatch):
    from model.training import memory

    (tmp_path / "t.txt").write_text("ROMEO: but soft, what light through yonder window breaks?\n" * 20)
    argv = [str(trained), f"--text={tmp_path / 't.txt'}", "--json", "--quiet"]
    assert eval_main(argv + ["--batch_size=1"]) == 0
    expected = json.loads(capsys.readouterr().out)
    from model.checkpoint import load_model

    room = memory.evaluation_bytes(load_model(trained)[0].config, 3, torch.float32)  # the weights and 3 windows
    monkeypatch.setattr(memory, "machine_memory", lambda device: room)
    assert eval_main(argv + ["--batch_size=64"]) == 0
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [captured.err.strip()]
    assert captured.err.startswith("warning: --batch_size=64 would need about") and "--batch_size=3 instead" in captured.err
    assert json.loads(captured.out) == pytest.approx(expected)
    monkeypatch.setattr(memory, "machine_memory", lambda device: 1000)
    fails_with_one_line(capsys, eval_main, argv, "needs about", "even one window")


def test_folders_passed_as_files_are_one_line(capsys, trained, tmp_path):
    folder = tmp_path / "a-folder"
    folder.mkdir()
    fails_with_one_line(capsys, eval_main, [str(trained), f"--hellaswag={folder}"], "is a folder, not a file")
    fails_with_one_line(capsys, eval_main, [str(trained), f"--text={folder}"], "is a folder, not a file")
    fails_with_one_line(capsys, sample_main, [f"--out_dir={trained}", f"--start=FILE:{folder}"],
                        f"prompt file {folder} is a folder, not a file")


# -- 14: shard sizes ---------------------------------------------------------------------------------
@pytest.mark.parametrize("tokens", ["1", "63", "0", "-5"])
def test_an_absurdly_small_shard_size_is_refused_up_front(capsys, tmp_path, tokens):
    fails_with_one_line(capsys, prepare_main, ["--dataset=x", f"--data_dir={tmp_path}", "--hf_dataset=json",
                                               f"--data_files={tmp_path / 'none.jsonl'}", f"--shard_tokens={tokens}"],
                        f"--shard_tokens={tokens} is too small", "at least 64")
    assert list(tmp_path.iterdir()) == []


# -- 15: picture formats by suffix ------------------------------------------------------------------
MAGIC = {"pdf": b"%PDF", "svg": b"<?xml", "png": b"\x89PNG"}


@pytest.mark.parametrize("suffix", list(MAGIC))
def test_pictures_are_written_in_the_format_their_suffix_names(trained, tmp_path, suffix):
    picture = tmp_path / f"attention.{suffix}"
    assert visualize_main([f"--out_dir={trained}", "--start=ROMEO:", f"--out={picture}"]) == 0
    assert picture.read_bytes().startswith(MAGIC[suffix])
    plot = tmp_path / f"compare.{suffix.upper()}"
    assert runs_main(["compare", str(trained), f"--plot={plot}"]) == 0
    assert plot.read_bytes().startswith(MAGIC[suffix])


@pytest.mark.parametrize("name", ["attention.txt", "attention", "attention.png.bak"])
def test_a_picture_name_without_a_known_format_is_refused(capsys, trained, tmp_path, name):
    fails_with_one_line(capsys, visualize_main, [f"--out_dir={trained}", f"--out={tmp_path / name}"],
                        "cannot tell which picture format", ".pdf", ".svg")
    fails_with_one_line(capsys, runs_main, ["compare", str(trained), f"--plot={tmp_path / name}"],
                        "cannot tell which picture format")
    assert not (tmp_path / name).exists()
