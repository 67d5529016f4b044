"""Property test (hypothesis): random corruptions of a real run's files (byte flips and truncations of
ckpt.pt, meta.json and metrics.jsonl, and edited fields in each) fed to sampling, evaluation, resume
and `runs compare` give a clean run, or one line on stderr and a non-zero exit; never a traceback.

Each example copies a trained run and its dataset, corrupts one file, and runs one program in-process
(as the command line calls it), briefly: a few new tokens, a resume of two iterations.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from helpers import flags, tiny_overrides
from model.cli import eval_main, runs_main, sample_main, train_main
from test_cli_properties import assert_exit_0_or_one_line, run_in_process

pytestmark = pytest.mark.slow  # every example runs a program over a real checkpoint

FILES = ("out/ckpt.pt", "data/tiny/meta.json", "out/metrics.jsonl")
PROGRAMS = ("sample", "eval", "resume", "compare")

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
              st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
              st.sampled_from([0, 1, -1, 2**31, 2**40, "1", "char", "bpe", ""])),
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(st.text(max_size=6), children, max_size=3)),
    max_leaves=6,
)


@st.composite
def corruptions(draw) -> tuple[str, str, object]:
    """(file, how, details): a byte flip, a truncation, or an edited field of one of FILES."""
    file = draw(st.sampled_from(FILES))
    how = draw(st.sampled_from(["flip", "truncate", "edit"]))
    if how == "flip":
        return file, how, draw(st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)),
                                        min_size=1, max_size=8))
    if how == "truncate":
        return file, how, draw(st.floats(0, 1, exclude_max=True))
    return file, how, (draw(st.floats(0, 1, exclude_max=True)), draw(st.floats(0, 1, exclude_max=True)),
                       draw(st.booleans()), draw(json_values))


def edit_mapping(value: dict, picks: tuple[float, float, bool, object]) -> None:
    """Replace (or delete) one entry of `value`, at the top level or one level down."""
    where, inner, delete, new = picks
    keys = sorted(value, key=str)
    key = keys[int(where * len(keys))]
    if isinstance(value[key], dict) and value[key] and inner < 0.5:
        value, keys = value[key], sorted(value[key], key=str)
        key = keys[int(inner * 2 * len(keys))]
    if delete:
        del value[key]
    else:
        value[key] = new


def corrupt(root: Path, file: str, how: str, details) -> None:
    path = root / file
    data = bytearray(path.read_bytes())
    if how == "flip":
        for where, xor in details:
            data[int(where * len(data))] ^= xor
        path.write_bytes(bytes(data))
    elif how == "truncate":
        path.write_bytes(bytes(data[: int(details * len(data))]))
    elif path.suffix == ".pt":
        ckpt = torch.load(path, weights_only=True)
        edit_mapping(ckpt, details)
        torch.save(ckpt, path)
    elif path.suffix == ".json":
        meta = json.loads(data)
        edit_mapping(meta, details)
        path.write_text(json.dumps(meta))
    else:  # metrics.jsonl: one record edited
        lines = data.decode().splitlines()
        line = int(details[0] * len(lines))
        record = json.loads(lines[line])
        edit_mapping(record, details)
        lines[line] = json.dumps(record)
        path.write_text("\n".join(lines) + "\n")


def run_program(program: str, root: Path) -> tuple[int, str, list[str]]:
    out, data = root / "out", root / "data"
    if program == "sample":
        argv = [f"--out_dir={out}", "--checkpoint", str(out / "ckpt.pt"), "--num_samples=2", "--max_new_tokens=5",
                "--quiet"]
        main = sample_main
    elif program == "eval":
        argv = [str(out / "ckpt.pt"), "--dataset=tiny", f"--data_dir={data}", "--json", "--quiet"]
        main = eval_main
    elif program == "resume":
        argv = flags(tiny_overrides(data, out, init_from="resume", max_iters=4, eval_interval=2, eval_iters=1)) + ["--quiet"]
        main = train_main
    else:
        argv = ["compare", str(out), f"--plot={root / 'compare.png'}"]
        main = runs_main
    code, err = run_in_process(main, argv)
    return code, err, argv


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corruption=corruptions(), program=st.sampled_from(PROGRAMS))
def test_a_corrupted_file_gives_a_clean_run_or_one_line(trained_once, corruption, program):
    file, how, details = corruption
    event(f"{program} on {how} of {file}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shutil.copytree(trained_once, root / "out")
        shutil.copytree(trained_once.parent / "data", root / "data")
        corrupt(root, file, how, details)
        code, err, argv = run_program(program, root)
    event(f"exit status {code}")
    assert_exit_0_or_one_line(code, err, [file, how, repr(details)[:200], *argv])
