"""Tokenization throughput: the Hugging Face preparation pipeline against plain tiktoken, same text.

    python -m model.bench tokenize [--input=FILE] [--repeat=10] [--num_proc=2] [--doc_chars=4000]

The corpus (default Tiny Shakespeare via $TINYSHAKESPEARE_PATH) is cut into documents at blank lines
(short ones: a speech each) or, with --doc_chars, into pieces of that many characters (to stand for
longer documents such as web pages), repeated --repeat times and written as a local parquet dataset.
Then, side by side, in tokens/s:
  - tiktoken, one process:      encode_ordinary on each document in turn (the baseline)
  - tiktoken batched, threads:  encode_ordinary_batch with one thread per core, one process
  - prepare_hf, num_proc=1/N:   the whole pipeline (read parquet, tokenize, write shards, meta.json)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.bench tokenize", description=__doc__.splitlines()[0])
    parser.add_argument("--input", default=os.environ.get("TINYSHAKESPEARE_PATH"), help="UTF-8 text file")
    parser.add_argument("--repeat", type=int, default=10, help="copies of the corpus to tokenize")
    parser.add_argument("--doc_chars", type=int, default=0, help="document length; 0 cuts at blank lines")
    parser.add_argument("--num_proc", type=int, default=os.cpu_count() or 1, help="processes for prepare_hf")
    args = parser.parse_args(argv)
    if not args.input:
        parser.error("pass --input=FILE or set TINYSHAKESPEARE_PATH")

    import datasets

    from model.data.hf_datasets import HFSource, prepare_hf
    from model.data.tokenizer import TiktokenTokenizer

    text = Path(args.input).read_text(encoding="utf-8")
    if args.doc_chars > 0:
        docs = [text[i : i + args.doc_chars] for i in range(0, len(text), args.doc_chars)] * args.repeat
    else:
        docs = [d for d in text.split("\n\n") if d.strip()] * args.repeat
    enc = TiktokenTokenizer("gpt2").enc
    print(f"{len(docs):,} documents, {sum(map(len, docs)):,} characters, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f}")

    def report(name: str, tokens: int, seconds: float) -> None:
        print(f"{name:<32} {tokens:>12,} tokens {seconds:8.2f} s {tokens / seconds:>14,.0f} tokens/s")

    t = time.perf_counter()
    n_tokens = sum(len(enc.encode_ordinary(d)) for d in docs) + len(docs)  # + one EOT per document
    report("tiktoken, one process", n_tokens, time.perf_counter() - t)
    t = time.perf_counter()
    n = sum(len(ids) for ids in enc.encode_ordinary_batch(docs, num_threads=os.cpu_count() or 1)) + len(docs)
    report("tiktoken batched, threads", n, time.perf_counter() - t)

    with tempfile.TemporaryDirectory() as tmp:
        files = str(Path(tmp) / "docs.parquet")
        datasets.Dataset.from_dict({"text": docs}).to_parquet(files)
        source = HFSource("parquet")
        for num_proc in sorted({1, args.num_proc}):
            t = time.perf_counter()
            meta = prepare_hf(f"bench{num_proc}", Path(tmp) / "data", source, files, num_proc=num_proc,
                              cache_dir=str(Path(tmp) / "cache"), quiet=True)
            total = meta["train_tokens"] + meta["val_tokens"]
            assert total == n_tokens, (total, n_tokens)
            report(f"prepare_hf, num_proc={num_proc}", total, time.perf_counter() - t)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
