"""The HTTP API (OpenAI-compatible where OpenAI defines it) and the playground page.

    GET  /                 the playground page (model/serving/static/index.html)
    GET  /healthz          {"status": "ok", ...}
    GET  /v1/models        the served models
    POST /v1/completions   OpenAI's legacy completions: prompt (string, strings, token ids), max_tokens,
                           temperature, top_p, top_k (extension), n, stop, seed, logprobs, echo, stream
    POST /v1/chat/completions  OpenAI's chat completions, for a model with the chat template: messages,
                           the same sampling fields, logprobs + top_logprobs; the same engine and bounds
    POST /v1/attention     attention weights of a layer/head (or all of them) over a text (or a
                           conversation, for a chat model), with its tokens
    POST /v1/inspect/...   the "Inside" panel: logit lens, head scores, attention step by step, head
                           ablation, embeddings, parameters per head (model/serving/inspect_api.py)

Every error is JSON, {"error": {"message", "type", "param", "code"}}, with a 4xx status for bad
input (400 malformed or out of bounds, or a Host name the server doesn't answer to, 401 wrong key,
404 unknown model or path, 413 body too large, 422 wrong types or unknown fields), 429 when the queue
is full and 503 while shutting down (connections.py adds 408 and 503 for slow clients and too many
connections).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from itertools import accumulate
from typing import Any
from urllib.parse import urlsplit

import torch
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException

from model.data.chat import check_messages, fit_history, prompt_ids, prompt_room, render, require_chat_tokenizer
from model.data.tokenizer import ChatTokenizer
from model.errors import TinyGPTError
from model.sampling.generate import cut_to_vocabulary
from model.serving.inspect_api import add_inspect_routes
from model.serving.engine import Busy, Event, Job, Sampling, TokenInfo, token_text, top_logprobs
from model.serving.models import ServedModel

log = logging.getLogger("tinygpt.serve")

API_KEY_ENV = "TINYGPT_API_KEY"


@dataclass
class Limits:
    """Bounds on what one request may ask for; past them the request gets a 400 saying which."""

    max_prompt_tokens: int = 4096  # Longest prompt, in tokens (longer than block_size is allowed: the context slides).
    max_tokens: int = 2048  # Most tokens a request may ask to generate per text.
    max_n: int = 8  # Most texts per prompt (n).
    max_prompts: int = 16  # Most prompts in one request.
    max_logprobs: int = 20  # Most alternatives reported per token (logprobs).
    max_stop: int = 4  # Most stop strings.
    max_stop_chars: int = 200  # Longest stop string, in characters.
    max_body_bytes: int = 1_000_000  # Largest request body; a larger one gets 413 before it is read.
    max_attention_tokens: int = 512  # Longest text whose attention is computed; a longer one is cut to its last this many tokens.
    max_attention_values: int = 4_000_000  # Most attention weights (layers x heads x tokens x tokens) in one reply.
    max_ablate_tokens: int = 1024  # Most tokens one head-ablation request scores (each head costs a pass over them).
    max_messages: int = 256  # Most messages in one chat request.


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers


ERROR_TYPES = {401: "authentication_error", 429: "rate_limit_error"}


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    """Every error's JSON: {"error": {"message", "type", "param", "code"}}."""
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code), status_code=status, headers=headers)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(Strict):
    include_usage: bool = False


class SamplingRequest(Strict):
    """The fields /v1/completions and /v1/chat/completions share: which model, and how to sample."""

    model: str | None = Field(None, max_length=200, description="a served model's id (default: the first)")
    max_tokens: int | None = Field(None, ge=0)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0)
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    user: str | None = Field(None, max_length=256)
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0


class CompletionRequest(SamplingRequest):
    prompt: Any = ""
    max_tokens: int | None = Field(16, ge=0)
    logprobs: int | None = Field(None, ge=0)
    echo: bool = False

    @field_validator("prompt", mode="before")
    @classmethod
    def check_prompt(cls, value: Any) -> Any:
        return check_prompt_shape(value, lists_of_ids=True)


class ChatRequest(SamplingRequest):
    """OpenAI's chat completions; max_tokens left out means up to the server's limit (and the context)."""

    messages: Any = Field(..., description='the conversation: [{"role", "content"}, ...]')
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0)

    @field_validator("messages", mode="before")
    @classmethod
    def check_messages(cls, value: Any) -> Any:
        return checked_messages(value)


def checked_messages(value: Any) -> list[dict[str, str]]:
    """The messages, checked by the chat template's own rules; a ValueError (so a 422) says what is wrong."""
    try:
        return check_messages(value, "messages")
    except TinyGPTError as e:
        raise ValueError(str(e).removeprefix("messages: ")) from None


class AttentionRequest(Strict):
    """A text's attention weights: `prompt` (text or token ids) or, for a chat model, `messages` (a
    conversation in the chat template, as the page's chat mode shows it)."""

    model: str | None = Field(None, max_length=200)
    prompt: Any = Field(None, description="text, or a list of token ids")
    messages: Any = Field(None, description="a conversation, instead of a prompt (chat models)")
    layer: int | None = Field(None, ge=0)
    head: int | None = Field(None, ge=0)

    @field_validator("prompt", mode="before")
    @classmethod
    def check_prompt(cls, value: Any) -> Any:
        return check_prompt_shape(value, lists_of_ids=False)

    @field_validator("messages", mode="before")
    @classmethod
    def check_messages(cls, value: Any) -> Any:
        return checked_messages(value)


def is_ids(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in value)


def check_prompt_shape(value: Any, lists_of_ids: bool) -> Any:
    if isinstance(value, str) or (is_ids(value) and value):
        return value
    if lists_of_ids and isinstance(value, list) and value and (
            all(isinstance(p, str) for p in value) or all(is_ids(p) and p for p in value)):
        return value
    shapes = "a string, a list of strings, a list of token ids, or a list of lists of token ids"
    raise ValueError(f"must be {shapes if lists_of_ids else 'a string or a non-empty list of token ids'}")


def validation_message(errors: list[dict]) -> tuple[str, str | None]:
    """One readable line for pydantic's errors, and the first offending parameter."""
    parts, param = [], None
    for e in errors[:5]:
        loc = [str(x) for x in e.get("loc", ()) if x != "body"]
        name = ".".join(loc) or "body"
        param = param or (loc[0] if loc else None)
        if e.get("type") == "extra_forbidden":
            parts.append(f"unknown or unsupported parameter '{name}'")
        elif e.get("type") == "missing":
            parts.append(f"'{name}' is required")
        else:
            message = str(e.get("msg", "invalid")).removeprefix("Value error, ")
            parts.append(f"{name}: {message}")
    return "; ".join(parts), param


class BodyTooLarge(HTTPException):
    pass


class BodyLimit:
    """ASGI middleware: a request body over max_bytes gets 413, announced or not by Content-Length."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = f"request body is larger than {self.max_bytes} bytes"
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await error_response(413, message, code="body_too_large")(scope, receive, send)
        received = 0

        async def limited() -> dict:
            nonlocal received
            event = await receive()
            if event["type"] == "http.request":
                received += len(event.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(413, message)
            return event

        await self.app(scope, limited, send)


def host_name(header: str) -> str | None:
    """The name in a Host header ("name", "name:port", "[v6]:port"), lowercase and without IPv6's
    brackets; None when the header is not of that form."""
    try:
        parts = urlsplit("//" + header)
        parts.port  # raises ValueError unless the port is a number up to 65535
    except ValueError:  # also an unclosed "[" of an IPv6 address
        return None
    if parts.netloc != header or "@" in header or not parts.hostname:
        return None
    return parts.hostname


class HostCheck:
    """ASGI middleware: a request whose Host header names none of allowed_hosts gets 400. A page on
    another site that points its own name at this server's address (DNS rebinding) sends that name."""

    def __init__(self, app, allowed_hosts: list[str]):
        self.app, self.allowed = app, {name.lower().strip("[]") for name in allowed_hosts}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        header = dict(scope.get("headers") or ()).get(b"host", b"").decode("latin-1")
        if host_name(header) not in self.allowed:
            message = (f"this server does not answer to the host name {header!r} (it answers to "
                       f"{', '.join(sorted(self.allowed))}; see --allowed_hosts)")
            return await error_response(400, message, code="invalid_host")(scope, receive, send)
        await self.app(scope, receive, send)


def create_app(served: list[ServedModel], limits: Limits | None = None, api_key: str | None = None,
               allowed_hosts: list[str] | None = None) -> FastAPI:
    """The server's app. The engines' decoding thread runs while the app does (its lifespan).
    allowed_hosts: the Host names it answers to (None: any)."""
    if not served:
        raise TinyGPTError("no model to serve")
    limits = limits or Limits()
    models = {m.id: m for m in served}

    threads = list({id(m.engine.thread): m.engine.thread for m in served}.values())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        for thread in threads:
            thread.start()
        try:
            yield
        finally:
            for thread in threads:
                thread.stop()

    app = FastAPI(title="tinygpt", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError):
        return error_response(e.status, e.message, e.param, e.code, e.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        errors = e.errors()
        if any(err.get("type") == "json_invalid" for err in errors):
            detail = next(err for err in errors if err.get("type") == "json_invalid").get("ctx", {}).get("error", "")
            return error_response(400, f"the request body is not valid JSON: {detail}".rstrip(": "), code="invalid_json")
        message, param = validation_message(errors)
        return error_response(422, message, param)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        messages = {404: f"no such path: {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
        message = messages.get(e.status_code, e.detail if isinstance(e.detail, str) else str(e.detail))
        return error_response(e.status_code, message, headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def crashed(request: Request, e: Exception):
        log.exception("error while answering %s %s", request.method, request.url.path)
        return error_response(500, "internal server error; see the server's log")

    async def check_key(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise APIError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                           code="invalid_api_key")

    def pick(name: str | None) -> ServedModel:
        if name is None:
            return served[0]
        if name not in models:
            raise APIError(404, f"model '{name}' is not served here; served: {', '.join(models)}", "model",
                           "model_not_found")
        return models[name]

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        html = resources.files("model.serving").joinpath("static/index.html").read_text(encoding="utf-8")
        # everything the page needs is in the page: it may load nothing from anywhere else
        csp = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
               "connect-src 'self'; img-src data:")
        return HTMLResponse(html, headers={"Content-Security-Policy": csp})

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok", "models": {m.id: m.engine.load() for m in served}}

    @app.get("/v1/models", dependencies=[Depends(check_key)])
    async def list_models() -> dict:
        return {"object": "list", "data": [m.describe() for m in served]}

    @app.post("/v1/completions", dependencies=[Depends(check_key)])
    async def completions(body: CompletionRequest, request: Request):
        m = pick(body.model)
        check_completion(body, [], m, limits)
        prompts = encode_prompts(m, body.prompt, limits)
        check_completion(body, prompts, m, limits)
        sampling = sampling_of(body, m, limits, body.logprobs)
        echoed = await echo_parts(m, prompts, body) if body.echo else None
        job = Job([ids for ids, _ in prompts], body.n, sampling, asyncio.get_running_loop())
        return await answer(m, CompletionReply(m.id, job, prompts, body, echoed), request)

    @app.post("/v1/chat/completions", dependencies=[Depends(check_key)])
    async def chat_completions(body: ChatRequest, request: Request):
        m = pick(body.model)
        tok = chat_tokenizer(m)
        if body.top_logprobs is not None and not body.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", "top_logprobs")
        top = (body.top_logprobs or 0) if body.logprobs else None
        check_sampling(body, 1, m, limits, top, "top_logprobs")
        sampling = sampling_of(body, m, limits, top, end_tokens=(tok.end_id,))
        ids = chat_prompt(m, body.messages, sampling.max_tokens, limits)
        job = Job([ids], body.n, sampling, asyncio.get_running_loop())
        return await answer(m, ChatReply(m.id, job, [(ids, "")], body), request)

    @app.post("/v1/attention", dependencies=[Depends(check_key)])
    async def attention(body: AttentionRequest) -> dict:
        m = pick(body.model)
        if body.prompt is None and body.messages is None:
            raise APIError(422, "'prompt' is required (or 'messages', a conversation, for a chat model)", "prompt")
        if body.prompt is not None and body.messages is not None:
            raise APIError(422, "give 'prompt' or 'messages', not both", "prompt")
        if body.messages is not None:
            ids = conversation_ids(m, body.messages, limits)
        else:
            (ids, _), = encode_prompts(m, body.prompt, limits)
        c = m.model.config
        for name, value, count in (("layer", body.layer, c.n_layer), ("head", body.head, c.n_head)):
            if value is not None and value >= count:
                raise APIError(400, f"{name} must be below {count} (the model has {count}), got {value}", name)
        keep = min(limits.max_attention_tokens, c.block_size)
        offset = max(0, len(ids) - keep)
        ids = ids[offset:]
        layers = list(range(c.n_layer)) if body.layer is None else [body.layer]
        heads = list(range(c.n_head)) if body.head is None else [body.head]
        size = len(layers) * len(heads) * len(ids) ** 2
        if size > limits.max_attention_values:
            raise APIError(400, f"{len(layers)} layer(s) x {len(heads)} head(s) over {len(ids)} tokens is {size:,} "
                           f"weights, more than the limit of {limits.max_attention_values:,}: choose a layer and a head")

        def compute() -> list:
            idx = torch.tensor([ids], dtype=torch.long, device=m.engine.device)
            patterns = m.model.attention_patterns(idx)  # n_layer x (1, nh, T, T)
            picked = torch.stack([patterns[layer][0, heads] for layer in layers])  # (L, H, T, T)
            return (picked.double() * 1e4).round().div(1e4).cpu().tolist()  # 4 decimals are plenty

        weights = await asyncio.wrap_future(m.engine.call(compute))
        return {"object": "attention", "model": m.id, "tokens": [token_text(m.tok, t) for t in ids], "token_ids": ids,
                "offset": offset, "layers": layers, "heads": heads, "weights": weights}

    add_inspect_routes(app, pick, limits, check_key, Strict, APIError, encode_prompts)
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    if allowed_hosts is not None:
        app.add_middleware(HostCheck, allowed_hosts=allowed_hosts)
    return app


def encode_prompts(m: ServedModel, prompt: Any, limits: Limits) -> list[tuple[list[int], str]]:
    """The request's prompts as (token ids, text) pairs."""
    if isinstance(prompt, str) or is_ids(prompt):
        prompt = [prompt]
    if len(prompt) > limits.max_prompts:
        raise APIError(400, f"at most {limits.max_prompts} prompts per request, got {len(prompt)}", "prompt")
    vocab = m.tok.vocab_size
    out = []
    for p in prompt:
        if isinstance(p, str):
            try:
                ids = m.tok.encode(p)
            except TinyGPTError as e:
                raise APIError(400, f"prompt: {e}", "prompt") from None
            if not ids:
                if m.tok.eot_token is None:
                    raise APIError(400, "the prompt is empty, and this model has no end-of-text token to start from",
                                   "prompt")
                ids = [m.tok.eot_token]
            text = p
        else:
            bad = [t for t in p if not 0 <= t < vocab]
            if bad:
                raise APIError(400, f"token id {bad[0]} is outside the vocabulary (0 to {vocab - 1})", "prompt")
            ids, text = list(p), m.tok.decode(list(p))
        if len(ids) > limits.max_prompt_tokens:
            raise APIError(400, f"the prompt is {len(ids)} tokens, more than the limit of {limits.max_prompt_tokens}",
                           "prompt", "context_length_exceeded")
        out.append((ids, text))
    return out


def stop_strings(body: SamplingRequest) -> list[str]:
    return [body.stop] if isinstance(body.stop, str) else list(body.stop or [])


def check_sampling(body: SamplingRequest, n_prompts: int, m: ServedModel, limits: Limits, top: int | None,
                   top_param: str) -> None:
    """The bounds every generating request keeps: max_tokens, n, the queue, stop strings, and `top`
    alternatives per token (the request's `top_param`); a 400 naming the first one broken."""
    stops = stop_strings(body)
    checks = [
        (body.max_tokens is not None and body.max_tokens > limits.max_tokens, "max_tokens",
         f"max_tokens is {body.max_tokens}, more than the limit of {limits.max_tokens}"),
        (body.n > limits.max_n, "n", f"n is {body.n}, more than the limit of {limits.max_n}"),
        (n_prompts * body.n > m.engine.max_waiting, "n",
         f"{n_prompts} prompt(s) x n={body.n} is more texts than the server queues ({m.engine.max_waiting})"),
        (top is not None and top > limits.max_logprobs, top_param,
         f"{top_param} is {top}, more than the limit of {limits.max_logprobs}"),
        (top is not None and top > m.tok.vocab_size, top_param,
         f"{top_param} is {top}, more than this model's vocabulary of {m.tok.vocab_size} tokens"),
        (body.frequency_penalty != 0 or body.presence_penalty != 0, "frequency_penalty",
         "frequency_penalty and presence_penalty are not supported (only 0)"),
        (body.stream_options is not None and not body.stream, "stream_options", "stream_options needs stream: true"),
        (len(stops) > limits.max_stop, "stop", f"at most {limits.max_stop} stop strings, got {len(stops)}"),
        (any(not s for s in stops), "stop", "a stop string can't be empty"),
        (any(len(s) > limits.max_stop_chars for s in stops), "stop",
         f"a stop string is longer than {limits.max_stop_chars} characters"),
    ]
    for failed, param, message in checks:
        if failed:
            raise APIError(400, message, param)


def check_completion(body: CompletionRequest, prompts: list, m: ServedModel, limits: Limits) -> None:
    check_sampling(body, len(prompts), m, limits, body.logprobs, "logprobs")
    if body.echo and body.logprobs is not None and any(len(ids) > m.model.config.block_size for ids, _ in prompts):
        raise APIError(400, f"echo with logprobs needs prompts of at most block_size={m.model.config.block_size} tokens",
                       "echo")


def sampling_of(body: SamplingRequest, m: ServedModel, limits: Limits, top: int | None,
                end_tokens: tuple[int, ...] = ()) -> Sampling:
    """How the request's texts are sampled; max_tokens left out is the server's limit or the context, if less."""
    block = m.model.config.block_size
    max_tokens = body.max_tokens if body.max_tokens is not None else min(limits.max_tokens, block)
    return Sampling(max_tokens, body.temperature, body.top_k, body.top_p, stop_strings(body), body.seed, top,
                    end_tokens)


async def answer(m: ServedModel, reply: Reply, request: Request):
    """Queue the reply's job on the model's engine, then send the reply: streamed, or all at once."""
    if reply.job.sampling.max_tokens > 0:
        try:
            m.engine.submit(reply.job)
        except Busy as e:
            raise APIError(429, f"the server is busy ({e}); retry shortly", code="busy", headers={"Retry-After": "1"})
    if reply.body.stream:
        return StreamingResponse(reply.stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return await reply.collect(request)


def chat_tokenizer(m: ServedModel) -> ChatTokenizer:
    """m's tokenizer if it has the chat template; else a 400 that says how to make a chat model."""
    try:
        return require_chat_tokenizer(m.tok, f"model '{m.id}'")
    except TinyGPTError as e:
        raise APIError(400, str(e), "model", "model_not_chat") from None


def conversation_ids(m: ServedModel, messages: list[dict[str, str]], limits: Limits, reply: bool = False) -> list[int]:
    """The conversation's token ids in m's chat template (with reply: then the start of an assistant
    turn, what the model continues), bounded as a prompt is."""
    tok = chat_tokenizer(m)
    if len(messages) > limits.max_messages:
        raise APIError(400, f"at most {limits.max_messages} messages per request, got {len(messages)}", "messages")
    try:
        ids = prompt_ids(tok, messages) if reply else render(tok, messages)[0]
    except TinyGPTError as e:
        raise APIError(400, f"messages: {e}", "messages") from None
    if len(ids) > limits.max_prompt_tokens:
        raise APIError(400, f"the conversation is {len(ids)} tokens, more than the limit of {limits.max_prompt_tokens}",
                       "messages", "context_length_exceeded")
    return ids


def chat_prompt(m: ServedModel, messages: list[dict[str, str]], max_tokens: int, limits: Limits) -> list[int]:
    """What the model continues to write its reply: the conversation, without its oldest turns (a
    system message stays) until it fits prompt_room (model/data/chat.py): max_tokens of the context
    left for the reply, or half of it when max_tokens asks for more (past the context, it slides as a
    completion's does)."""
    conversation_ids(m, messages, limits, reply=True)  # bounds the whole conversation, so fitting it is cheap
    return prompt_ids(m.tok, fit_history(m.tok, messages, prompt_room(m.model.config.block_size, max_tokens)))


async def echo_parts(m: ServedModel, prompts: list, body: CompletionRequest) -> list[tuple[str, list | None]]:
    """Each prompt's text and, with logprobs, its tokens' log-probabilities (none for the first token)."""
    if body.logprobs is None:
        return [(text, None) for _, text in prompts]

    def compute() -> list:
        out = []
        for ids, text in prompts:
            idx = torch.tensor([ids], dtype=torch.long, device=m.engine.device)
            logits, _ = m.model(idx)  # (1, P, vocab): position i predicts token i + 1
            logits = cut_to_vocabulary(logits, m.tok.vocab_size)
            infos: list[TokenInfo | None] = [None]
            for i in range(1, len(ids)):
                logprobs, top = top_logprobs(m.tok, logits[0, i - 1], body.logprobs)
                infos.append(TokenInfo(ids[i], token_text(m.tok, ids[i]), float(logprobs[ids[i]]), top))
            out.append((text, (infos, [token_text(m.tok, t) for t in ids])))
        return out

    return await asyncio.wrap_future(m.engine.call(compute))


def logprobs_object(infos: list[TokenInfo | None], offsets: list[int], texts: list[str] | None = None) -> dict:
    """OpenAI's logprobs object for these tokens, at these text offsets; a token without info (the
    prompt's first, when echoed) is shown by its entry in texts."""
    return {
        "tokens": [texts[i] if info is None else info.text for i, info in enumerate(infos)],
        "token_logprobs": [None if info is None else info.logprob for info in infos],
        "top_logprobs": [None if info is None else dict(info.top) for info in infos],
        "text_offset": offsets,
    }


def text_bytes(text: str) -> list[int]:
    """The UTF-8 bytes of a token's text as token_text writes it ('bytes:\\xe2\\x80' for part of a character)."""
    if text.startswith("bytes:"):
        return list(bytes.fromhex(text.removeprefix("bytes:").replace("\\x", "")))
    return list(text.encode("utf-8"))


def chat_logprob(info: TokenInfo) -> dict:
    """OpenAI's chat logprobs entry for one token: its text, log-probability, bytes and alternatives."""
    return {"token": info.text, "logprob": info.logprob, "bytes": text_bytes(info.text),
            "top_logprobs": [{"token": t, "logprob": lp, "bytes": text_bytes(t)} for t, lp in info.top]}


class Reply:
    """Builds a reply from its job's events: all at once (`collect`), or as server-sent events
    (`stream`). The subclasses give the shape of a choice: a completion's text, or a chat message."""

    object_name = "text_completion"
    """The reply's "object" (a streamed chunk's is chunk_object)."""
    chunk_object = "text_completion"
    id_prefix = "cmpl-"

    def __init__(self, model_id: str, job: Job, prompts: list, body: SamplingRequest):
        self.model_id, self.job, self.body = model_id, job, body
        self.id = f"{self.id_prefix}{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.n_choices = len(job.choices)
        self.prompt_tokens = sum(len(ids) for ids, _ in prompts)
        self.tokens = [0] * self.n_choices

    def opening(self, index: int) -> dict | None:
        """The chunk choice a stream opens choice `index` with, if any."""
        return None

    def start(self, index: int) -> dict:
        """Choice `index` of a collected reply before its events."""
        raise NotImplementedError

    def part(self, event: Event) -> dict:
        """The chunk choice for an event."""
        raise NotImplementedError

    def merge(self, choice: dict, part: dict) -> None:
        """Add an event's chunk choice to the collected choice."""
        raise NotImplementedError

    def count(self, event: Event) -> Event:
        self.tokens[event.index] += event.tokens
        return event

    def usage(self) -> dict:
        completion = sum(self.tokens)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion}

    async def events(self):
        """The job's events until every choice has finished (or one failed)."""
        if self.job.sampling.max_tokens == 0:
            for index in range(self.n_choices):
                yield Event(index, finish_reason="length", tokens=0)
            return
        finished = 0
        while finished < self.n_choices:
            event = await self.job.events.get()
            if event.error is not None:
                raise APIError(503 if "shutting down" in event.error else 500, event.error)
            finished += event.finish_reason is not None
            yield self.count(event)

    def chunk(self, choices: list[dict], usage: dict | None = None) -> str:
        record = {"id": self.id, "object": self.chunk_object, "created": self.created, "model": self.model_id,
                  "choices": choices}
        if usage is not None:
            record["usage"] = usage
        return f"data: {json.dumps(record)}\n\n"

    async def stream(self):
        try:
            for index in range(self.n_choices):
                opening = self.opening(index)
                if opening is not None:
                    yield self.chunk([opening])
            try:
                async for event in self.events():
                    yield self.chunk([self.part(event)])
            except APIError as e:
                yield f"data: {json.dumps({'error': {'message': e.message, 'type': 'server_error'}})}\n\n"
            if self.body.stream_options is not None and self.body.stream_options.include_usage:
                yield self.chunk([], self.usage())
            yield "data: [DONE]\n\n"
        finally:
            self.job.cancel()  # the client went away, or everything is sent: stop generating either way

    async def collect(self, request: Request):
        choices = [self.start(index) for index in range(self.n_choices)]

        async def gather():
            async for event in self.events():
                self.merge(choices[event.index], self.part(event))

        task = asyncio.ensure_future(gather())
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=0.25)
                if not task.done() and await request.is_disconnected():
                    task.cancel()
                    return error_response(499, "the client closed the connection")
            task.result()  # raises the APIError of a failed generation
        finally:
            self.job.cancel()
            if not task.done():
                task.cancel()
        return {"id": self.id, "object": self.object_name, "created": self.created, "model": self.model_id,
                "choices": choices, "usage": self.usage()}


class CompletionReply(Reply):
    """/v1/completions' reply: each choice's text, with OpenAI's legacy logprobs (and the echoed prompt)."""

    def __init__(self, model_id: str, job: Job, prompts: list, body: CompletionRequest, echoed: list | None):
        super().__init__(model_id, job, prompts, body)
        self.echoed = echoed
        self.echoed_chars = [0] * self.n_choices  # characters of echoed prompt, per choice: where text_offset starts

    def echo_choice(self, index: int) -> dict:
        text, extra = self.echoed[index // self.body.n]
        logprobs = None
        if extra is not None:
            infos, texts = extra
            offsets = list(accumulate((len(t) for t in texts[:-1]), initial=0))
            logprobs = logprobs_object(infos, offsets, texts)
        self.echoed_chars[index] = len(text)
        return {"text": text, "index": index, "logprobs": logprobs, "finish_reason": None}

    def opening(self, index: int) -> dict | None:
        return self.echo_choice(index) if self.echoed is not None else None

    def start(self, index: int) -> dict:
        if self.echoed is not None:
            return self.echo_choice(index)
        return {"text": "", "index": index, "logprobs": None, "finish_reason": None}

    def part(self, event: Event) -> dict:
        logprobs = None
        if event.token is not None:
            logprobs = logprobs_object([event.token], [self.echoed_chars[event.index] + event.token.offset])
        return {"text": event.text, "index": event.index, "logprobs": logprobs, "finish_reason": event.finish_reason}

    def merge(self, choice: dict, part: dict) -> None:
        choice["text"] += part["text"]
        choice["finish_reason"] = part["finish_reason"]
        if part["logprobs"] is not None:
            if choice["logprobs"] is None:
                choice["logprobs"] = {key: [] for key in part["logprobs"]}
            for key, values in part["logprobs"].items():
                choice["logprobs"][key] += values


class ChatReply(Reply):
    """/v1/chat/completions' reply: each choice an assistant message (streamed as deltas, the first
    one naming the role), with OpenAI's chat logprobs. The end-of-turn token that ends a reply is not
    part of its content, nor of its logprobs."""

    object_name = "chat.completion"
    chunk_object = "chat.completion.chunk"
    id_prefix = "chatcmpl-"

    def opening(self, index: int) -> dict | None:
        return {"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}

    def start(self, index: int) -> dict:
        logprobs = {"content": []} if self.body.logprobs else None
        return {"index": index, "message": {"role": "assistant", "content": ""}, "logprobs": logprobs,
                "finish_reason": None}

    def part(self, event: Event) -> dict:
        logprobs = None
        if event.token is not None:
            content = [] if event.token.id in self.job.sampling.end_tokens else [chat_logprob(event.token)]
            logprobs = {"content": content}
        delta = {"content": event.text} if event.text else {}
        return {"index": event.index, "delta": delta, "logprobs": logprobs, "finish_reason": event.finish_reason}

    def merge(self, choice: dict, part: dict) -> None:
        choice["message"]["content"] += part["delta"].get("content", "")
        choice["finish_reason"] = part["finish_reason"]
        if part["logprobs"] is not None:
            choice["logprobs"]["content"] += part["logprobs"]["content"]
