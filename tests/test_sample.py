import subprocess
import sys

import pytest

from helpers import ROOT, tiny_overrides
from model.config import load_config
from model.training.trainer import train

pytestmark = pytest.mark.slow  # every test runs sample.py in a subprocess


@pytest.fixture
def trained(char_data_dir, tmp_path):
    out = tmp_path / "out"
    train(*load_config(None, tiny_overrides(char_data_dir, out, max_iters=10)), quiet=True)
    return out


def sample(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "sample.py"), *args], capture_output=True, text=True, cwd=ROOT)


def test_sample_prints_requested_samples_and_repeats_with_seed(trained):
    args = [f"--out_dir={trained}", "--start=ROMEO:", "--num_samples=3", "--max_new_tokens=40", "--seed=7"]
    first = sample(*args)
    assert first.returncode == 0, first.stderr
    samples = first.stdout.split("---------------\n")
    assert len(samples) == 4 and samples[-1] == ""
    for text in samples[:3]:
        assert text.startswith("ROMEO:") and len(text) == len("ROMEO:") + 40 + 1
    assert len(set(samples[:3])) > 1  # sampled, not greedy
    assert sample(*args).stdout == first.stdout
    assert sample(*args[:-1], "--seed=8").stdout != first.stdout


def test_greedy_sampling_is_deterministic_across_seeds(trained):
    a = sample(f"--out_dir={trained}", "--temperature=0", "--num_samples=1", "--max_new_tokens=20", "--seed=1")
    b = sample(f"--out_dir={trained}", "--temperature=0", "--num_samples=1", "--max_new_tokens=20", "--seed=2")
    assert a.returncode == 0 and a.stdout == b.stdout


def test_prompt_from_file_and_bad_prompt(trained, tmp_path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("KING:")
    ok = sample(f"--out_dir={trained}", f"--start=FILE:{prompt}", "--num_samples=1", "--max_new_tokens=5")
    assert ok.returncode == 0 and ok.stdout.startswith("KING:")
    bad = sample(f"--out_dir={trained}", "--start=日本", "--num_samples=1")
    assert bad.returncode == 1
    assert bad.stderr.count("\n") == 1 and "outside this character-level vocabulary" in bad.stderr


def test_missing_checkpoint_is_one_line(tmp_path):
    result = sample(f"--out_dir={tmp_path}")
    assert result.returncode == 1 and result.stderr.startswith("error: no checkpoint in")
    assert "Traceback" not in result.stderr
