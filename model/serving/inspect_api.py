"""The playground's "Inside" panel's endpoints: model/evaluation/inspect.py's views over HTTP.

    POST /v1/inspect/lens        {"prompt", "top_k"}                       the logit lens
    POST /v1/inspect/heads       {"prompt", "sort"}                        head scores and every head's pattern
    POST /v1/inspect/step        {"prompt", "layer", "head", "position"}   attention step by step
    POST /v1/inspect/ablate      {"prompt", "mode", "stream"}              loss with each head ablated
    POST /v1/inspect/embeddings  {"token" | "prompt", "position", "k", "map_tokens"}   nearest tokens, PCA map
    POST /v1/inspect/params      {"layer"}                                 parameters per head

Every request may name a served model ("model", by id only). Like /v1/attention, a text longer than
the context (or than max_attention_tokens) is cut to its last tokens and "offset" says how many were
left out; ablate scores up to max_ablate_tokens tokens in windows of the context, one layer per turn
of the decoding thread, and with "stream": true sends {"progress": {"done", "total"}} events before
{"result": ...}. Bad input (an out-of-range layer, head or position, an empty text, a token that is
not in the vocabulary) gets a 400 with one line saying what.
"""


import asyncio
import json
from collections.abc import Callable
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI
from fastapi.responses import StreamingResponse
from pydantic import Field, field_validator

from model.errors import TinyGPTError
from model.evaluation import inspect as analyses
from model.serving.models import ServedModel


def round_floats(value: Any, digits: int = 5) -> Any:
    """value with every float rounded (the page needs no more; the replies stay small)."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, list):
        return [round_floats(v, digits) for v in value]
    if isinstance(value, dict):
        return {k: round_floats(v, digits) for k, v in value.items()}
    return value


def add_inspect_routes(app: FastAPI, pick: Callable[[str | None], ServedModel], limits, check_key,
                       strict: type, api_error: type, encode_prompts: Callable) -> None:
    """Add the /v1/inspect/* endpoints to the server's app (model/serving/api.py's create_app)."""

    class TextRequest(strict):
        model: str | None = Field(None, max_length=200)
        prompt: Any = Field(..., description="text, or a list of token ids")

        @field_validator("prompt", mode="before")
        @classmethod
        def check_prompt(cls, value: Any) -> Any:
            if isinstance(value, str) or (isinstance(value, list) and value and all(
                    isinstance(t, int) and not isinstance(t, bool) for t in value)):
                return value
            raise ValueError("must be a string or a non-empty list of token ids")

    class LensRequest(TextRequest):
        top_k: int = Field(5, ge=1, le=20)

    class HeadsRequest(TextRequest):
        sort: str = "induction"

    class StepRequest(TextRequest):
        layer: int = 0
        head: int = 0
        position: int = -1

    class AblateRequest(TextRequest):
        mode: str = "zero"
        stream: bool = False

    class EmbeddingsRequest(strict):
        model: str | None = Field(None, max_length=200)
        token: str | None = Field(None, max_length=200)
        prompt: str | None = Field(None, max_length=100_000)
        position: int = -1
        k: int = Field(10, ge=1, le=50)
        map_tokens: int = Field(0, ge=0, le=2000)

    class ParamsRequest(strict):
        model: str | None = Field(None, max_length=200)
        layer: int = 0

    def ids_of(m: ServedModel, prompt: Any, keep: int, windows: bool = False) -> tuple[list[int], int]:
        """The prompt's last `keep` token ids (and no more than the context, unless they are cut
        into windows of it), and how many were left out before them."""
        if isinstance(prompt, str) and not prompt:
            raise api_error(400, "the prompt is empty; give some text to look at", "prompt")
        (ids, _), = encode_prompts(m, prompt, limits)
        keep = keep if windows else min(keep, m.model.config.block_size)
        offset = max(0, len(ids) - keep)
        return ids[offset:], offset

    async def run(m: ServedModel, compute: Callable[[], Any]) -> Any:
        """compute() on the model's decoding thread; a TinyGPTError (bad input) becomes a 400."""
        try:
            return await asyncio.wrap_future(m.engine.call(compute))
        except TinyGPTError as e:
            raise api_error(400, str(e)) from None

    def reply(kind: str, m: ServedModel, result: dict, **extra: Any) -> dict:
        return {"object": f"inspect.{kind}", "model": m.id, **round_floats(result), **extra}

    @app.post("/v1/inspect/lens", dependencies=[Depends(check_key)])
    async def lens(body: LensRequest) -> dict:
        m = pick(body.model)
        ids, offset = ids_of(m, body.prompt, limits.max_attention_tokens)
        return reply("lens", m, await run(m, lambda: analyses.logit_lens(m.model, m.tok, ids, body.top_k)),
                     offset=offset)

    @app.post("/v1/inspect/heads", dependencies=[Depends(check_key)])
    async def heads(body: HeadsRequest) -> dict:
        m = pick(body.model)
        if body.sort not in analyses.HEAD_SCORES:
            raise api_error(400, f"sort must be one of {', '.join(analyses.HEAD_SCORES)}, got '{body.sort}'", "sort")
        ids, offset = ids_of(m, body.prompt, limits.max_attention_tokens)
        c = m.model.config
        size = c.n_layer * c.n_head * len(ids) ** 2
        if size > limits.max_attention_values:
            raise api_error(400, f"{c.n_layer} layers x {c.n_head} heads over {len(ids)} tokens is {size:,} weights, "
                            f"more than the limit of {limits.max_attention_values:,}: shorten the text", "prompt")

        def compute() -> dict:
            result = analyses.head_scores(m.model, m.tok, ids, body.sort)
            patterns = result.pop("patterns")
            result["patterns"] = (patterns.double() * 1e4).round().div(1e4).tolist()  # (L, nh, T, T)
            return result

        return reply("heads", m, await run(m, compute), offset=offset)

    @app.post("/v1/inspect/step", dependencies=[Depends(check_key)])
    async def step(body: StepRequest) -> dict:
        m = pick(body.model)
        ids, offset = ids_of(m, body.prompt, limits.max_attention_tokens)
        return reply("step", m, await run(m, lambda: analyses.attention_step(
            m.model, m.tok, ids, body.layer, body.head, body.position)), offset=offset)

    @app.post("/v1/inspect/ablate", dependencies=[Depends(check_key)])
    async def ablate(body: AblateRequest):
        m = pick(body.model)
        if body.mode not in analyses.ABLATION_MODES:
            raise api_error(400, f"mode must be one of {', '.join(analyses.ABLATION_MODES)}, got '{body.mode}'", "mode")
        ids, offset = ids_of(m, body.prompt, limits.max_ablate_tokens + 1, windows=True)
        if len(ids) < 2:
            raise api_error(400, "the text has no token to predict; it needs at least two tokens", "prompt")
        from model.data.dataset import eval_windows

        x, y = eval_windows(np.array(ids, dtype=np.int64), m.model.config.block_size)
        steps = analyses.ablation_steps(m.model, x, y, body.mode)
        total = m.model.config.n_layer

        async def pieces():
            """The baseline, then each layer's heads: one turn of the decoding thread each."""
            result = await run(m, lambda: next(steps))
            for layer in range(total):
                result["heads"] += await run(m, lambda: next(steps))
                yield layer + 1, result

        if not body.stream:
            result = None
            async for _, result in pieces():
                pass
            return reply("ablate", m, result, offset=offset)

        async def events():
            try:
                async for done, result in pieces():
                    yield f"data: {json.dumps({'progress': {'done': done, 'total': total}})}\n\n"
                yield f"data: {json.dumps({'result': reply('ablate', m, result, offset=offset)})}\n\n"
            except Exception as e:  # the stream has started: the error goes in it
                message = e.message if isinstance(e, api_error) else "internal error while ablating; see the server's log"
                yield f"data: {json.dumps({'error': {'message': message}})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.post("/v1/inspect/embeddings", dependencies=[Depends(check_key)])
    async def embeddings(body: EmbeddingsRequest) -> dict:
        m = pick(body.model)
        if body.token is None and not body.prompt:
            raise api_error(400, "give a 'token' (its neighbours) or a 'prompt' (a position's path through the layers)",
                            "token")
        ids, offset = ids_of(m, body.prompt, limits.max_attention_tokens) if body.prompt else (None, 0)

        def compute() -> dict:
            out: dict[str, Any] = {}
            if body.token is not None:
                token = analyses.single_token(m.tok, body.token)
                out["neighbours"] = analyses.nearest_tokens(m.model, m.tok, token, body.k)
            if ids is not None:
                out["trajectory"] = analyses.residual_trajectory(m.model, m.tok, ids, body.position)
            if body.map_tokens:
                out["map"] = analyses.embedding_map(m.model, m.tok, body.map_tokens)
            return out

        return reply("embeddings", m, await run(m, compute), offset=offset)

    @app.post("/v1/inspect/params", dependencies=[Depends(check_key)])
    async def params(body: ParamsRequest) -> dict:
        m = pick(body.model)
        return reply("params", m, await run(m, lambda: analyses.head_parameters(m.model, body.layer)))

