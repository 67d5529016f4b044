"""Speed on a busy CPU: OpenMP's default thread settings against this project's (model/threads.py).

    python -m model.bench load [--busy=N] [--max_iters=N] [--new_tokens=128] [--repeats=1] [--model=gpt2]

Measures the README's quick-start training (configs/shakespeare_char_cpu.toml, --max_iters shortens
it) and greedy decoding of one sample of GPT-2 124M (random weights, no download; the C row-dot
kernels, as sample.py uses them), each in a fresh process, under two settings:
  - default: OpenMP's own defaults (TINYGPT_THREAD_DEFAULTS=0), what every run used before;
  - chosen:  what the programs choose at start-up from the load they see (model/threads.py:
             passive waiting when other programs keep the cores busy, OpenMP's defaults otherwise);
first on the machine as it is ("idle"), then beside --busy processes that spin in pure Python
(default: one per core), like a browser and a build on a laptop. The two settings alternate, so a
change in background load hits both alike; every number is the best of --repeats. Training reports
its training time (the trainer's own clock) and the full-validation loss, which must not depend on
the setting; decoding reports tokens/s.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from model.cli import OneLineArgumentParser, guarded
from model.errors import TinyGPTError
from model.threads import MEASURED, SWITCH, USER_WAIT_SETTINGS

ROOT = Path(__file__).resolve().parent.parent.parent
QUICK_START = ROOT / "configs" / "shakespeare_char_cpu.toml"
SETTINGS = {
    "default": {SWITCH: "0"},  # OpenMP's defaults: idle threads spin
    "chosen": {},  # the entry points' own choice (model/threads.py)
}
"""The settings every run compares; --also adds others (e.g. GOMP_SPINCOUNT=10000, OMP_NUM_THREADS=1)."""
SHAPES = {
    "gpt2": {"n_layer": 12, "n_head": 12, "n_embd": 768, "block_size": 1024, "vocab_size": 50257},  # GPT-2 124M
    "tiny": {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 64, "vocab_size": 65},  # for the test
}
BUSY_LOOP = "while True: pass"
"""What each busy process runs: one core's worth of pure-Python work that never waits."""


def child_env(setting: dict[str, str]) -> dict[str, str]:
    """The environment of a measured process: this one's, without any thread setting of the user's
    (the comparison is between the settings alone), plus the setting's variables."""
    env = {k: v for k, v in os.environ.items() if k not in (*USER_WAIT_SETTINGS, SWITCH, MEASURED, "OMP_NUM_THREADS")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return {**env, **setting}


def parse_setting(text: str) -> dict[str, str]:
    """--also's NAME=VALUE[,NAME=VALUE...] as environment variables."""
    pairs = [item.split("=", 1) for item in text.split(",")]
    if not all(len(pair) == 2 and pair[0] for pair in pairs):
        raise TinyGPTError(f"--also takes NAME=VALUE[,NAME=VALUE...] (environment variables), got '{text}'")
    return dict(pairs)


@contextlib.contextmanager
def busy_processes(count: int) -> Iterator[None]:
    """`count` processes spinning in pure Python for as long as the `with` lasts."""
    procs = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(count)]
    try:
        time.sleep(0.5)  # let them get going
        yield
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()


def run_child(args: list[str], name: str, setting: dict[str, str]) -> dict:
    """Run `python -m model.bench load --child ...` under `setting`; its last stdout line is a JSON result."""
    command = [sys.executable, "-m", "model.bench", "load", *args]
    result = subprocess.run(command, env=child_env(setting), capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        raise TinyGPTError(f"{' '.join(args[:2])} under the {name} setting failed: "
                           f"{(result.stderr.strip().splitlines() or ['no output'])[-1]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def train_child(max_iters: int | None, data_dir: str, out_dir: str) -> dict:
    """Train the quick start in this process and report its training time and full-validation loss."""
    from model.cli import train_main

    flags = [f"--data_dir={data_dir}", f"--out_dir={out_dir}", "--overwrite=True"] + ([f"--max_iters={max_iters}"] if max_iters else [])
    printed = captured_stdout(lambda: train_main([str(QUICK_START), *flags]))
    trained = re.search(r"trained \d+ iterations in ([\d.]+)s", printed)
    loss = re.search(r"full-val loss ([\d.]+)", printed)
    threads = re.search(r"threads: [^\n]*", printed)
    if not (trained and loss and threads):
        raise TinyGPTError(f"the training printed no summary: {printed[-300:]}")
    return {"seconds": float(trained.group(1)), "full_val_loss": float(loss.group(1)), "threads": threads.group(0)}


def captured_stdout(run) -> str:
    """What `run()` prints to stdout (the trainer prints its summary lines there); a failure exits."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        status = run()
    if status:
        raise SystemExit(status)
    return buffer.getvalue()


def decode_child(shape: str, new_tokens: int) -> dict:
    """Greedy decoding of one sample in this process, as sample.py does it; tokens/s after a warm-up."""
    import torch

    from model.config import GPTConfig
    from model.nn.gpt import GPT
    from model.sampling.generate import generate, prepare_for_sampling
    from model.threads import describe_threads

    torch.manual_seed(0)
    model = prepare_for_sampling(GPT(GPTConfig(**SHAPES[shape])))
    prompt = torch.randint(0, SHAPES[shape]["vocab_size"], (1, 16))
    for _ in generate(model, prompt, 4, temperature=0.0):  # warm-up: builds the kernels, touches the weights
        pass
    t = time.perf_counter()
    for _ in generate(model, prompt, new_tokens, temperature=0.0):
        pass
    return {"tokens_per_sec": new_tokens / (time.perf_counter() - t), "threads": describe_threads(None)}


def measure(args, settings: dict[str, dict[str, str]], data_dir: str, out_dir: str) -> dict[str, dict[str, dict]]:
    """{setting: {"train": best result, "decode": best result}} on the machine as it is now."""
    best: dict[str, dict[str, dict]] = {s: {} for s in settings}
    train_args = ["--child", "train", f"--data_dir={data_dir}", f"--out_dir={out_dir}"]
    if args.max_iters:
        train_args.append(f"--max_iters={args.max_iters}")
    decode_args = ["--child", "decode", f"--model={args.model}", f"--new_tokens={args.new_tokens}"]
    for _ in range(args.repeats):
        for setting, env in settings.items():  # alternate: a change in background load hits all alike
            trained = run_child(train_args, setting, env)
            if "train" not in best[setting] or trained["seconds"] < best[setting]["train"]["seconds"]:
                best[setting]["train"] = trained
            decoded = run_child(decode_args, setting, env)
            if "decode" not in best[setting] or decoded["tokens_per_sec"] > best[setting]["decode"]["tokens_per_sec"]:
                best[setting]["decode"] = decoded
    return best


def table(results: dict[str, dict[str, dict[str, dict]]]) -> str:
    """One row per machine state and setting; speed-up is over the default setting in the same state
    (above 1: faster)."""
    width = max(len(setting) for measured in results.values() for setting in measured) + 2
    lines = [f"{'state':<10}{'setting':<{width}}{'training (s)':>14}{'speed-up':>10}{'decoding (tok/s)':>18}"
             f"{'speed-up':>10}{'full-val loss':>15}"]
    for state, measured in results.items():
        default = measured["default"]
        for setting, best in measured.items():
            seconds, tps = best["train"]["seconds"], best["decode"]["tokens_per_sec"]
            lines.append(f"{state:<10}{setting:<{width}}{seconds:>14.1f}{default['train']['seconds'] / seconds:>9.2f}x"
                         f"{tps:>18.1f}{tps / default['decode']['tokens_per_sec']:>9.2f}x"
                         f"{best['train']['full_val_loss']:>15.4f}")
    return "\n".join(lines)


@guarded
def main(argv: list[str] | None = None) -> int:
    parser = OneLineArgumentParser(prog="python -m model.bench load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--busy", type=int, default=os.cpu_count() or 1,
                        help="busy processes beside the measured one (default: one per core)")
    parser.add_argument("--max_iters", type=int, default=None, help="shorten the quick-start training")
    parser.add_argument("--new_tokens", type=int, default=128, help="tokens decoded per measurement")
    parser.add_argument("--model", default="gpt2", choices=list(SHAPES), help="the decoded model's shape")
    parser.add_argument("--repeats", type=int, default=1, help="measurements per setting and state; the best counts")
    parser.add_argument("--also", action="append", default=[], metavar="NAME=VALUE[,...]",
                        help="another setting to compare, as environment variables (repeatable); the programs "
                        f"add their wait policy unless it sets one (or {SWITCH}=0)")
    parser.add_argument("--child", choices=["train", "decode"], default=None, help=argparse.SUPPRESS)  # the benchmark's own processes
    parser.add_argument("--data_dir", default=None, help=argparse.SUPPRESS)  # the benchmark's own processes
    parser.add_argument("--out_dir", default=None, help=argparse.SUPPRESS)  # the benchmark's own processes
    args = parser.parse_args(argv)
    if args.child == "train":
        print(json.dumps(train_child(args.max_iters, args.data_dir, args.out_dir)))
        return 0
    if args.child == "decode":
        print(json.dumps(decode_child(args.model, args.new_tokens)))
        return 0
    if args.busy < 0 or args.repeats < 1 or args.new_tokens < 1 or (args.max_iters is not None and args.max_iters < 1):
        raise TinyGPTError("--busy must be >= 0, and --repeats, --new_tokens and --max_iters >= 1")

    from model.data.dataset import prepare

    settings = {"default": SETTINGS["default"], "chosen": SETTINGS["chosen"]}
    settings.update({text: parse_setting(text) for text in args.also})

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="tinygpt-bench-load-") as tmp:
        prepare("shakespeare_char", Path(tmp) / "data", quiet=True)  # once, not in any measured run
        data_dir, out_dir = str(Path(tmp) / "data"), str(Path(tmp) / "out")
        results = {"idle": measure(args, settings, data_dir, out_dir)}
        with busy_processes(args.busy):
            results[f"{args.busy} busy"] = measure(args, settings, data_dir, out_dir)
    iters = f"--max_iters={args.max_iters}" if args.max_iters else "as configured"
    print(f"{os.cpu_count()} CPUs, load average at the start {load_before:.2f}; "
          f"default: OpenMP's own ({SWITCH}=0), chosen: the programs' own; best of {args.repeats}")
    print(f"training: {QUICK_START.relative_to(ROOT)} {iters}, seconds of training; decoding: {args.model} shape, "
          f"random weights, 1 sample, {args.new_tokens} new tokens, greedy")
    for state, measured in results.items():
        for setting in settings:
            print(f"{state}, {setting}: {measured[setting]['train']['threads']}")
            print(f"{state}, {setting}, decoding: {measured[setting]['decode']['threads']}")
    print(table(results))
    return 0


