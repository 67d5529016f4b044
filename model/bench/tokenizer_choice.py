"""Which tokenizer for a tiny model? Characters, learned byte-level BPEs of several sizes and GPT-2's,
side by side on one corpus.

    python -m model.bench tokenizers --input=FILE [--vocab_sizes=257,512,1024,4096] [--budget=60]
        [--config=configs/shakespeare_char_cpu.toml] [--plot=docs/images/tokenizers.png] [--perf_mb=5]
        [--clock=wall|process] [--threads=N] [--speed_only]

For each tokenizer: bytes per token on the validation split (the last 10%, as prepare.py splits),
the time to build it (learning the merges for a BPE, from the training split only), its encoding
throughput over the whole corpus, and then the same small model (--config's) trained for the same
wall-clock budget on data prepared with it, scored by its full-validation bits per byte: the number
that compares across tokenizers. Last, the speed checks: training a 4,096-token BPE on --perf_mb MB
of text (the corpus repeated), and encoding that text with it and with tiktoken's GPT-2 encoder, one
thread each, best of three, in the same run. On a machine shared with other work, --clock=process
counts the budget in this process's CPU seconds instead of wall-clock seconds, so every tokenizer
gets the same amount of computation whatever the others on the machine do (and --threads=1 keeps
PyTorch's threads from spin-waiting for each other there).
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from model.cli import OneLineArgumentParser, guarded

BYTE_LEVEL_BPE_SMALLEST = 257
"""256 single bytes and the end-of-text token: a byte-level BPE with no merges."""


@dataclass
class Row:
    name: str
    vocab: int
    build_s: float
    encode_mb_s: float
    bytes_per_token: float
    iters: int = 0
    full_val_loss: float = float("nan")
    full_val_bpb: float = float("nan")


def best_of(runs: int, fn) -> float:
    """The shortest wall time of `runs` calls of fn (the one least disturbed by other processes)."""
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def build(kind: str, text: str, n_train: int, vocab_size: int | None):
    from model.data import tokenizer as tokenizers

    t = time.perf_counter()
    # as prepare.py: characters from the whole corpus, BPE merges from the training split only
    tok = tokenizers.make(kind, text[:n_train] if kind == "bpe" else text, vocab_size)
    return tok, time.perf_counter() - t


CLOCKS = {"wall": time.perf_counter, "process": time.process_time}


def train_for(budget: float, config_path: str, data_dir: Path, dataset: str, out_dir: Path,
              clock=time.perf_counter) -> tuple[int, float, float]:
    """Train --config's model on `dataset` for `budget` seconds (constant learning rate after the
    warmup, since the number of steps isn't known in advance); returns (iterations, full-val loss, bpb)."""
    from model.config import load_config
    from model.training.evaluate import split_bpb
    from model.training.optim import learning_rate
    from model.training.trainer import Trainer

    overrides = {"dataset": dataset, "data_dir": str(data_dir), "out_dir": str(out_dir), "decay_lr": "False",
                 "device": "cpu", "wandb_log": "False"}
    model_config, train_config = load_config(config_path, overrides)
    trainer = Trainer(model_config, train_config, quiet=True)
    start, iters = clock(), 0
    while clock() - start < budget:
        trainer.train_step(learning_rate(iters, train_config))
        iters += 1
    loss = trainer.full_val_loss()
    return iters, loss, split_bpb(loss, trainer.dataset, "val")


def speed_checks(text: str, megabytes: float) -> list[str]:
    """BPE training time on `megabytes` of text, and encoding throughput against tiktoken's GPT-2."""
    from model.data.tokenizer import BPETokenizer, TiktokenTokenizer

    data = text * math.ceil(megabytes * 1e6 / len(text.encode("utf-8")))
    size = len(data.encode("utf-8"))
    trained = []
    seconds = best_of(3, lambda: trained.append(BPETokenizer.train(data, 4096)))
    ours = trained[-1]
    lines = [f"load average {os.getloadavg()[0]:.2f}; best of three runs each",
             f"training a 4,096-token BPE on {size / 1e6:.1f} MB: {seconds:.2f} s"]
    gpt2 = TiktokenTokenizer("gpt2")
    for name, tok in (("learned BPE 4096 (tiktoken)", ours), ("tiktoken gpt2", gpt2)):
        n_tokens = len(tok.encode(data))
        seconds = best_of(3, lambda: tok.encode(data))
        lines.append(f"encoding {size / 1e6:.1f} MB with {name:<28} {size / seconds / 1e6:6.2f} MB/s "
                     f"{n_tokens / seconds:>12,.0f} tokens/s")
    return lines


def plot(rows: list[Row], path: str | Path) -> Path:
    from matplotlib.figure import Figure

    from model.training.plots import save_figure

    fig = Figure(figsize=(11, 4), dpi=100, layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, key, label in ((axes[0], "bytes_per_token", "bytes per token (validation split)"),
                           (axes[1], "full_val_bpb", "full-validation bits per byte")):
        ax.plot([r.vocab for r in rows], [getattr(r, key) for r in rows], "o-")
        for r in rows:
            ax.annotate(r.name, (r.vocab, getattr(r, key)), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("vocabulary size (tokens)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle("tokenizers for a tiny model: compression, and bits per byte after the same training time")
    return save_figure(fig, path)


def format_rows(rows: list[Row], budget: float) -> str:
    header = (f"| tokenizer | vocab | build (s) | encode (MB/s) | bytes/token | iters in {budget:g} s "
              "| full-val loss | full-val bpb |\n|---|---:|---:|---:|---:|---:|---:|---:|")
    body = [f"| {r.name} | {r.vocab:,} | {r.build_s:.2f} | {r.encode_mb_s:.2f} | {r.bytes_per_token:.3f} | {r.iters:,} "
            f"| {r.full_val_loss:.4f} | {r.full_val_bpb:.4f} |" for r in rows]
    return "\n".join([header, *body])


@guarded
def main(argv: list[str] | None = None) -> int:
    parser = OneLineArgumentParser(prog="python -m model.bench tokenizers", description=__doc__.splitlines()[0])
    parser.add_argument("--input", default=None,
                        help="UTF-8 text file (default: Tiny Shakespeare, as data/prepare.py finds it: "
                             "$TINYSHAKESPEARE_PATH, else the copy shipped with tinygpt)")
    parser.add_argument("--vocab_sizes", default=f"{BYTE_LEVEL_BPE_SMALLEST},512,1024,4096",
                        help="comma-separated sizes of the BPEs to learn")
    parser.add_argument("--budget", type=float, default=60.0, help="training seconds per tokenizer")
    parser.add_argument("--clock", default="wall", choices=list(CLOCKS),
                        help="what the budget counts: wall-clock seconds, or this process's CPU seconds")
    parser.add_argument("--config", default="configs/shakespeare_char_cpu.toml", help="the model and its training")
    parser.add_argument("--plot", default="tokenizers.png", help="the PNG to write")
    parser.add_argument("--perf_mb", type=float, default=5.0, help="megabytes for the speed checks (0: skip them)")
    parser.add_argument("--no_gpt2", action="store_true", help="leave out GPT-2's tokenizer (needs tiktoken's files)")
    parser.add_argument("--threads", type=int, default=0, help="PyTorch threads (0: PyTorch's default)")
    parser.add_argument("--speed_only", action="store_true", help="only the speed checks (training and encoding time)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)

    from model.data import dataset as data
    from model.data.tokenizer import token_byte_lengths

    corpus = args.input or data.resolve_input("shakespeare_char", None, None, Path("."))
    text = data.read_corpus(corpus)
    if args.speed_only:
        print("\n".join(speed_checks(text, args.perf_mb)))
        return 0
    n_train = int(len(text) * data.TRAIN_FRACTION)
    size = len(text.encode("utf-8"))
    specs = [("char", "char", None)] + [(f"bpe {v}", "bpe", int(v)) for v in args.vocab_sizes.split(",")]
    if not args.no_gpt2:
        specs.append(("gpt2", "gpt2", None))
    print(f"{corpus}: {size:,} bytes; {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; "
          f"{args.budget:g} s ({args.clock} clock) of training per tokenizer with {args.config}, "
          f"{args.threads or 'default'} torch threads")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, kind, vocab_size in specs:
            tok, build_s = build(kind, text, n_train, vocab_size)
            val_ids = tok.encode(text[n_train:])
            encode_s = best_of(1, lambda: tok.encode(text))
            row = Row(name, tok.vocab_size, build_s, size / encode_s / 1e6,
                      int(token_byte_lengths(tok)[val_ids].sum()) / len(val_ids))
            dataset = name.replace(" ", "_")
            data.prepare(dataset, Path(tmp) / "data", str(corpus), tokenizer=kind, quiet=True, vocab_size=vocab_size)
            row.iters, row.full_val_loss, row.full_val_bpb = train_for(
                args.budget, args.config, Path(tmp) / "data", dataset, Path(tmp) / f"out-{dataset}", CLOCKS[args.clock])
            print(f"{name:>9}: vocab {row.vocab:>6,}, {row.bytes_per_token:.3f} bytes/token, built in {build_s:.2f} s, "
                  f"encodes {row.encode_mb_s:.2f} MB/s; {row.iters} iterations, full-val loss {row.full_val_loss:.4f}, "
                  f"bpb {row.full_val_bpb:.4f}", flush=True)
            rows.append(row)
    print()
    print(format_rows(rows, args.budget))
    print(f"\nwrote {plot(rows, args.plot)}")
    if args.perf_mb > 0:
        print()
        print("\n".join(speed_checks(text, args.perf_mb)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
