"""Dispatch `python -m model.bench SUBCOMMAND [args]` to model/bench/SUBCOMMAND.py's main(argv)."""

import importlib
import sys

from model.threads import configure_threads

SUBCOMMANDS = {
    "generate": "model.bench.generate",  # sampling speed against transformers
    "train": "model.bench.train",  # training throughput, MFU and time-to-loss
    "kernels": "model.bench.kernels",  # the C training kernels vs the PyTorch ops they replace
    "tokenize": "model.bench.tokenize",  # Hugging Face preparation vs plain tiktoken, tokens/s
    "safety": "model.bench.safety",  # SIGKILL/SIGTERM survival, cost of the safety checks, memory estimate
    "gpu": "model.bench.gpu",  # one GPU: GPU tests, GPT-2 124M training and decoding against transformers
    "tokenizers": "model.bench.tokenizer_choice",  # char vs learned BPEs vs GPT-2's: bytes/token, speed, bits per byte
    "serve": "model.bench.serve",  # the server: one stream vs sample.py, 8 streams, time to first token, load test
    "load": "model.bench.load",  # quick-start training and GPT-2 decoding beside busy processes, both thread settings
    "inspect": "model.bench.inspect",  # python -m model.inspect's views on the quick-start model, GPT-2 124M's ablation
}


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in SUBCOMMANDS:
        print(f"usage: python -m model.bench {{{','.join(SUBCOMMANDS)}}} [args...]", file=sys.stderr)
        return 2
    configure_threads()  # before the benchmark imports torch (model/threads.py)
    module = importlib.import_module(SUBCOMMANDS[sys.argv[1]])
    return module.main(sys.argv[2:]) or 0


if __name__ == "__main__":
    raise SystemExit(main())
