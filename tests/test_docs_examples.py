"""Every example command in README.md and docs/ runs, as a user would paste it.

Each page's ```bash, ```sh and ```python blocks (and the unlabelled blocks of commands) run in order
in one fresh working folder that holds what a user's clone holds (train.py, sample.py, configs/,
data/prepare.py), a small `my.txt` and `mychat.jsonl`, and the runs the docs assume have been trained (`out`,
`out-shakespeare-char-cpu`, both tiny). Training and sampling get tiny step counts appended (the
last `--key=value` wins), `python -m model.serve` starts in the background on a free port for the
page's `curl` lines, and the commands that can't run here are skipped by the rules in SKIP, each
with its reason: installs (CI does them), GPUs, the network, benchmarks that take minutes.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import ROOT, shakespeare_path
from model.data.chat import conversations_jsonl

PAGES = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").glob("*.md") if p.name != "dev-log.md")]
RUNNABLE = {"bash", "sh", "python", ""}
PROGRAMS = re.compile(r"^([A-Z_]+=\S+ )*(python|torchrun|curl|printf|pip|wandb)\b")
"""How a command starts, in a block with no language (the others there are shown output)."""
INSTALL_FIRST = re.compile(r"^pip install [^&]*&&\s*")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)

SKIP = [
    (re.compile(r"^pip install"), "an install: CI installs the project in a fresh virtual environment"),
    (re.compile(r"python -m pytest"), "the test suite itself"),
    (re.compile(r"--device=cuda|--nproc_per_node=8|--nnodes|train\.py configs/gpt[23]|out-gpt2\b"), "needs NVIDIA GPUs"),
    (re.compile(r"--dataset=(tinystories|openwebtext|fineweb|wiki)\b|(--init_from=|sample\.py |model\.\w+ )gpt2\b|"
                r"wandb sync|wandb_project=|https?://(?!127\.0\.0\.1)"), "needs the network"),
    (re.compile(r"python -m model\.bench"), "a benchmark that runs for minutes; BENCHMARKS.md has its output"),
    (re.compile(r"python -m model\.sweep|sweep-shakespeare|\bwandb (sweep|agent)\b"),
     "an IsoFLOP sweep trains for most of an hour (tests/test_sweep.py runs tiny ones), or needs W&B's servers"),
    (re.compile(r"--data_files=|\.\.\.(\s|$)"), "a sketch with the user's own files or flags"),
    (re.compile(r"^from openai import"), "needs the openai package, which tinygpt does not depend on"),
]
"""(pattern, reason): a command matching a pattern is not run here."""

TINY_TRAINING = "--max_iters=2 --eval_interval=2 --eval_iters=1 --log_interval=1 --compile=False --overwrite=True"
"""Appended to a new run: tiny, and free to replace the run the workspace already holds in its out_dir
(a user's first run there would find the folder empty)."""
TINY_RESUME = "--max_iters=4 --eval_interval=2 --eval_iters=1 --log_interval=1 --compile=False"


@dataclass
class Example:
    page: str
    line: int
    language: str
    text: str


def examples(page: Path) -> list[Example]:
    """The page's runnable blocks: a python block whole, a shell block one command at a time."""
    source = page.read_text(encoding="utf-8")
    found = []
    for match in FENCE.finditer(source):
        language, body = match.group(1), match.group(2)
        if language not in RUNNABLE:
            continue
        first = source.count("\n", 0, match.start()) + 2
        if language == "python":
            found.append(Example(page.name, first, "python", body))
            continue
        for offset, command in shell_commands(body):
            if language or PROGRAMS.match(command):
                found.append(Example(page.name, first + offset, "bash", INSTALL_FIRST.sub("", command)))
    return found


def shell_commands(body: str) -> list[tuple[int, str]]:
    """Commands of a shell block with their line offsets: continuation lines joined, a quoted
    argument spanning lines kept whole, comment lines dropped."""
    commands, current, start = [], "", 0
    for offset, line in enumerate(body.splitlines()):
        if not current:
            start = offset
            if not line.strip() or line.lstrip().startswith("#"):
                continue
        current += line + "\n"
        if line.endswith("\\") or current.count('"') % 2:
            continue
        commands.append((start, current.strip()))
        current = ""
    return commands


def skip_reason(command: str) -> str | None:
    """Why a command can't run here (the rules in SKIP, read on its code, not its comments), or None."""
    code = " ".join(split_comment(line)[0] for line in command.splitlines())
    return next((reason for pattern, reason in SKIP if pattern.search(code)), None)


def tiny(command: str) -> str:
    """The command with tiny step counts appended to each train.py and sample.py call in it."""
    parts = []
    for part in re.split(r"(\s&&\s)", command):
        code, comment = split_comment(part)
        if re.search(r"\btrain\.py\b", code) and "--help" not in code:
            code += " " + (TINY_RESUME if "--init_from=resume" in code else TINY_TRAINING)
        elif re.search(r"\bsample\.py\b", code):
            code += " --max_new_tokens=8"
        parts.append(code + comment)
    return "".join(parts)


def split_comment(part: str) -> tuple[str, str]:
    """(code, '  # comment') of one command, the comment being a # outside quotes after a space."""
    quote = None
    for i, char in enumerate(part):
        if char in "'\"" and quote in (None, char):
            quote = None if quote else char
        elif char == "#" and quote is None and (i == 0 or part[i - 1].isspace()):
            return part[:i].rstrip(), "  " + part[i:]
    return part, ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Workspace:
    """A fresh folder laid out like a user's clone, where one page's examples run in order."""

    def __init__(self, folder: Path, trained_run: Path):
        self.folder = folder
        for name in ("train.py", "sample.py", "configs"):
            (folder / name).symlink_to(ROOT / name)
        (folder / "data").mkdir()
        (folder / "data" / "prepare.py").symlink_to(ROOT / "data" / "prepare.py")
        (folder / "my.txt").write_text(Path(shakespeare_path()).read_text(encoding="utf-8")[:60_000], encoding="utf-8")
        (folder / "mychat.jsonl").write_text(conversations_jsonl(
            [[{"role": "user", "content": f"Say {word}"}, {"role": "assistant", "content": word}]
             for word in ("yes", "no", "maybe", "never", "always", "soon", "later", "now", "then", "here")]),
            encoding="utf-8")
        for name in ("out", "out-shakespeare-char-cpu"):
            shutil.copytree(trained_run, folder / name)
        save_random_gpt2(folder / "path" / "to" / "saved_gpt2")
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        self.servers: list[subprocess.Popen] = []
        self.port: int | None = None

    def run(self, example: Example) -> str | None:
        """Run one example; its failure as a message, or None."""
        if example.language == "python":
            script = self.folder / f"example_{example.line}.py"
            script.write_text(example.text, encoding="utf-8")
            return self.check([sys.executable, str(script)], example)
        command = example.text
        if self.port is not None:
            command = command.replace("127.0.0.1:8000", f"127.0.0.1:{self.port}")
        if re.search(r"python -m model\.serve\b", command):
            return self.serve(command, example)
        return self.check(["bash", "-c", tiny(command).replace("python ", f"{sys.executable} ")], example)

    def check(self, argv: list[str], example: Example) -> str | None:
        done = subprocess.run(argv, cwd=self.folder, env=self.env, capture_output=True, text=True, timeout=600)
        if done.returncode == 0:
            return None
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-8:])
        return f"{example.page}:{example.line}: exit {done.returncode}: {example.text}\n{tail}"

    def serve(self, command: str, example: Example) -> str | None:
        self.port = free_port()
        code, _ = split_comment(command)
        argv = code.replace("python ", f"{sys.executable} ", 1) + f" --port={self.port}"
        server = subprocess.Popen(["bash", "-c", "exec " + argv], cwd=self.folder, env=self.env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.servers.append(server)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if server.poll() is not None:
                return f"{example.page}:{example.line}: the server exited {server.returncode}: {server.stdout.read()[-800:]}"
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2)
                return None
            except OSError:
                time.sleep(0.3)
        return f"{example.page}:{example.line}: the server did not answer within 120 s"

    def close(self) -> None:
        for server in self.servers:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()


def save_random_gpt2(folder: Path) -> None:
    """A small random GPT-2 in transformers' format, standing for a downloaded one."""
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=32, n_positions=64)).save_pretrained(folder)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A tiny run of the quick-start config, standing for what the docs assume was trained."""
    folder = tmp_path_factory.mktemp("docs-trained")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(ROOT / "train.py"), str(ROOT / "configs" / "shakespeare_char_cpu.toml"),
                    "--out_dir=run", "--data_dir=data", *TINY_TRAINING.split(), "--quiet"],
                   cwd=folder, env=env, check=True, capture_output=True)
    return folder / "run"


@pytest.mark.slow
@pytest.mark.needs_gpt2
@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_example_on_the_page_runs(page: Path, tmp_path: Path, trained_run: Path) -> None:
    runnable = [e for e in examples(page) if skip_reason(e.text) is None]
    if not runnable:
        pytest.skip(f"{page.name} has no example that runs here")
    workspace = Workspace(tmp_path, trained_run)
    try:
        failures = [failure for example in runnable if (failure := workspace.run(example))]
    finally:
        workspace.close()
    assert not failures, "\n\n".join(failures)


def test_commands_are_split_and_made_tiny_as_a_user_would_paste_them() -> None:
    body = ('# a comment\npython train.py --max_iters=500   # ten minutes\n'
            'python sample.py --start="ROMEO:\nBut soft" \\\n    --seed=7\n'
            "python sample.py --stop=$'\\n\\n' --start=\"a # b\"\n")
    commands = shell_commands(body)
    assert [offset for offset, _ in commands] == [1, 2, 5]
    assert tiny(commands[0][1]) == f"python train.py --max_iters=500 {TINY_TRAINING}  # ten minutes"
    assert tiny(commands[1][1]).endswith("--seed=7 --max_new_tokens=8")
    assert tiny(commands[2][1]) == "python sample.py --stop=$'\\n\\n' --start=\"a # b\" --max_new_tokens=8"
    assert skip_reason("pip install -e .") and skip_reason("torchrun --nproc_per_node=8 train.py")
    assert skip_reason("torchrun --nproc_per_node=2 train.py --device=cpu   # GPUs: --device=cuda") is None
    assert skip_reason("python train.py configs/shakespeare_char_cpu.toml") is None
    assert INSTALL_FIRST.sub("", "pip install -e . && python train.py") == "python train.py"
