"""The decoding loop behind the server: one thread for every model, every request's texts in one batch.

Requests arrive on the web server's event loop; their texts ("choices": n per prompt) queue here and
join the running batch (model/sampling/batch.py) at the next step, up to `max_batch` at once; each
step samples one token per text, with that text's own temperature / top-k / top-p and random
generator, over the tokenizer's ids only (a padded vocabulary's extra rows are no token), and hands
the new text to its request as an Event, on the request's event loop. A text leaves the batch when it
ends (a stop string, the end-of-text token or one of its request's end tokens, max_tokens) or when its request is cancelled (the client
went away). Other model work (loading, attention maps, the prompt's log-probabilities) runs on the
same thread between steps, so nothing else competes for the cores mid-step.

A request can never fail another. Sampling a text's token is that text's own work: if it raises,
that text's request ends with an error and nobody else's. If the batch itself raises (a join's
prefill, a step's forward pass), its state is unknown: a fresh batch is built, into which every text
joins again on its own (a prefill of its context that gives the logits the step would have), and a
text that fails even alone fails its request, and no other.

One thread runs all of it, for every model served (a DecodingThread shared by their Engines). Models
served together share the cores anyway, and PyTorch's OpenMP runtime keeps a pool of worker threads
for each thread that runs parallel work: with more pools alive than cores to run them, libgomp stops
letting idle workers wait actively, and each of the hundreds of parallel regions in a decoding step
then waits for sleeping workers to wake. So the models are also loaded on that thread, and the web
server's threads do no tensor work.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from model.data.tokenizer import StreamDecoder, token_bytes
from model.nn.gpt import GPT
from model.sampling.batch import RunningBatch, Sequence
from model.sampling.generate import StopAtString, sample_next

log = logging.getLogger("tinygpt.serve")


GENERATION_FAILED = "internal error while generating; see the server's log"
"""The error a request's texts end with when generating them raised (the log has the traceback)."""


class Busy(Exception):
    """The queue of waiting texts is full; the client should retry later."""


@dataclass
class Sampling:
    """How one request's texts are generated."""

    max_tokens: int
    """Most tokens generated per text (at least 1)."""
    temperature: float = 1.0
    """0 is greedy."""
    top_k: int | None = None
    """Keep only the k most likely tokens (None or 0: all)."""
    top_p: float | None = None
    """Nucleus sampling threshold in (0, 1] (None or 1: off)."""
    stop: list[str] = field(default_factory=list)
    """A text ends before the first of these strings, which is left out."""
    seed: int | None = None
    """Text j of a request samples with seed + j; None draws a fresh seed."""
    logprobs: int | None = None
    """Report each token's log-probability and this many top alternatives (None: none)."""
    end_tokens: tuple[int, ...] = ()
    """Token ids that end a text as the end-of-text token does (finish_reason "stop", no text): a
    chat reply's end-of-turn token."""


@dataclass
class TokenInfo:
    """A generated token as the API reports it: its text, its log-probability under the model
    (log-softmax of the logits, before temperature, top-k and top-p) and the most likely tokens'."""

    id: int
    text: str
    logprob: float
    top: list[tuple[str, float]]
    offset: int = 0
    """Characters of the choice's text that come before this token (held back by a stop string or
    not), OpenAI's text_offset without the echoed prompt."""


@dataclass
class Event:
    """Something new for choice `index` of a request: text, the token behind it, or its end."""

    index: int
    text: str = ""
    token: TokenInfo | None = None
    finish_reason: str | None = None
    error: str | None = None
    tokens: int = 1
    """Tokens generated for it (one per decoding step of the choice)."""


def token_text(tok, token: int) -> str:
    """A token's text; a token that isn't whole UTF-8 on its own (part of a character) is written
    as its bytes, 'bytes:\\xe2\\x80', as OpenAI's API does."""
    raw = token_bytes(tok, [token])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


def top_logprobs(tok, logits: Tensor, k: int) -> tuple[Tensor, list[tuple[str, float]]]:
    """log-softmax of logits (..., vocab) and the k most likely tokens of the last row, as (text, logprob)."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    if k == 0:
        return logprobs, []
    values, ids = torch.topk(logprobs.reshape(-1, logprobs.size(-1))[-1], k)
    return logprobs, [(token_text(tok, i), v) for i, v in zip(ids.tolist(), values.tolist())]


class Job:
    """A request's texts, and the queue on its event loop where their Events arrive."""

    def __init__(self, prompts: list[list[int]], n: int, sampling: Sampling, loop: asyncio.AbstractEventLoop):
        self.sampling = sampling
        self.loop = loop
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.cancelled = False
        self.choices = [Choice(self, i * n + j, prompt, j) for i, prompt in enumerate(prompts) for j in range(n)]

    def emit(self, event: Event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            self.cancelled = True

    def cancel(self) -> None:
        self.cancelled = True


class Choice:
    """One text being generated: where it is in the batch, its random generator, its decoded text."""

    def __init__(self, job: Job, index: int, prompt: list[int], offset: int):
        self.job, self.index, self.prompt = job, index, prompt
        self.seed_offset = offset
        self.sequence: Sequence | None = None
        self.context: list[int] = []
        """The last block_size tokens it has seen and is due to see (prompt, generated, next_token):
        what it joins a rebuilt batch with."""
        self.next_token: int | None = None
        self.generated = 0
        self.chars = 0  # characters of text decoded so far, held back by a stop string or not
        self.generator: torch.Generator | None = None
        self.decoder: StreamDecoder | None = None
        self.stopper: StopAtString | None = None


class DecodingThread:
    """The thread that runs every Engine's steps, and any other model work handed to `call`; see
    the module docstring. It can be started again after stop()."""

    def __init__(self):
        self.engines: list[Engine] = []
        self.tasks: deque[tuple[Callable[[], Any], concurrent.futures.Future]] = deque()
        self.wake = threading.Condition()
        self.thread: threading.Thread | None = None
        self.stopping = False
        # torch's thread count is per thread under OpenMP: the decoding thread takes its creator's
        self.threads = torch.get_num_threads()

    def start(self) -> None:
        with self.wake:
            if self.thread is not None:
                return
            self.stopping = False
            self.thread = threading.Thread(target=self._run, name="tinygpt-decoding", daemon=True)
            self.thread.start()

    def stop(self) -> None:
        with self.wake:
            self.stopping = True
            self.wake.notify()
            thread, self.thread = self.thread, None
        if thread is not None:
            thread.join(timeout=30)

    def call(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        """Run fn on the decoding thread between two steps; its result arrives in the future."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self.wake:
            self.tasks.append((fn, future))
            self.wake.notify()
        return future

    def _run(self) -> None:
        torch.set_num_threads(self.threads)
        while True:
            with self.wake:
                while not (self.stopping or self.tasks or any(e.busy() for e in self.engines)):
                    self.wake.wait()
                if self.stopping:
                    break
                tasks, self.tasks = list(self.tasks), deque()
            for fn, future in tasks:
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn())
                    except Exception as e:  # the caller turns it into an error reply
                        future.set_exception(e)
            for engine in self.engines:
                if engine.busy():
                    engine.advance()
        for engine in self.engines:
            engine.fail_all("the server is shutting down")


class Engine:
    """One model's running batch and queue, stepped by the DecodingThread that every served model
    shares; see the module docstring."""

    def __init__(self, model: GPT, tok, thread: DecodingThread, max_batch: int = 8, max_waiting: int = 64):
        self.model, self.tok = model, tok
        self.max_batch, self.max_waiting = max_batch, max_waiting
        self.device = model.lm_head.weight.device
        self.block_size = model.config.block_size
        self.batch = self._new_batch()
        self.waiting: deque[Choice] = deque()
        self.active: list[Choice] = []
        self.thread = thread
        thread.engines.append(self)
        self.steps = 0  # decoding steps run (each one forward pass for every active text)
        self.peak = 0  # most texts decoded in one step

    def _new_batch(self) -> RunningBatch:
        return RunningBatch(self.model, self.max_batch, self.tok.vocab_size)

    def submit(self, job: Job) -> None:
        """Queue a request's texts; raises Busy when the queue has no room for them."""
        with self.thread.wake:
            if len(self.waiting) + len(job.choices) > self.max_waiting:
                raise Busy(f"{len(self.waiting)} texts are already waiting (at most {self.max_waiting})")
            self.waiting.extend(job.choices)
            self.thread.wake.notify()

    def call(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        """Run fn, without autograd, on the decoding thread between two steps; its result arrives in the future."""
        return self.thread.call(torch.inference_mode()(fn))

    def load(self) -> dict[str, int]:
        return {"active": len(self.active), "waiting": len(self.waiting), "steps": self.steps, "peak_batch": self.peak}

    def busy(self) -> bool:
        """Whether there are texts to admit or decode."""
        return bool(self.waiting or self.active)

    @torch.inference_mode()
    def advance(self) -> None:
        """Admit waiting texts and decode one token for each text in the batch (on the decoding thread).
        Failures are kept to the request that caused them (the module docstring says how); whatever
        still escapes that ends every text, rather than the thread."""
        try:
            self._admit()
            self._step()
        except Exception:
            log.exception("decoding failed; ending the texts being generated")
            self.fail_all(GENERATION_FAILED)

    def _admit(self) -> None:
        """Move waiting texts into the batch while there is room (each joins with one prefill)."""
        while len(self.active) < self.max_batch:
            with self.thread.wake:
                if not self.waiting:
                    return
                choice = self.waiting.popleft()
            if choice.job.cancelled:
                continue
            choice.context = choice.prompt[-self.block_size:]
            try:
                choice.sequence, logits = self.batch.join(choice.context)
            except Exception:
                log.exception("a text failed to join the batch; every text joins a fresh batch on its own")
                self._rebuild(self.active + [choice])
                continue
            self.active.append(choice)
            self._advance(choice, logits)

    def _step(self) -> None:
        """Drop cancelled texts, then one token for every text in the batch."""
        for choice in [c for c in self.active if c.job.cancelled]:
            self._finish(choice)
        if not self.active:
            return
        try:
            logits = self.batch.step({c.sequence: c.next_token for c in self.active})
        except Exception:
            log.exception("a decoding step failed; every text joins a fresh batch on its own")
            self._rebuild(self.active)
            return
        self.steps += 1
        self.peak = max(self.peak, len(self.active))
        for choice in list(self.active):
            self._advance(choice, logits[choice.sequence])

    def _rebuild(self, choices: list[Choice]) -> None:
        """After the batch raised: a fresh batch, which each of `choices` joins on its own with its
        context, then samples from the logits that gives (what the failed step or join was due to
        give it). A text that fails to join alone fails its request; the batch is then built again
        without it, since a failed join may leave it in any state."""
        pending = [c for c in choices if not c.job.cancelled]
        while True:
            self.batch, self.active, joined = self._new_batch(), [], []
            for choice in pending:
                try:
                    choice.sequence, logits = self.batch.join(choice.context)
                except Exception:
                    log.exception("a text failed on its own; ending its request")
                    pending.remove(choice)
                    self._fail(choice)
                    break
                joined.append((choice, logits))
            else:
                break
        self.active = [choice for choice, _ in joined]
        for choice, logits in joined:
            self._advance(choice, logits)

    def _advance(self, choice: Choice, logits: Tensor) -> None:
        """Sample choice's next token from its logits (vocab,), and report the text it adds; a
        failure ends choice's request alone."""
        try:
            self._sample(choice, logits)
        except Exception:
            log.exception("sampling a token failed; ending its request")
            self._fail(choice)

    def _sample(self, choice: Choice, logits: Tensor) -> None:
        """_advance's work, which may raise."""
        s = choice.job.sampling
        if choice.generated == 0:
            choice.generator = torch.Generator(device=self.device)
            if s.seed is None:
                choice.generator.seed()
            else:
                choice.generator.manual_seed(s.seed + choice.seed_offset)
            choice.decoder, choice.stopper = StreamDecoder(self.tok), StopAtString(s.stop)
        token = int(sample_next(logits[None], s.temperature, s.top_k, s.top_p, choice.generator)[0])
        info = None
        if s.logprobs is not None:
            logprobs, top = top_logprobs(self.tok, logits, s.logprobs)
            info = TokenInfo(token, token_text(self.tok, token), float(logprobs[token]), top, choice.chars)
        choice.generated += 1
        end_of_text = token == self.tok.eot_token or token in s.end_tokens
        decoded = "" if end_of_text else choice.decoder.push([token])
        choice.chars += len(decoded)
        text = choice.stopper.push(decoded)
        finish = None
        if choice.stopper.stopped:
            finish = "stop"
        elif end_of_text or choice.generated >= s.max_tokens:
            finish = "stop" if end_of_text else "length"
            text += choice.stopper.push(choice.decoder.flush()) + choice.stopper.flush()
        choice.job.emit(Event(choice.index, text, info, finish))
        if finish is not None:
            self._finish(choice)
        else:
            choice.next_token = token
            choice.context.append(token)
            del choice.context[: -self.block_size]

    def _finish(self, choice: Choice) -> None:
        self.batch.leave(choice.sequence)
        self.active.remove(choice)

    def _fail(self, choice: Choice) -> None:
        """End choice's request with an error (its other texts stop at the next step), and take
        choice out of the batch."""
        choice.job.emit(Event(choice.index, error=GENERATION_FAILED, tokens=0))
        choice.job.cancel()
        if choice in self.active:
            self._finish(choice)

    def fail_all(self, message: str) -> None:
        """End every text, waiting or being decoded, with an error event."""
        with self.thread.wake:
            waiting, self.waiting = list(self.waiting), deque()
        for choice in self.active + waiting:
            choice.job.emit(Event(choice.index, error=message, tokens=0))
        self.active = []
        self.batch = self._new_batch()  # whatever state the failure left
