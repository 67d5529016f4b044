"""Helpers for the serving tests: a tiny run to serve, and a real server on a free loopback port."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import torch

from helpers import CHARS


def make_run(out_dir: Path, seed: int = 0, block_size: int = 32, chars: str = CHARS,
             vocab_size: int | None = None) -> Path:
    """A checkpoint of a tiny character-level GPT whose next-token choices are clear-cut (random
    weights, scaled up), so greedy text doesn't hinge on rounding, in out_dir/ckpt.pt. vocab_size:
    the model's vocabulary rows, when more than the tokenizer's (a padded vocabulary)."""
    from model.checkpoint import model_state, save_checkpoint
    from model.config import GPTConfig
    from model.data.tokenizer import CharTokenizer
    from model.nn.gpt import GPT

    torch.manual_seed(seed)
    tok = CharTokenizer(chars)
    config = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=block_size, vocab_size=vocab_size or tok.vocab_size)
    model = GPT(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(std=0.3)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out_dir / "ckpt.pt", model_state(model, config, tok.to_meta()))
    return out_dir


def make_hf_folder(folder: Path, seed: int = 0) -> Path:
    """A random tiny transformers GPT2LMHeadModel (GPT-2's vocabulary), saved with save_pretrained."""
    import transformers
    from transformers import GPT2Config, GPT2LMHeadModel

    transformers.logging.set_verbosity_error()
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64))
    with torch.no_grad():
        model.transformer.wte.weight.normal_(std=0.5)  # peaky next-token distributions
    model.save_pretrained(folder)
    return folder


def serve(out_dirs=(), init_from=(), max_batch=4, max_waiting=8, api_key=None, allowed_hosts=None, **limits):
    """An app serving the given runs, and its ServedModels."""
    from model.serving.api import Limits, create_app
    from model.serving.models import find_sources, load_served

    served = load_served(find_sources([str(d) for d in out_dirs], [], [str(f) for f in init_from]),
                         "cpu", torch.float32, True, max_batch, max_waiting)
    return create_app(served, Limits(**limits), api_key, allowed_hosts), served


class LiveServer:
    """uvicorn serving app on 127.0.0.1 at a free port, in a thread, for as long as the `with` lasts,
    with the connection limits `python -m model.serve` applies (defaults, or the given ones)."""

    def __init__(self, app, **connection_limits):
        import uvicorn

        from model.serving.connections import ConnectionLimits, server_options

        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        options = server_options(ConnectionLimits(**connection_limits))
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, **options))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.socket.close()


def wait_until(condition, timeout: float = 10.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()
