"""The CPU training kernels against the PyTorch ops they replace, forward plus backward, side by side.

    python -m model.bench kernels [--batch_size=64] [--block_size=256] [--n_embd=384] [--n_head=6]
                                  [--dropout=0.2] [--dtype=bfloat16] [--repeats=7]

At the baby GPT's sizes by default (one layer's tensors). Each line times one op of
model/kernels/ops.py both ways, in alternation so that a machine whose speed drifts treats both alike,
and prints the medians:
  - attention weights: scale, causal mask, softmax, dropout in one C pass vs PyTorch's scale,
    masked_fill and softmax followed by the C hash dropout (the path it replaced)
  - GELU (tanh) with its derivative kept vs F.gelu
  - LayerNorm to bf16 under autocast vs F.layer_norm and a cast (bfloat16 only)
  - a linear layer with the bias added inside oneDNN's product vs F.linear (addmm)
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.bench kernels", description=__doc__.splitlines()[0])
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--block_size", type=int, default=256)
    parser.add_argument("--n_embd", type=int, default=384)
    parser.add_argument("--n_head", type=int, default=6)
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls of each, alternating")
    args = parser.parse_args(argv)

    import torch
    import torch.nn.functional as F

    from model.device import keep_freed_memory
    from model.kernels import build, ops

    if build.library() is None:
        print("error: the C kernels are switched off (TINYGPT_KERNELS=0) or could not be built here "
              "(no C compiler?)", file=sys.stderr)
        return 1
    keep_freed_memory()  # as train.py does: no page faults on every fresh activation
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    B, T, C, nh = args.batch_size, args.block_size, args.n_embd, args.n_head
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)

    scores = torch.randn(B, nh, T, T, dtype=dtype, requires_grad=True)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    scale = (C // nh) ** -0.5

    def pytorch_weights():
        att = F.softmax((scores * scale).masked_fill(~causal, float("-inf")), dim=-1)
        return ops.dropout(att, args.dropout)

    hidden = torch.randn(B, T, 4 * C, dtype=dtype, requires_grad=True)
    residual = torch.randn(B, T, C, requires_grad=True)
    norm, linear = torch.nn.LayerNorm(C), torch.nn.Linear(C, 4 * C)
    x = torch.randn(B, T, C, dtype=dtype, requires_grad=True)

    def with_autocast(fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
        def run():
            with autocast:
                return fn()
        return run

    rows = [
        ("attention weights (B, nh, T, T)", lambda: ops.attention_probs(scores, scale, None, args.dropout, causal=True),
         pytorch_weights),
        ("GELU (B, T, 4C)", lambda: ops.gelu(hidden), lambda: F.gelu(hidden, approximate="tanh")),
        ("linear C -> 4C with bias", with_autocast(lambda: ops.linear(x, linear.weight, linear.bias)),
         with_autocast(lambda: linear(x))),
    ]
    if dtype == torch.bfloat16:
        rows.insert(2, ("LayerNorm (B, T, C) to bf16",
                        with_autocast(lambda: ops.layer_norm(residual, (C,), norm.weight, norm.bias, norm.eps)),
                        with_autocast(lambda: norm(residual).to(torch.bfloat16))))
    print(f"{args.dtype}, B={B} T={T} C={C} nh={nh} dropout={args.dropout}, threads={torch.get_num_threads()}: "
          f"median ms of forward + backward over {args.repeats} calls each")
    print(f"{'':34s} {'tinygpt':>9s} {'PyTorch':>9s} {'speed-up':>9s}")
    for name, ours, reference in rows:
        times: dict[str, list[float]] = {"ours": [], "reference": []}
        for _ in range(args.repeats + 1):  # the first round warms up and isn't counted
            for key, fn in (("ours", ours), ("reference", reference)):
                start = time.perf_counter()
                out = fn()
                out.backward(torch.ones_like(out))
                times[key].append(time.perf_counter() - start)
        ours_ms, ref_ms = (sorted(t[1:])[len(t[1:]) // 2] * 1e3 for t in times.values())
        print(f"{name:34s} {ours_ms:9.1f} {ref_ms:9.1f} {ref_ms / ours_ms:8.3g}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
