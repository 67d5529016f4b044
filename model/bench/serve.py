"""Serving speed: one stream, 8 concurrent streams, time to first token, and a bounded load test.

    python -m model.bench serve [--new_tokens=128] [--prompt_tokens=16] [--repeats=3] [--clients=8]
                                [--load_requests=64] [--threads=N]

GPT-2 124M's architecture with random weights (no download), float32 on the CPU, saved as a
transformers folder and served by `python -m model.serve --init_from=FOLDER` in a subprocess on a
free loopback port; the clients are threads of this process, streaming over HTTP.

- single stream: one client, --new_tokens greedy tokens after a --prompt_tokens prompt, timed end
  to end (request sent to last token received), best of --repeats; beside it, in the same run,
  sample.py's decoding (generate_text on the same weights, end to end) in a process of its own
  with the server's thread count.
- N streams: --clients clients start the same request at once; aggregate tokens/s is all their
  tokens over the time from the first request to the last token, best of --repeats.
- time to first token, p50/p95: 1 client (20 requests, one at a time) and --clients clients (every
  request of the N-stream rounds).
- load test: --load_requests requests from --clients clients, each sending its share one after
  another, with random prompt lengths and max_tokens, streaming or not; every one must complete.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

GPT2_VOCAB = 50257


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def streamed(http, body: dict) -> tuple[float, float, int]:
    """Send a streaming completion; returns (time to first token, total time, tokens received)."""
    start = time.perf_counter()
    first, tokens = None, 0
    with http.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
        if r.status_code != 200:
            raise RuntimeError(f"status {r.status_code}: {r.read()[:200]!r}")
        done = False
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                continue
            event = json.loads(line[6:])
            if "error" in event:
                raise RuntimeError(event["error"]["message"])
            if not event["choices"]:
                continue
            tokens += 1  # the server sends one event per token
            if first is None:
                first = time.perf_counter() - start
    if not done:
        raise RuntimeError("the stream ended without [DONE]")
    return first, time.perf_counter() - start, tokens


class Server:
    """`python -m model.serve` in a subprocess, until stop()."""

    def __init__(self, folder: Path, threads: int, clients: int):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        root = Path(__file__).resolve().parents[2]
        self.env = {**os.environ, "OMP_NUM_THREADS": str(threads),
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "model.serve", f"--init_from={folder}", f"--port={self.port}", "--quiet",
             f"--max_batch={clients}"], env=self.env, stderr=subprocess.PIPE, text=True)

    def wait(self, http, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited: {self.process.stderr.read()[-500:]}")
            try:
                if http.get("/healthz").status_code == 200:
                    return
            except Exception:  # not listening yet
                pass
            time.sleep(0.5)
        raise RuntimeError("the server did not start")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


SAMPLE_PY = """
import json, sys, time
from model.huggingface import load_pretrained
from model.sampling.generate import generate_text, prepare_for_sampling
folder, prompt, n, repeats = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
model, tok = load_pretrained(folder)
prepare_for_sampling(model)
list(generate_text(model, tok, [prompt], 8, temperature=0))
for _ in range(repeats):
    t = time.perf_counter()
    list(generate_text(model, tok, [prompt], n, temperature=0))
    print(n / (time.perf_counter() - t), flush=True)
"""


def sample_py_speed(folder: Path, prompt: list[int], new_tokens: int, repeats: int, env: dict) -> list[float]:
    """Tokens/s of sample.py's decoding (prepare_for_sampling, generate_text: greedy, batch 1, end to end)."""
    out = subprocess.run([sys.executable, "-c", SAMPLE_PY, str(folder), json.dumps(prompt), str(new_tokens),
                          str(repeats)], env=env, capture_output=True, text=True, check=True)
    return [float(line) for line in out.stdout.split()]


def load_test(url: str, clients: int, requests: int, seed: int = 0) -> dict:
    """requests completions from `clients` threads over loopback; every one is checked."""
    import httpx

    rng = random.Random(seed)
    plans = [dict(prompt=[rng.randrange(GPT2_VOCAB) for _ in range(rng.randint(4, 48))],
                  max_tokens=rng.randint(8, 64), temperature=0.8, seed=i, stream=rng.random() < 0.5)
             for i in range(requests)]
    results, errors, latencies = [], [], []
    lock = threading.Lock()

    def client(share: list[dict]) -> None:
        with httpx.Client(base_url=url, timeout=300) as http:
            for body in share:
                try:
                    start = time.perf_counter()
                    if body["stream"]:
                        _, _, tokens = streamed(http, body)
                        finished = True
                    else:
                        r = http.post("/v1/completions", json=body)
                        r.raise_for_status()
                        reply = r.json()
                        tokens = reply["usage"]["completion_tokens"]
                        finished = reply["choices"][0]["finish_reason"] in ("length", "stop")
                    with lock:
                        latencies.append(time.perf_counter() - start)
                        results.append((body["max_tokens"], tokens, finished))
                except Exception as e:  # counted: the test fails if any request does
                    with lock:
                        errors.append(f"{type(e).__name__}: {e}")

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(plans[i::clients],)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    complete = sum(1 for asked, got, finished in results if finished and 0 < got <= asked)
    return {"requests": requests, "completed": complete, "errors": errors, "wall": wall,
            "tokens": sum(got for _, got, _ in results), "latency_p50": percentile(latencies, 0.5) if latencies else 0,
            "latency_p95": percentile(latencies, 0.95) if latencies else 0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.bench serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--new_tokens", type=int, default=128)
    parser.add_argument("--prompt_tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--load_requests", type=int, default=64)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)

    import httpx
    import transformers
    from transformers import GPT2Config, GPT2LMHeadModel

    from model.huggingface import gpt_from_hf, save_pretrained

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "gpt2-random"
        hf_model = GPT2LMHeadModel(GPT2Config())  # GPT-2 124M, random weights
        save_pretrained(gpt_from_hf(hf_model.config.to_dict(), hf_model.state_dict()), folder)
        del hf_model
        server = Server(folder, args.threads, args.clients)
        try:
            prompt = torch.randint(0, GPT2_VOCAB, (args.prompt_tokens,), generator=torch.Generator().manual_seed(1)).tolist()
            body = dict(prompt=prompt, max_tokens=args.new_tokens, temperature=0)
            with httpx.Client(base_url=server.url, timeout=600) as http:
                server.wait(http)
                streamed(http, {**body, "max_tokens": 8})  # warm-up
                # sample.py's decoding in a process of its own, as the server has, with the same threads
                sample_py = sample_py_speed(folder, prompt, args.new_tokens, args.repeats, server.env)
                single, ttft_1 = [], []
                for _ in range(args.repeats):
                    _, total, tokens = streamed(http, body)
                    single.append(tokens / total)
                for _ in range(20):
                    ttft_1.append(streamed(http, {**body, "max_tokens": 8})[0])

            aggregate, ttft_n = [], []
            for _ in range(args.repeats):
                barrier = threading.Barrier(args.clients)
                out: list[tuple[float, float, int]] = []

                def client() -> None:
                    with httpx.Client(base_url=server.url, timeout=600) as http:
                        barrier.wait()
                        out.append((time.perf_counter(), *streamed(http, body)))

                threads = [threading.Thread(target=client) for _ in range(args.clients)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                if len(out) != args.clients:
                    raise RuntimeError(f"{args.clients - len(out)} of the concurrent streams failed")
                start = min(s for s, _, _, _ in out)
                end = max(s + total for s, _, total, _ in out)
                aggregate.append(sum(tokens for _, _, _, tokens in out) / (end - start))
                ttft_n += [first for _, first, _, _ in out]

            load = load_test(server.url, args.clients, args.load_requests)
        finally:
            server.stop()

    print(f"GPT-2 124M shape, random weights, CPU float32, {args.prompt_tokens}-token prompt, {args.new_tokens} new "
          f"greedy tokens per stream, {args.threads} threads, best of {args.repeats}")
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}")
    best_sample, best_single, best_aggregate = max(sample_py), max(single), max(aggregate)
    print(f"{'':<34}{'tokens/s':>10}{'vs one stream':>15}")
    print(f"{'sample.py decoding, 1 stream':<34}{best_sample:>10.1f}{best_sample / best_single:>14.2f}x")
    print(f"{'server, 1 stream':<34}{best_single:>10.1f}{1:>14.2f}x   ({best_single / best_sample:.0%} of sample.py's)")
    print(f"{f'server, {args.clients} streams (aggregate)':<34}{best_aggregate:>10.1f}{best_aggregate / best_single:>14.2f}x")
    print(f"all rounds, tokens/s: sample.py {', '.join(f'{v:.1f}' for v in sample_py)}; server 1 stream "
          f"{', '.join(f'{v:.1f}' for v in single)}; {args.clients} streams {', '.join(f'{v:.1f}' for v in aggregate)}")
    print(f"time to first token: 1 client p50 {1000 * percentile(ttft_1, 0.5):.0f} ms, p95 "
          f"{1000 * percentile(ttft_1, 0.95):.0f} ms ({len(ttft_1)} requests); {args.clients} clients p50 "
          f"{1000 * percentile(ttft_n, 0.5):.0f} ms, p95 {1000 * percentile(ttft_n, 0.95):.0f} ms ({len(ttft_n)} requests)")
    print(f"load test: {load['completed']}/{load['requests']} requests completed from {args.clients} clients in "
          f"{load['wall']:.1f} s, {load['tokens']} tokens ({load['tokens'] / load['wall']:.1f} tokens/s), latency p50 "
          f"{load['latency_p50']:.2f} s, p95 {load['latency_p95']:.2f} s, {len(load['errors'])} errors")
    for error in load["errors"][:5]:
        print(f"  error: {error}")
    return 0 if load["completed"] == load["requests"] else 1
