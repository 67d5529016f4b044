"""How fast `python -m model.inspect` answers: every view on the quick-start model's shape over a
256-token text, and head ablation of GPT-2 124M (144 heads) over 4,096 tokens.

    python -m model.bench inspect [--text_tokens=256] [--ablate_tokens=4096] [--repeats=3] [--threads=N]
                                  [--skip_gpt2]

Both models hold random weights (no download, no training: a view's cost depends on the shapes,
not the values): the quick-start model is configs/shakespeare_char_cpu.toml's network with a context
of --text_tokens (its own context is 64) and a 65-character vocabulary; GPT-2 124M is
configs/gpt2.toml's. Each view is timed on a loaded model, from the text's token ids to its result
(the dict `--json` prints), best of --repeats; ablate is timed once.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from model.config import load_config
from model.data.dataset import eval_windows
from model.data.tokenizer import CharTokenizer
from model.evaluation import inspect as analyses
from model.nn.gpt import GPT

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
"""Tiny Shakespeare's 65 characters: the quick-start model's vocabulary."""


def random_model(config_name: str, **overrides) -> GPT:
    model_config, _ = load_config(CONFIGS / config_name, overrides)
    torch.manual_seed(0)
    return GPT(model_config).eval()


def best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def views(model: GPT, tok, ids: list[int]) -> dict:
    return {
        "step": lambda: analyses.attention_step(model, tok, ids, 0, 0, -1),
        "lens": lambda: analyses.logit_lens(model, tok, ids),
        "heads": lambda: analyses.head_scores(model, tok, ids),
        "embeddings": lambda: (analyses.nearest_tokens(model, tok, ids[-1]), analyses.embedding_map(model, tok),
                               analyses.residual_trajectory(model, tok, ids)),
        "params": lambda: analyses.head_parameters(model, 0),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.bench inspect", description=__doc__.split("\n\n")[0])
    parser.add_argument("--text_tokens", type=int, default=256)
    parser.add_argument("--ablate_tokens", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: PyTorch's choice)")
    parser.add_argument("--skip_gpt2", action="store_true", help="leave out GPT-2 124M's ablation")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    tok = CharTokenizer(CHARS)
    model = random_model("shakespeare_char_cpu.toml", block_size=args.text_tokens, vocab_size=len(CHARS))
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(len(CHARS), (args.text_tokens,), generator=generator).tolist()
    print(f"quick-start model ({model.num_params() / 1e6:.2f}M parameters), a {len(ids)}-token text, best of "
          f"{args.repeats}:")
    for name, fn in views(model, tok, ids).items():
        print(f"  {name:<12}{best_time(fn, args.repeats):8.3f} s")
    data = np.array(torch.randint(len(CHARS), (args.ablate_tokens + 1,), generator=generator).tolist(), dtype=np.int64)
    x, y = eval_windows(data, model.config.block_size)
    seconds = best_time(lambda: analyses.ablate(model, x, y), 1)
    print(f"  {'ablate':<12}{seconds:8.3f} s   ({model.config.n_layer * model.config.n_head} heads over "
          f"{args.ablate_tokens:,} tokens)")

    if not args.skip_gpt2:
        gpt2 = random_model("gpt2.toml", vocab_size=50257, dropout=0.0)
        vocab = gpt2.config.vocab_size
        data = np.array(torch.randint(vocab, (args.ablate_tokens + 1,), generator=generator).tolist(), dtype=np.int64)
        x, y = eval_windows(data, gpt2.config.block_size)
        heads = gpt2.config.n_layer * gpt2.config.n_head
        start = time.perf_counter()
        result = analyses.ablate(gpt2, x, y)
        seconds = time.perf_counter() - start
        print(f"GPT-2 124M ablate: {heads} heads over {args.ablate_tokens:,} tokens ({len(x)} windows of "
              f"{gpt2.config.block_size}) in {seconds:.1f} s (baseline loss {result['baseline_loss']:.3f})")
    return 0
