"""Helpers for the serving tests: a tiny run to serve, and a real server on a free loopback port."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from helpers import CHARS

PROMPT = "ROMEO:\nBut soft"
"""A prompt in the tiny runs' characters."""


def make_run(out_dir: Path, seed: int = 0, block_size: int = 32, chars: str = CHARS,
             vocab_size: int | None = None, chat: bool = False) -> Path:
    """A checkpoint of a tiny character-level GPT whose next-token choices are clear-cut (random
    weights, scaled up), so greedy text doesn't hinge on rounding, in out_dir/ckpt.pt. vocab_size:
    the model's vocabulary rows, when more than the tokenizer's (a padded vocabulary). chat: the
    tokenizer has the chat template's tokens (a chat model, untrained)."""
    from model.checkpoint import model_state, save_checkpoint
    from model.config import GPTConfig
    from model.data.tokenizer import CharTokenizer, ChatTokenizer
    from model.nn.gpt import GPT

    torch.manual_seed(seed)
    tok = ChatTokenizer(CharTokenizer(chars)) if chat else CharTokenizer(chars)
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


@contextlib.contextmanager
def server_errors():
    """The error records the server's log ("tinygpt.serve") receives while the block runs, as a list."""
    errors: list[logging.LogRecord] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = errors.append
    logger = logging.getLogger("tinygpt.serve")
    logger.addHandler(handler)
    try:
        yield errors
    finally:
        logger.removeHandler(handler)


def free_port() -> int:
    """A loopback port no one listens on (free when this returns)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve(out_dirs=(), init_from=(), max_batch=4, max_waiting=8, api_key=None, allowed_hosts=None, **limits):
    """An app serving the given runs, and its ServedModels."""
    from model.serving.api import Limits, create_app
    from model.serving.models import find_sources, load_served
    from model.sources import resolve_model

    named = [resolve_model(name) for name in (*out_dirs, *init_from)]
    served = load_served(find_sources(named), "cpu", "float32", True, max_batch, max_waiting)
    return create_app(served, Limits(**limits), api_key, allowed_hosts), served


def complete(client, **body) -> dict:
    """A completion that must succeed: its JSON reply."""
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def expect_error(response, status: int, *words: str) -> dict:
    """Checks a reply is the server's JSON error with this status, its message holding these words."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    for word in words:
        assert word in error["message"], error["message"]
    assert "Traceback" not in response.text
    return error


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


class ServeCommand:
    """`python -m model.serve ARGS --port=PORT` on a free loopback port, up (its /healthz answers) for
    as long as the `with` lasts; then stopped with SIGINT, as Ctrl-C, and its exit status and stderr
    are in `returncode` and `err`."""

    def __init__(self, *args: str):
        with socket.socket() as free:
            free.bind(("127.0.0.1", 0))
            self.port = free.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [*args, f"--port={self.port}"]
        self.returncode: int | None = None
        self.err = ""

    def __enter__(self) -> "ServeCommand":
        import httpx

        from helpers import ROOT

        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        self.process = subprocess.Popen([sys.executable, "-m", "model.serve", *self.args], cwd=ROOT, env=env,
                                        stderr=subprocess.PIPE, text=True)

        def up() -> bool:
            try:
                return httpx.get(self.url + "/healthz").status_code == 200
            except httpx.HTTPError:
                return self.process.poll() is not None
        if not wait_until(up, timeout=120) or self.process.poll() is not None:
            self.__exit__()
            raise RuntimeError(f"python -m model.serve did not start: {self.err}")
        return self

    def __exit__(self, *exc) -> None:
        self.process.send_signal(signal.SIGINT)
        _, self.err = self.process.communicate(timeout=60)
        self.returncode = self.process.returncode


def wait_until(condition, timeout: float = 10.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()
