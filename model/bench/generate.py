"""Sampling speed: our cached decoding against transformers' generate(), on GPT-2 124M's shape.

    python -m model.bench generate [--new_tokens=256] [--prompt_tokens=16] [--repeats=5] [--threads=N]

Both models hold the same random weights (GPT-2 small's architecture; no download), decode greedily
at batch 1 with the same thread count, and are timed end to end (prefill + new tokens), best of
--repeats, alternating so that background load hits both alike. Batch-1 decoding reads every weight
once per token, so the ceiling is the memory read bandwidth this process measures (summing a 512 MB
tensor, after every round; the best of them) divided by the weight bytes per token; the table shows the fraction of that ceiling reached.
It also checks that greedy tokens are identical with and without our KV cache, and equal to
transformers'.

Rows: "tinygpt fp32" and "tinygpt bf16" decode with the C row-dot kernels (model/kernels/decode.py,
what sample.py uses on a CPU; building them is reported, not timed); "tinygpt fp32 torch" keeps
PyTorch's products (column-major weights, `sample.py --c_decode=False`, model/sampling/generate.py
prepare_for_sampling).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from model.sampling.generate import generate, prepare_for_sampling
from model.nn.gpt import GPT
from model.kernels.decode import huge_page_buffer


def read_bandwidth(megabytes: int = 512, repeats: int = 5) -> float:
    """Bytes per second read by summing a large tensor (PyTorch's vectorised, multi-threaded sum), best
    of repeats, from the same 2 MB pages the row-dot kernels read their weights from (where the OS has
    them): the rate at which this process can stream memory it only reads, as decoding does."""
    n = megabytes * 2**20 // 4
    data = huge_page_buffer(4 * n)
    data = torch.empty(n) if data is None else data.view(torch.float32)
    data.fill_(1.0)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - t)
    return n * 4 / best


def weight_bytes_per_token(model: GPT) -> int:
    """Bytes of parameters one decoding step reads: all of them but the position table (one row)."""
    return sum(p.numel() * p.element_size() for p in model.parameters()) - model.transformer.wpe.weight.nbytes


def ours(model: GPT, prompt: torch.Tensor, new_tokens: int, use_cache: bool = True) -> list[int]:
    return torch.cat(list(generate(model, prompt, new_tokens, temperature=0.0, use_cache=use_cache))).tolist()


def theirs(hf_model, prompt: torch.Tensor, new_tokens: int) -> list[int]:
    out = hf_model.generate(
        prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, use_cache=True,
        pad_token_id=0, attention_mask=torch.ones_like(prompt),
    )
    return out[0, prompt.size(1):].tolist()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.bench generate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--new_tokens", type=int, default=256)
    parser.add_argument("--prompt_tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no_check", action="store_true", help="skip the (slow) greedy no-cache comparison")
    args = parser.parse_args(argv)

    import transformers
    from transformers import GPT2Config, GPT2LMHeadModel

    from model import huggingface as hf

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    hf_model = GPT2LMHeadModel(GPT2Config()).eval()  # GPT-2 124M, random weights

    def copy_of_theirs() -> GPT:
        return hf.gpt_from_hf(hf_model.config.to_dict(), hf_model.state_dict())

    t = time.perf_counter()
    model = prepare_for_sampling(copy_of_theirs())
    build_time = time.perf_counter() - t
    model_colmajor = prepare_for_sampling(copy_of_theirs(), c_decode=False)
    model_bf16 = prepare_for_sampling(copy_of_theirs(), torch.bfloat16)
    prompt = torch.randint(0, 50257, (1, args.prompt_tokens))

    runs = {
        "tinygpt fp32": lambda: ours(model, prompt, args.new_tokens),
        "transformers fp32": lambda: theirs(hf_model, prompt, args.new_tokens),
        "tinygpt bf16": lambda: ours(model_bf16, prompt, args.new_tokens),
        "tinygpt fp32 torch": lambda: ours(model_colmajor, prompt, args.new_tokens),
    }
    for fn in runs.values():  # warm-up
        fn()
    times = {name: float("inf") for name in runs}
    tokens = {}
    bandwidth = 0.0
    for _ in range(args.repeats):  # alternate, so that background load hits every run alike
        for name, fn in runs.items():
            t = time.perf_counter()
            tokens[name] = fn()
            times[name] = min(times[name], time.perf_counter() - t)
        # the machine's memory bandwidth can change from minute to minute: the ceiling is the best
        # measured between rounds, as the times are the best rounds
        bandwidth = max(bandwidth, read_bandwidth(repeats=3))

    print(f"GPT-2 124M shape, random weights, batch 1, {args.prompt_tokens}-token prompt, {args.new_tokens} new "
          f"tokens, greedy, {args.threads} threads, best of {args.repeats}")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}")
    print(f"memory read bandwidth: {bandwidth / 1e9:.1f} GB/s; preparing the fp32 model, row-dot "
          f"kernels included, took {build_time:.1f}s before timing")
    base = args.new_tokens / times["transformers fp32"]
    print(f"{'':<20}{'tokens/s':>10}{'vs transformers':>17}{'weights/token':>15}{'ceiling tok/s':>15}{'of ceiling':>12}")
    for name, t in times.items():
        tps = args.new_tokens / t
        m = model_bf16 if "bf16" in name else model
        ceiling = bandwidth / weight_bytes_per_token(m)
        print(f"{name:<20}{tps:>10.1f}{tps / base:>16.2f}x{weight_bytes_per_token(m) / 1e6:>12.0f} MB"
              f"{ceiling:>15.0f}{tps / ceiling:>11.0%}")
    print(f"greedy tokens, tinygpt fp32 == transformers fp32: {tokens['tinygpt fp32'] == tokens['transformers fp32']}")
    if not args.no_check:
        t = time.perf_counter()
        no_cache = ours(model, prompt, args.new_tokens, use_cache=False)
        t = time.perf_counter() - t
        print(f"greedy tokens, KV cache == no cache: {no_cache == tokens['tinygpt fp32']} "
              f"(no cache: {args.new_tokens / t:.1f} tokens/s)")
    return 0
