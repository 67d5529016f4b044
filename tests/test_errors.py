"""Bad input ends in one clear line on stderr and a non-zero exit: no traceback, no half-written file.

One test per kind of bad input. The command-line entry points run in-process (`train_main([...])`,
the same function train.py calls), so each case costs a fraction of a second.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch

from helpers import flags, tiny_overrides
from model.cli import prepare_main, sample_main, train_main
from model.config import GPTConfig
from model.nn.report import Report


def vocab_size(data_dir: Path) -> int:
    return json.loads((data_dir / "tiny" / "meta.json").read_text())["vocab_size"]


def fails_with_one_line(capsys, main, argv: list[str], *expected: str) -> str:
    """Run an entry point; check exit status 1 and a single `error: ...` line holding `expected`."""
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 1, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def leftovers(folder: Path) -> list[str]:
    """Temporary files a crashed write could leave behind."""
    return [p.name for p in folder.rglob("*") if ".tmp" in p.name or p.name.startswith(".write-test")]


# -- configs --------------------------------------------------------------------------------------
def test_unknown_config_key(capsys, tmp_path):
    fails_with_one_line(capsys, train_main, [f"--out_dir={tmp_path}/out", "--n_layers=2"],
                        "unknown config key 'n_layers'", "did you mean 'n_layer'")
    assert not (tmp_path / "out").exists()


def test_wrong_type_on_the_command_line(capsys, tmp_path):
    fails_with_one_line(capsys, train_main, [f"--out_dir={tmp_path}/out", "--batch_size=twelve"],
                        "batch_size", "expects int", "'twelve'")


def test_wrong_type_in_a_config_file(capsys, tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('learning_rate = "fast"\n')
    fails_with_one_line(capsys, train_main, [str(path)], "learning_rate", "expects float")


def test_missing_config_file(capsys, tmp_path):
    fails_with_one_line(capsys, train_main, [str(tmp_path / "nope.toml")], "config file not found", "nope.toml")


def test_n_embd_not_divisible_by_n_head(capsys, char_data_dir, tmp_path):
    values = tiny_overrides(char_data_dir, tmp_path / "out", n_embd=30, n_head=4)
    fails_with_one_line(capsys, train_main, flags(values), "n_embd=30 is not divisible by n_head=4")


# -- data -----------------------------------------------------------------------------------------
def test_dataset_not_prepared(capsys, tmp_path):
    out = tmp_path / "out"
    values = tiny_overrides(tmp_path / "data", out, dataset="mine")
    fails_with_one_line(capsys, train_main, flags(values), "dataset not prepared", "prepare.py --dataset=mine")
    assert list(out.iterdir()) == []  # nothing written


def test_empty_corpus(capsys, tmp_path):
    (tmp_path / "empty.txt").write_text("  \n")
    fails_with_one_line(capsys, prepare_main, ["--dataset=x", f"--data_dir={tmp_path}",
                                               f"--input={tmp_path / 'empty.txt'}", "--tokenizer=char"], "is empty")
    assert not (tmp_path / "x").exists()  # no empty dataset folder left behind


def test_non_utf8_corpus(capsys, tmp_path):
    (tmp_path / "latin1.txt").write_bytes("café olé\n".encode("latin-1"))
    fails_with_one_line(capsys, prepare_main, ["--dataset=x", f"--data_dir={tmp_path}",
                                               f"--input={tmp_path / 'latin1.txt'}"], "not UTF-8", "offset 3")
    assert not (tmp_path / "x").exists()


def test_truncated_bin(capsys, char_data_dir, tmp_path):
    path = char_data_dir / "tiny" / "train.bin"
    path.write_bytes(path.read_bytes()[:-101])
    fails_with_one_line(capsys, train_main, flags(tiny_overrides(char_data_dir, tmp_path / "out")),
                        "train.bin", "truncated")


def test_corrupted_bin(capsys, char_data_dir, tmp_path):
    path = char_data_dir / "tiny" / "train.bin"
    path.write_bytes(b"\xff" * path.stat().st_size)  # right size, garbage ids
    fails_with_one_line(capsys, train_main, flags(tiny_overrides(char_data_dir, tmp_path / "out")),
                        "token id 65535", f"{vocab_size(char_data_dir)} tokens", "corrupted")
    assert not (tmp_path / "out" / "ckpt.pt").exists()


def edited_meta(data_dir: Path, **changes) -> dict:
    """Rewrite the 'tiny' dataset's meta.json with top-level `changes`; returns the original meta."""
    meta_path = data_dir / "tiny" / "meta.json"
    original = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**original, **changes}))
    return original


def test_meta_dtype_does_not_match_bin(capsys, char_data_dir, tmp_path):
    edited_meta(char_data_dir, dtype="uint32")  # the files hold uint16
    fails_with_one_line(capsys, train_main, flags(tiny_overrides(char_data_dir, tmp_path / "out")),
                        "does not match meta.json", "uint32")


def test_meta_vocabulary_does_not_match_bin(capsys, char_data_dir, tmp_path):
    tokenizer = json.loads((char_data_dir / "tiny" / "meta.json").read_text())["tokenizer"]
    # a consistent meta.json, but for a smaller vocabulary than the .bin files use
    edited_meta(char_data_dir, vocab_size=20, tokenizer={**tokenizer, "chars": tokenizer["chars"][:20], "vocab_size": 20})
    fails_with_one_line(capsys, train_main, flags(tiny_overrides(char_data_dir, tmp_path / "out")),
                        "train.bin holds token id", "20 tokens")


def test_meta_vocab_size_disagrees_with_its_tokenizer(capsys, char_data_dir, tmp_path):
    real = edited_meta(char_data_dir, vocab_size=50)["vocab_size"]
    fails_with_one_line(capsys, train_main, flags(tiny_overrides(char_data_dir, tmp_path / "out")),
                        f"vocab_size 50 does not match its tokenizer's ({real})")


# -- checkpoints ----------------------------------------------------------------------------------
def test_checkpoint_vocabulary_does_not_match_dataset(capsys, trained, char_data_dir, tmp_path):
    from model.data.dataset import prepare

    trained_vocab = vocab_size(char_data_dir)
    (tmp_path / "lower.txt").write_text("to be or not to be, that is the question\n" * 200)
    prepare("tiny", char_data_dir, input_path=str(tmp_path / "lower.txt"), tokenizer="char")
    before = (trained / "ckpt.pt").read_bytes()
    fails_with_one_line(capsys, train_main, flags(tiny_overrides(char_data_dir, trained, init_from="resume", max_iters=4)),
                        f"vocabulary of {trained_vocab} characters", "the dataset has 15 characters")
    assert (trained / "ckpt.pt").read_bytes() == before


@pytest.mark.parametrize("block_size", [128, 64, 16])
def test_resume_refuses_any_other_block_size_with_one_rule(capsys, trained, char_data_dir, block_size):
    # one rule, one message: neither "resume with block_size <= 32" then "16 contradicts" for a shorter one
    values = tiny_overrides(char_data_dir, trained, init_from="resume", max_iters=4, block_size=block_size)
    fails_with_one_line(capsys, train_main, flags(values), f"block_size={block_size} contradicts",
                        "which has block_size=32", "drop --block_size")


def test_prompt_outside_character_vocabulary(capsys, trained):
    fails_with_one_line(capsys, sample_main, [f"--out_dir={trained}", "--start=naïve €", "--max_new_tokens=3"],
                        "2 character(s) outside this character-level vocabulary", "'ï'", "'€'")


class RunsCodeWhenUnpickled:
    """A payload like a malicious checkpoint would carry: unpickling it creates a folder."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def test_checkpoint_that_would_run_code_is_refused(capsys, tmp_path):
    evil = tmp_path / "evil.pt"
    marker = tmp_path / "code-ran"
    torch.save({"model": RunsCodeWhenUnpickled(marker), "model_config": {}}, evil)
    fails_with_one_line(capsys, sample_main, [f"--checkpoint={evil}"], "refusing to load", "could run code")
    assert not marker.exists()
    # the payload is real: an unsafe load would have run it
    torch.load(evil, weights_only=False)
    assert marker.is_dir()


def test_resume_from_a_checkpoint_that_would_run_code_is_refused(capsys, char_data_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    marker = tmp_path / "code-ran"
    torch.save({"model": RunsCodeWhenUnpickled(marker), "model_config": {}}, out / "ckpt.pt")
    fails_with_one_line(capsys, train_main, flags(tiny_overrides(char_data_dir, out, init_from="resume")),
                        "refusing to load")
    assert not marker.exists()


def test_truncated_checkpoint(capsys, trained):
    path = trained / "best.pt"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    fails_with_one_line(capsys, sample_main, [f"--checkpoint={path}"], "not a readable checkpoint")


# -- writing --------------------------------------------------------------------------------------
def test_out_dir_that_cannot_be_written(capsys, char_data_dir, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    fails_with_one_line(capsys, train_main, flags(tiny_overrides(char_data_dir, blocker / "out")),
                        "is not writable")


def test_disk_full_while_saving(capsys, trained, char_data_dir, monkeypatch):
    before = {name: (trained / name).read_bytes() for name in ("ckpt.pt", "best.pt")}

    def disk_full(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", disk_full)
    values = tiny_overrides(char_data_dir, trained, init_from="resume", max_iters=4)
    fails_with_one_line(capsys, train_main, flags(values), "could not write checkpoint", "No space left on device",
                        "previous one is intact")
    monkeypatch.undo()
    for name, data in before.items():
        assert (trained / name).read_bytes() == data
    assert leftovers(trained) == []
    from model.checkpoint import load_checkpoint

    assert load_checkpoint(trained / "ckpt.pt")["iter_num"] == 2


def test_memory_beyond_the_machine_fails_before_allocating(capsys, char_data_dir, tmp_path):
    L, C, T, V = 96, 12288, 2048, vocab_size(char_data_dir)  # GPT-3 175B's shape, the dataset's vocabulary
    values = tiny_overrides(char_data_dir, tmp_path / "out", n_layer=L, n_head=96, n_embd=C, block_size=T)
    line = fails_with_one_line(capsys, train_main, flags(values), "this config needs about")
    # per block: attention 4C^2 + 4C, MLP 8C^2 + 5C, two LayerNorms 4C; then ln_f and the two tables
    n_params = L * (12 * C * C + 13 * C) + 2 * C + (V + T) * C
    assert f"{n_params / 1e6:,.1f}M parameters take {n_params * 16 / 1e9:,.1f} GB" in line
    assert not (tmp_path / "out" / "config.json").exists()


def test_adam_beta_out_of_range(capsys, tmp_path):
    # checked in the config: torch.optim.AdamW would raise a ValueError with a traceback
    fails_with_one_line(capsys, train_main, [f"--out_dir={tmp_path}/out", "--beta2=1.5"], "beta2 must be in [0, 1)")


def test_disk_full_while_preparing_a_dataset(capsys, corpus, tmp_path, monkeypatch):
    import model.files

    def disk_full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(model.files.os, "fsync", disk_full)
    fails_with_one_line(capsys, prepare_main, ["--dataset=x", f"--data_dir={tmp_path}", f"--input={corpus}"],
                        "could not write", "train.bin", "No space left on device")
    assert not (tmp_path / "x").exists()  # no half train.bin, no meta.json, no empty folder


def test_dataset_folder_that_cannot_be_created(capsys, corpus, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    fails_with_one_line(capsys, prepare_main, ["--dataset=x", f"--data_dir={blocker}", f"--input={corpus}"],
                        "cannot create dataset folder", str(blocker / "x"))


def test_read_json_names_the_file_for_every_kind_of_bad_file(tmp_path):
    import pytest

    from model.errors import TinyGPTError
    from model.files import read_json

    good = tmp_path / "good.json"
    good.write_text('{"a": [1, 2]}')
    assert read_json(good) == {"a": [1, 2]}
    (tmp_path / "truncated.json").write_text('{"a": [1,')
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00garbage")
    (tmp_path / "folder.json").mkdir()
    for name in ("truncated.json", "binary.json", "folder.json", "missing.json"):
        with pytest.raises(TinyGPTError, match=name):
            read_json(tmp_path / name)


def test_a_library_error_contributes_its_first_line():
    from model.errors import first_line

    assert first_line(ValueError("\n  no such file\nTraceback details...")) == "no such file"
    assert first_line(ValueError("no such file"), 5) == "no su"
    assert first_line(ValueError("")) == ""


# -- inputs an adversarial user tried ---------------------------------------------------------------
@pytest.mark.parametrize("n_embd, n_head", [(30, 2), (32, 32)], ids=["head-size-15", "head-size-1"])
def test_rope_with_an_odd_head_size(capsys, char_data_dir, tmp_path, n_embd, n_head):
    values = tiny_overrides(char_data_dir, tmp_path / "out", pos_embedding="rope", n_embd=n_embd, n_head=n_head)
    fails_with_one_line(capsys, train_main, flags(values), "pos_embedding='rope'", "head size", "must be even")
    report = Report(GPTConfig(n_embd=n_embd, n_head=n_head, pos_embedding="rope", vocab_size=65)).to_dict()
    assert report["buildable"] is False and "even" in report["unbuildable_reason"]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-0.5"])
def test_sample_temperature_not_a_finite_non_negative_number(capsys, trained, value):
    fails_with_one_line(capsys, sample_main, [f"--out_dir={trained}", f"--temperature={value}"], "--temperature")


def test_seed_beyond_64_bits(capsys, trained, char_data_dir, tmp_path):
    huge = "99999999999999999999"
    fails_with_one_line(capsys, train_main, flags(tiny_overrides(char_data_dir, tmp_path / "out", seed=huge)),
                        "seed must be a 64-bit integer")
    fails_with_one_line(capsys, sample_main, [f"--out_dir={trained}", f"--seed={huge}"], "--seed must be a 64-bit")


def test_more_samples_at_once_than_memory_holds(capsys, trained, monkeypatch):
    from model.sampling import generate
    from model.training import memory

    monkeypatch.setattr(memory, "machine_memory", lambda device: 4 * 2**30)  # the same answer on any machine
    with monkeypatch.context() as m:  # were the check missing, fail here rather than take the machine's memory
        m.setattr(generate, "generate_text", lambda *args, **kwargs: pytest.fail("generation started"))
        line = fails_with_one_line(capsys, sample_main, [f"--out_dir={trained}", "--num_samples=1000000"],
                                   "1,000,000 samples at once need about", "--num_samples=")
    fewer = int(line.split("--num_samples=")[1].split()[0].replace(",", ""))
    assert 1 <= fewer < 1_000_000
    assert sample_main([f"--out_dir={trained}", f"--num_samples={min(fewer, 3)}", "--max_new_tokens=2", "--quiet"]) == 0


def test_empty_out_dir_writes_nothing_into_the_current_folder(capsys, char_data_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    values = tiny_overrides(char_data_dir, "", max_iters=2)
    fails_with_one_line(capsys, train_main, flags(values), "out_dir must not be empty")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "data"]


def test_negative_top_k(capsys, trained):
    fails_with_one_line(capsys, sample_main, [f"--out_dir={trained}", "--top_k=-3"], "--top_k must be >= 0")


def test_min_lr_above_learning_rate(capsys, char_data_dir, tmp_path):
    values = tiny_overrides(char_data_dir, tmp_path / "out", learning_rate=1e-4, min_lr=1e-3)
    fails_with_one_line(capsys, train_main, flags(values), "min_lr=0.001 is above learning_rate=0.0001")
    assert not (tmp_path / "out" / "ckpt.pt").exists()
    assert train_main(flags({**values, "decay_lr": "False", "max_iters": "1"}) + ["--quiet"]) == 0  # unused then


def test_warmup_beyond_lr_decay_iters_warns_in_one_line(capsys, char_data_dir, tmp_path):
    values = tiny_overrides(char_data_dir, tmp_path / "out", max_iters=2, warmup_iters=50, lr_decay_iters=10)
    assert train_main(flags(values) + ["--quiet"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["warning: warmup_iters=50 is beyond lr_decay_iters=10: the rate warms up, then drops straight "
                   "to min_lr at iteration 50"]


def test_garbage_checkpoint_is_corrupt_not_dangerous(capsys, tmp_path):
    (tmp_path / "best.pt").write_bytes(b"garbage")  # 7 bytes
    line = fails_with_one_line(capsys, sample_main, [f"--out_dir={tmp_path}"], "not a readable checkpoint")
    assert "could run code" not in line


def test_refusal_names_what_would_run_and_ends_cleanly(capsys, tmp_path):
    import pickle

    marker = tmp_path / "code-ran"
    for name, write in [("zip.pt", torch.save), ("plain.pt", lambda obj, f: pickle.dump(obj, open(f, "wb")))]:
        write({"model": RunsCodeWhenUnpickled(marker), "model_config": {}}, tmp_path / name)
        line = fails_with_one_line(capsys, sample_main, [f"--checkpoint={tmp_path / name}"],
                                   "refusing to load", "mkdir", "could run code")
        assert line.endswith("and loading it could run code") and "torch.load" not in line
        assert not marker.exists()


def test_offline_download_advice_is_a_command_that_works(capsys, corpus, tmp_path, monkeypatch):
    import urllib.error
    import urllib.request

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.delenv("TINYSHAKESPEARE_PATH", raising=False)
    monkeypatch.setattr("model.data.dataset.SHIPPED_DIR", tmp_path / "no-shipped-copy")  # as if it were lost
    data_dir = tmp_path / "data"
    values = tiny_overrides(data_dir, tmp_path / "out", dataset="shakespeare_char", max_iters=1)
    line = fails_with_one_line(capsys, train_main, flags(values), "could not download")
    advice = line.split("run ", 1)[1]
    assert advice.startswith("python data/prepare.py --dataset=shakespeare_char --input=FILE"), advice
    assert not (data_dir / "shakespeare_char").exists()  # the failed prepare left no empty folder
    args = advice.split(",")[0].split()[2:]  # the prepare flags, as the message spells them
    args = [a.replace("FILE", str(corpus)) for a in args] + [f"--data_dir={data_dir}", "--quiet"]
    assert prepare_main(args) == 0
    assert train_main(flags(values) + ["--quiet"]) == 0


def model_commands(model: str) -> dict:
    """The argv of each command that runs a trained model (but train.py), naming `model` as MODEL."""
    from serving_helpers import free_port

    return {"sample": [model, "--max_new_tokens=2", "--quiet"], "eval": [model, "--text=never-read.txt", "--quiet"],
            "serve": [model, f"--port={free_port()}"], "visualize": [model, "--out=never-written.png"],
            "hf": [model, "never-written"]}


def command_main(name: str):
    from model import cli

    return {"sample": cli.sample_main, "eval": cli.eval_main, "serve": cli.serve_main,
            "visualize": cli.visualize_main, "hf": cli.hf_main}[name]


@pytest.mark.parametrize("command", ["sample", "eval", "serve", "visualize"])
def test_a_misspelt_device_is_one_line(capsys, trained, command, monkeypatch):
    monkeypatch.chdir(trained)  # whatever a command would write lands here
    fails_with_one_line(capsys, command_main(command), model_commands(str(trained))[command] + ["--device=bogus"],
                        "device must be one of auto, cpu, cuda, cuda:N, mps; got 'bogus'")
    assert not (trained / "never-written.png").exists()


@pytest.mark.parametrize("command", ["sample", "eval", "serve", "visualize", "hf"])
def test_a_hub_name_without_network_is_one_line_saying_how_to_name_a_local_folder(capsys, tmp_path, command,
                                                                                  monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def unreachable(*args, **kwargs):
        raise LocalEntryNotFoundError("Cannot find an appropriate cached snapshot folder; outgoing traffic is disabled")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    monkeypatch.chdir(tmp_path)  # where no folder is called gpt2
    fails_with_one_line(capsys, command_main(command), model_commands("gpt2")[command],
                        "'gpt2' is no file or folder here", "hub can't be reached",
                        "save_pretrained('gpt2-local')", "a training run folder or a checkpoint file")
    assert list(tmp_path.iterdir()) == []


def test_default_prompt_on_a_vocabulary_without_newline(capsys, shakespeare_text, tmp_path):
    from model.data.dataset import prepare

    (tmp_path / "one-line.txt").write_text(shakespeare_text[:20_000].replace("\n", " "), encoding="utf-8")
    prepare("flat", tmp_path / "data", input_path=str(tmp_path / "one-line.txt"), tokenizer="char", quiet=True)
    values = tiny_overrides(tmp_path / "data", tmp_path / "out", dataset="flat", max_iters=1)
    assert train_main(flags(values) + ["--quiet"]) == 0
    capsys.readouterr()
    assert sample_main([f"--out_dir={tmp_path / 'out'}", "--num_samples=1", "--max_new_tokens=5", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out.startswith(" ")  # the vocabulary's first character: a space


def test_a_tiny_temperature_samples_greedily_instead_of_failing(capsys, trained):
    texts = []
    for temperature in ("1.7e-175", "1e-320", "0"):
        argv = [f"--out_dir={trained}", f"--temperature={temperature}", "--num_samples=2", "--max_new_tokens=20"]
        assert sample_main(argv + ["--quiet"]) == 0, capsys.readouterr().err
        texts.append(capsys.readouterr().out)
    assert texts[0] == texts[1] == texts[2]  # the limit of a temperature going to 0 is greedy decoding


def test_a_tiny_top_p_keeps_the_most_likely_token(capsys, trained):
    argv = [f"--out_dir={trained}", "--num_samples=2", "--max_new_tokens=20", "--quiet"]
    assert sample_main(argv + ["--top_p=1.7e-175"]) == 0, capsys.readouterr().err
    nucleus_of_one = capsys.readouterr().out
    assert sample_main(argv + ["--temperature=0"]) == 0
    assert nucleus_of_one == capsys.readouterr().out
