"""Property test (hypothesis): train.py and sample.py, given any keys with any values, exit 0 or print
one line on stderr, never a traceback.

The programs run in-process, as train.py and sample.py call them. Each example is kept short: the
machine's memory is reported as small (so a huge model or batch is refused by the memory checks
instead of allocated), training stops where the loop would begin (everything before it, from the
flags to the model, optimizer and logger, is what is tested here), and a sample stops after a
few pieces of text.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
from pathlib import Path
from unittest import mock

from hypothesis import event, given, settings
from hypothesis import strategies as st

from helpers import tiny_overrides
from model.cli import sample_main, train_main
from model.config import valid_keys

SAMPLE_DEFAULTS = {"out_dir": "out", "checkpoint": "ckpt.pt", "init_from": "gpt2", "start": "ROMEO:", "num_samples": 2,
                   "max_new_tokens": 20, "temperature": 0.8, "top_k": 200, "top_p": 0.9, "stop": "e", "seed": 1,
                   "device": "cpu", "dtype": "float32", "compile": True, "c_decode": False}
"""sample.py's flags, with a value that fits each."""
UNKNOWN_KEYS = ["n_layers", "input", "lr", "é", ""]
TRAIN_DEFAULTS = {name: field.default for name, (_, field, _) in valid_keys().items()}
SMALL_MACHINE = 64 * 2**20
"""Bytes of memory the memory checks are told the machine has, during these tests."""

text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=12)  # argv holds no NUL
values = st.one_of(
    st.sampled_from(["0", "1", "-1", "2", "3", "0.5", "-0.5", "1e308", "-1e308", "1e-320", "nan", "-nan", "inf",
                     "-inf", "99999999999999999999", "-99999999999999999999", "2**63", "9223372036854775808",
                     "True", "False", "None", "", " ", "é", "日本語", "🙂", "cpu", "cuda", "resume", "rope"]),
    st.integers(min_value=-(10**25), max_value=10**25).map(str),
    st.floats().map(repr),
    text,
)


def fitting(default) -> st.SearchStrategy[str]:
    """Values of a key's own type near its default, so that examples also get past validation."""
    if isinstance(default, bool):
        return st.sampled_from(["True", "False"])
    if isinstance(default, int):
        return st.integers(min_value=0, max_value=max(4, default)).map(str)
    if isinstance(default, float):
        return st.floats(min_value=0.0, max_value=max(1.0, default)).map(repr)
    return st.just(str(default))


@st.composite
def key_values(draw, defaults: dict) -> tuple[str, str]:
    """One of the program's own keys or an unknown one, with a fitting value or any value."""
    key = draw(st.sampled_from([*sorted(defaults), *UNKNOWN_KEYS]))
    if key in defaults and draw(st.booleans()):
        return key, draw(fitting(defaults[key]))
    return key, draw(values)


def flags(pairs: list[tuple[str, str]]) -> list[str]:
    return [f"--{key}={value}" for key, value in pairs]


def run_in_process(main, argv: list[str]) -> tuple[int, str]:
    """(exit status, stderr) of a program's main; an exception it lets out fails the test."""
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's usage errors
            code = e.code
    return code, err.getvalue()


def assert_exit_0_or_one_line(code: int, err: str, argv: list[str]) -> None:
    event(f"exit status {code}")  # --hypothesis-show-statistics shows how many examples got how far
    assert "Traceback" not in err, (argv, err)
    lines = err.strip().splitlines()
    if code == 0:
        assert all(line.startswith("warning: ") for line in lines), (argv, err)
    else:  # one error line, after any warnings about the flags themselves (a deprecated name)
        errors = [line for line in lines if not line.startswith("warning: ")]
        assert len(errors) == 1 and lines[-1].startswith("error: "), (argv, code, err)


@contextlib.contextmanager
def small_and_quick(folder: Path):
    """Run in `folder` (a relative out_dir lands there), offline, with a small machine, no training loop."""
    from model.training import memory
    from model.training.trainer import Trainer

    cwd = os.getcwd()
    os.chdir(folder)
    try:
        with mock.patch.dict(os.environ, {"WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}), \
                mock.patch.object(memory, "machine_memory", lambda device: SMALL_MACHINE), \
                mock.patch.object(Trainer, "run", lambda self: {"iter_num": self.iter_num}):
            yield
    finally:
        os.chdir(cwd)


@settings(max_examples=80, deadline=10_000)  # ms per example: generous on a busy machine
@given(st.lists(key_values(TRAIN_DEFAULTS), min_size=1, max_size=3))
def test_train_gives_exit_0_or_one_line_for_any_keys_and_values(trained_once, pairs):
    root = trained_once.parent  # holds data/ (the dataset 'tiny') and out/ (a finished run)
    base = tiny_overrides(root / "data", root / "fuzz", max_iters=2, peak_flops=-1)
    argv = flags(list(base.items()) + pairs) + ["--quiet"]
    with small_and_quick(root):
        code, err = run_in_process(train_main, argv)
    assert_exit_0_or_one_line(code, err, argv)


@settings(max_examples=80, deadline=10_000)  # ms per example: generous on a busy machine
@given(st.lists(key_values(SAMPLE_DEFAULTS), min_size=1, max_size=3))
def test_sample_gives_exit_0_or_one_line_for_any_keys_and_values(trained_once, pairs):
    from model.sampling import generate

    real = generate.generate_text

    def first_pieces(model, tok, prompts, *args, **kwargs):
        # the memory check refuses more samples than a small machine holds: never allocate them here
        assert len(prompts) <= SMALL_MACHINE // 2**12, "a batch the memory check should have refused"
        return itertools.islice(real(model, tok, prompts, *args, **kwargs), 40)

    argv = [f"--out_dir={trained_once}", "--max_new_tokens=20", "--num_samples=2", "--quiet", *flags(pairs)]
    with small_and_quick(trained_once.parent), mock.patch.object(generate, "generate_text", first_pieces):
        code, err = run_in_process(sample_main, argv)
    assert_exit_0_or_one_line(code, err, argv)
