"""Looking inside a loaded GPT: attention step by step, the logit lens, head scores, head ablation,
the embedding space and where one layer's parameters live.

Every analysis reads the model as it is, through forward hooks on its modules and the network's own
methods (`MultiHeadAttention.project_qkv`, `GPT.attention_patterns`), so it works for any model
tinygpt loads: learned or rotary positions, LayerNorm or RMSNorm, QK-norm, char, GPT-2 or own-BPE
tokenizers. Each function returns plain JSON-able dicts (the keys `python -m model.inspect --json`
prints and the server's /v1/inspect endpoints answer with); `model/tools/inspect.py` draws them.

Layers and heads are counted from 0, as in the state dict (transformer.h.0.attn ...); "layer -1" of
the residual stream is its value after the embeddings, before block 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from model.errors import TinyGPTError
from model.nn.gpt import GPT, IGNORE_INDEX
from model.nn.layers import apply_rotary
from model.nn.report import attention as attention_components
from model.sampling.generate import cut_to_vocabulary
from model.serving.engine import token_text

PROBE_SEED = 0
"""Seed of the repeated random-token sequence the induction score is measured on."""
PROBE_TOKENS = 50
"""Length of each half of that sequence (GPT-2's usual probe), at most what the context holds."""
HEAD_SCORES = ("previous_token", "induction", "first_token", "self", "mean_distance")
ABLATION_MODES = ("zero", "mean")
MAX_ROWS_PER_PASS = 16
"""Rows (windows x ablated copies) per forward pass of `ablate`: bounds its memory."""
MAX_LOGITS = 64 * 2**20
"""Most logits (rows x positions x vocabulary) `ablate` holds at once: GPT-2's 1,024 x 50,257 per
window fit once."""


# -- input --------------------------------------------------------------------------------------

def encode_text(tok, text: str) -> list[int]:
    """The token ids of a text to look at; an empty text or a character outside a character-level
    vocabulary is a TinyGPTError (one line)."""
    if not text:
        raise TinyGPTError("the text is empty; give some text to look at")
    ids = tok.encode(text)  # raises a TinyGPTError naming characters the vocabulary lacks
    if not ids:
        raise TinyGPTError("the text is empty; give some text to look at")
    return ids


def fit_context(ids: list[int], block_size: int, cut: str | None) -> tuple[list[int], int]:
    """ids cut to the model's context: (ids, offset of the first kept token). cut=None refuses a
    longer text; 'first' keeps its first block_size tokens, 'last' its last ones."""
    if len(ids) <= block_size:
        return ids, 0
    if cut == "first":
        return ids[:block_size], 0
    if cut == "last":
        return ids[-block_size:], len(ids) - block_size
    raise TinyGPTError(f"the text is {len(ids)} tokens, longer than the model's context of {block_size}; shorten "
                       f"it, or cut it to its first or last {block_size} tokens (--cut=first or --cut=last)")


def check_index(name: str, value: int, count: int, allow_negative: bool = False) -> int:
    """value as an index into `count` things (a negative one counts from the end when allowed)."""
    low = -count if allow_negative else 0
    if not low <= value < count:
        what = f"between {low} and {count - 1}" if allow_negative else f"between 0 and {count - 1}"
        raise TinyGPTError(f"{name} must be {what} (there are {count}), got {value}")
    return value % count


def device_of(model: GPT) -> torch.device:
    return model.lm_head.weight.device


def as_batch(model: GPT, ids: list[int]) -> Tensor:
    bad = [t for t in ids if not 0 <= t < model.config.vocab_size]
    if bad:
        raise TinyGPTError(f"token id {bad[0]} is outside the vocabulary (0 to {model.config.vocab_size - 1})")
    return torch.tensor([ids], dtype=torch.long, device=device_of(model))  # (1, T)


def texts(tok, ids: list[int] | Tensor) -> list[str]:
    return [token_text(tok, int(i)) for i in ids]


# -- reading the model through hooks ------------------------------------------------------------

@contextmanager
def hooked(hooks: list[tuple[torch.nn.Module, str, Callable]]) -> Iterator[None]:
    """Register (module, "forward" or "forward_pre", fn) hooks for the duration of a `with`."""
    handles = []
    try:
        for module, kind, fn in hooks:
            register = module.register_forward_pre_hook if kind == "forward_pre" else module.register_forward_hook
            handles.append(register(fn))
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def residual_stream(model: GPT, idx: Tensor) -> tuple[list[Tensor], Tensor]:
    """The residual stream of idx (B, T) after the embeddings and after each block, n_layer + 1 x
    (B, T, C), and the model's own logits (B, T, vocab) from the same forward pass."""
    blocks = model.transformer.h
    stream: list[Tensor] = []
    hooks = [(blocks[0], "forward_pre", lambda module, args: stream.append(args[0]))]
    hooks += [(block, "forward", lambda module, args, output: stream.append(output)) for block in blocks]
    with hooked(hooks):
        logits, _ = model(idx)
    return stream, logits


def unembed(model: GPT, x: Tensor) -> Tensor:
    """What the final norm and the LM head make of a residual stream x (..., C): logits (..., vocab)."""
    return model.lm_head(model.transformer.ln_f(x))


@torch.no_grad()
def queries_keys_values(model: GPT, layer: int, idx: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """For one layer: q, k, v (B, nh, T, hs) as its attention compares and mixes them (after
    QK-norm and rotary positions, as in MultiHeadAttention.forward), the attention block's input
    (B, T, C) and its output (B, T, C), taken from the model's explicit attention path."""
    attn = model.transformer.h[layer].attn
    seen: dict[str, Tensor] = {}

    def keep(module, args, output):
        seen["input"], seen["output"] = args[0], output

    with hooked([(attn, "forward", keep)]):
        model.attention_patterns(idx)
        x = seen["input"]
        q, k, v = attn.project_qkv(x)  # (B, nh, T, hs)
        if attn.q_norm is not None:
            q, k = attn.q_norm(q), attn.k_norm(k)
        if attn.rope:
            pos = torch.arange(x.shape[1], device=x.device)
            q, k = apply_rotary(q, pos, attn.rope_frequencies), apply_rotary(k, pos, attn.rope_frequencies)
    return q, k, v, x, seen["output"]


def head_slice(model: GPT, head: int) -> slice:
    hs = model.config.n_embd // model.config.n_head
    return slice(head * hs, (head + 1) * hs)


# -- 1. attention step by step ------------------------------------------------------------------

@torch.no_grad()
def attention_step(model: GPT, tok, ids: list[int], layer: int, head: int, position: int = -1) -> dict:
    """One head's attention for one query position, every step spelled out for every key: the dot
    product q.k ("scores"), scaled by 1/sqrt(head size) ("scaled"), the causal mask ("mask": True where
    the query may look), the softmax ("weights"), and each key's value vector after the output
    projection, times its weight ("contributions", each a vector of n_embd, with its length in
    "contribution_sizes"). Their sum, "output", is what this head adds to the residual stream at that
    position; "block_output" is the whole attention block's (every head, and W_O's bias)."""
    c = model.config
    layer = check_index("layer", layer, c.n_layer)
    head = check_index("head", head, c.n_head)
    idx = as_batch(model, ids)
    position = check_index("position", position, len(ids), allow_negative=True)
    model.eval()
    q, k, v, _, block_out = queries_keys_values(model, layer, idx)
    q_i, keys, values = q[0, head, position].float(), k[0, head].float(), v[0, head].float()  # (hs,), (T, hs), (T, hs)
    scores = keys @ q_i  # (T,): how well the query matches each key
    scaled = scores / math.sqrt(q.shape[-1])
    mask = torch.arange(len(ids), device=scores.device) <= position  # (T,): no looking ahead
    weights = scaled.masked_fill(~mask, float("-inf")).softmax(dim=-1)  # (T,)
    w_out = model.transformer.h[layer].attn.c_proj.weight[:, head_slice(model, head)].float()  # (C, hs): value "up"
    contributions = weights[:, None] * (values @ w_out.T)  # (T, C): each key's share of the head's output
    return {
        "layer": layer, "head": head, "position": position, "tokens": texts(tok, ids), "token_ids": list(ids),
        "head_size": q.shape[-1], "scale": 1.0 / math.sqrt(q.shape[-1]),
        "query": q_i.tolist(), "query_norm": float(q_i.norm()), "key_norms": keys.norm(dim=-1).tolist(),
        "scores": scores.tolist(), "scaled": scaled.tolist(), "mask": mask.tolist(), "weights": weights.tolist(),
        "contributions": contributions.tolist(), "contribution_sizes": contributions.norm(dim=-1).tolist(),
        "output": contributions.sum(dim=0).tolist(), "block_output": block_out[0, position].float().tolist(),
    }


# -- 2. logit lens ------------------------------------------------------------------------------

@torch.no_grad()
def logit_lens(model: GPT, tok, ids: list[int], top_k: int = 5) -> dict:
    """What the model would predict after the embeddings and after each block: the final norm and the
    LM head applied to the residual stream there. Per layer, the top_k next tokens at every position
    ("top") and the probability of the token the model finally predicts there ("p_final"). The last
    layer is the model's own output."""
    if top_k < 1:
        raise TinyGPTError(f"top_k must be at least 1, got {top_k}")
    model.eval()
    stream, logits = residual_stream(model, as_batch(model, ids))
    # only the tokenizer's ids count: a padded vocabulary's extra rows are no token (as in sampling)
    final = cut_to_vocabulary(logits[0], tok.vocab_size).argmax(dim=-1)  # (T,): the model's own prediction
    layers = []
    for depth, x in enumerate(stream):
        probs = cut_to_vocabulary(unembed(model, x)[0], tok.vocab_size).float().softmax(dim=-1)  # (T, vocab)
        p, top = probs.topk(min(top_k, probs.shape[-1]), dim=-1)  # (T, k)
        layers.append({
            "layer": "embeddings" if depth == 0 else depth - 1,
            "top": [[{"token": token_text(tok, t), "p": pt} for t, pt in zip(row_t, row_p)]
                    for row_t, row_p in zip(top.tolist(), p.tolist())],
            "p_final": probs.gather(-1, final[:, None])[:, 0].tolist(),
        })
    return {"tokens": texts(tok, ids), "token_ids": list(ids), "predicted": texts(tok, final), "layers": layers}


# -- 3. head scores -----------------------------------------------------------------------------

def induction_probe(model: GPT, tok, half: int = PROBE_TOKENS, seed: int = PROBE_SEED) -> tuple[list[int], int]:
    """A sequence of `half` distinct random tokens followed by the same tokens again (after an
    end-of-text token when the vocabulary has one), and the position where the repeat starts. Neither
    special tokens nor a newline (which starts a new document in many corpora) are drawn; `half` is
    cut to what the context and the vocabulary hold."""
    start = [tok.eot_token] if tok.eot_token is not None else []
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(tok.vocab_size, generator=generator).tolist()
    pool = [t for t in order[:4 * half] if t != tok.eot_token and token_text(tok, t) != "\n"]
    half = max(1, min(half, (model.config.block_size - len(start)) // 2, len(pool)))
    random_tokens = pool[:half]
    return start + random_tokens + random_tokens, len(start) + half


def pattern_scores(pattern: Tensor) -> dict[str, Tensor]:
    """Per head, scores of attention patterns (nh, T, T): mean weight on the previous token, on the
    first token, on itself, and the mean distance looked back (in tokens)."""
    T = pattern.shape[-1]
    positions = torch.arange(T, device=pattern.device)
    distance = (positions[:, None] - positions[None, :]).clamp(min=0).to(pattern.dtype)  # (T, T)
    previous = pattern.diagonal(offset=-1, dim1=-2, dim2=-1).mean(-1) if T > 1 else pattern.new_zeros(pattern.shape[0])
    return {
        "previous_token": previous,
        "first_token": pattern[..., :, 0].mean(-1),
        "self": pattern.diagonal(dim1=-2, dim2=-1).mean(-1),
        "mean_distance": (pattern * distance).sum(-1).mean(-1),
    }


def induction_scores(pattern: Tensor, repeat_start: int) -> Tensor:
    """Per head (nh, T, T): the mean weight that a token of the repeat puts on the token that followed
    its earlier occurrence (query i, key i - half + 1): what an induction head does."""
    half = pattern.shape[-1] - repeat_start
    queries = torch.arange(repeat_start, pattern.shape[-1], device=pattern.device)
    return pattern[:, queries, queries - half + 1].mean(-1)


@torch.no_grad()
def head_scores(model: GPT, tok, ids: list[int], sort: str = "induction") -> dict:
    """Every head's attention pattern over the text ("patterns", (n_layer, n_head, T, T)) and, per
    head, the standard scores: previous-token, first-token (attention sink), self and mean attention
    distance over the text, and the induction score on a repeated random-token sequence. "heads" is
    ranked by `sort` (highest first)."""
    if sort not in HEAD_SCORES:
        raise TinyGPTError(f"sort must be one of {', '.join(HEAD_SCORES)}, got '{sort}'")
    model.eval()
    patterns = torch.stack(model.attention_patterns(as_batch(model, ids)))[:, 0].float()  # (L, nh, T, T)
    probe, repeat_start = induction_probe(model, tok)
    probe_patterns = model.attention_patterns(as_batch(model, probe))
    heads = []
    for layer in range(model.config.n_layer):
        scores = pattern_scores(patterns[layer])
        scores["induction"] = induction_scores(probe_patterns[layer][0].float(), repeat_start)
        heads += [{"layer": layer, "head": h, **{name: float(scores[name][h]) for name in HEAD_SCORES}}
                  for h in range(model.config.n_head)]
    heads.sort(key=lambda row: -row[sort])
    return {"tokens": texts(tok, ids), "sort": sort, "heads": heads, "probe_tokens": len(probe),
            "patterns": patterns.cpu()}


# -- 4. head ablation ---------------------------------------------------------------------------

def ablate(model: GPT, x: Tensor, y: Tensor, mode: str = "zero",
           progress: Callable[[int, int], None] | None = None) -> dict:
    """The loss over windows x, y (N, T) (IGNORE_INDEX targets left out) with each head's output, in
    turn, zeroed (mode "zero") or replaced by its mean over these windows (mode "mean"): "heads" lists
    {"layer", "head", "loss"}, beside "baseline_loss" with no head touched.

    A head's output is its slice of the output projection's input (c_proj's), so a forward pre-hook
    on c_proj replaces it. The heads of one layer are ablated in one batch: the windows are repeated
    once per head and each copy has a different head replaced; the blocks before that layer are not
    run again (their output is the baseline's). progress(done, total) is called after each layer."""
    steps = ablation_steps(model, x, y, mode)
    result = next(steps)
    for layer, rows in enumerate(steps):
        result["heads"] += rows
        if progress is not None:
            progress(layer + 1, model.config.n_layer)
    return result


def ablation_steps(model: GPT, x: Tensor, y: Tensor, mode: str = "zero") -> Iterator:
    """`ablate` one piece at a time: first the result with the baseline loss and no heads yet, then
    each layer's rows of "heads" in turn (so a server can answer other requests between layers).
    The windows go through in groups whose logits fit in MAX_LOGITS values."""
    if mode not in ABLATION_MODES:
        raise TinyGPTError(f"mode must be one of {', '.join(ABLATION_MODES)}, got '{mode}'")
    model.eval()
    c = model.config
    device = device_of(model)
    x, y = x.to(device), y.to(device)
    count = int((y != IGNORE_INDEX).sum())
    if count == 0:
        raise TinyGPTError("the text has no token to predict; it needs at least two tokens")
    per_group = max(1, MAX_LOGITS // (x.shape[1] * c.vocab_size))
    groups = [(x[i:i + per_group], y[i:i + per_group]) for i in range(0, len(x), per_group)]
    inputs: list[list[Tensor]] = []  # per group, the residual stream entering each block (baseline pass)
    head_inputs: list[list[Tensor]] = []  # per group, each layer's c_proj input: the heads' outputs side by side
    baseline = 0.0
    blocks = model.transformer.h
    for xg, yg in groups:
        entering, heads_out = [], []
        hooks = [(block, "forward_pre", lambda module, args, into=entering: into.append(args[0])) for block in blocks]
        hooks += [(block.attn.c_proj, "forward_pre", lambda module, args, into=heads_out: into.append(args[0]))
                  for block in blocks]
        with torch.no_grad(), hooked(hooks):
            logits, _ = model(xg)
        baseline += summed_cross_entropy(logits, yg)
        del logits
        inputs.append(entering)
        head_inputs.append(heads_out)
    yield {"baseline_loss": baseline / count, "mode": mode, "tokens": count, "heads": []}
    for layer in range(c.n_layer):
        means = None
        if mode == "mean":
            means = head_means(torch.cat([h[layer] for h in head_inputs]), y)
        losses = [0.0] * c.n_head
        for (_, yg), entering in zip(groups, inputs):
            group_losses = losses_with_heads_replaced(model, entering[layer], yg, layer, list(range(c.n_head)), means)
            losses = [a + b for a, b in zip(losses, group_losses)]
        yield [{"layer": layer, "head": h, "loss": loss / count} for h, loss in enumerate(losses)]


def run_blocks(model: GPT, x: Tensor, first: int) -> Tensor:
    """The residual stream after the last block, from the stream x (B, T, C) entering block `first`
    (rotary positions count from 0, as in the model's own forward pass)."""
    for block in model.transformer.h[first:]:
        x = block(x)
    return x


def summed_cross_entropy(logits: Tensor, y: Tensor) -> float:
    """Cross-entropy of logits (B, T, vocab) against y (B, T), summed over targets that count."""
    return float(F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX,
                                 reduction="sum"))


def head_means(head_input: Tensor, y: Tensor) -> Tensor:
    """Each channel of c_proj's input averaged over the positions that have a target: (C,)."""
    counted = (y != IGNORE_INDEX).flatten()
    return head_input.flatten(0, 1)[counted].mean(dim=0)


@torch.no_grad()
def losses_with_heads_replaced(model: GPT, stream: Tensor, y: Tensor, layer: int, heads: list[int | None],
                               means: Tensor | None = None) -> list[float]:
    """Summed losses of the windows whose residual stream entering `layer` is `stream` (N, T, C),
    once per entry of `heads`: with that head's output in `layer` zeroed (or set to `means`, (C,)),
    or untouched for None. The copies run MAX_ROWS_PER_PASS rows at a time."""
    N = stream.shape[0]
    per_pass = max(1, MAX_ROWS_PER_PASS // N)
    losses: list[float] = []
    for start in range(0, len(heads), per_pass):
        group = heads[start:start + per_pass]

        def replace(module, args, group=group):
            out = args[0].clone()  # (len(group) * N, T, C): the heads' outputs, copy after copy
            for copy, head in enumerate(group):
                if head is not None:
                    rows, channels = slice(copy * N, (copy + 1) * N), head_slice(model, head)
                    out[rows, :, channels] = 0.0 if means is None else means[channels]
            return (out, *args[1:])

        with hooked([(model.transformer.h[layer].attn.c_proj, "forward_pre", replace)]):
            final = run_blocks(model, stream.repeat(len(group), 1, 1), layer)  # (len(group) * N, T, C)
        for copy in range(len(group)):
            rows = final[copy * N:(copy + 1) * N]
            losses.append(summed_cross_entropy(unembed(model, rows), y))
    return losses


# -- 5. embeddings ------------------------------------------------------------------------------

def single_token(tok, text: str) -> int:
    """The id of a text that is exactly one token of the vocabulary."""
    ids = encode_text(tok, text)
    if len(ids) != 1:
        raise TinyGPTError(f"'{text}' is {len(ids)} tokens in this vocabulary ({', '.join(repr(t) for t in texts(tok, ids))}), "
                           "not one; pick a single token")
    return ids[0]


@torch.no_grad()
def nearest_tokens(model: GPT, tok, token: int, k: int = 10) -> dict:
    """The k tokens whose embeddings (rows of the token embedding) are nearest to `token`'s, by cosine
    similarity (the angle only) and by dot product (the angle and the lengths), itself left out."""
    table = model.transformer.wte.weight[:tok.vocab_size].detach().float()  # (vocab, C): the tokenizer's ids
    k = min(k, table.shape[0] - 1)
    query = table[token]
    dots = table @ query  # (vocab,)
    cosines = dots / (table.norm(dim=-1) * query.norm()).clamp(min=1e-12)
    out = {"token": token_text(tok, token), "token_id": token}
    for name, values in (("cosine", cosines), ("dot", dots)):
        values = values.clone()
        values[token] = float("-inf")
        best, ids = values.topk(k)
        out[name] = [{"token": token_text(tok, i), "token_id": i, "value": v} for i, v in zip(ids.tolist(), best.tolist())]
    return out


@torch.no_grad()
def embedding_map(model: GPT, tok, n: int = 300, counts: np.ndarray | None = None) -> dict:
    """A 2-D PCA map of token embeddings: every token when there are at most n, else the n most
    frequent by `counts` (vocab,) (without counts: the lowest ids, which in a BPE are its first
    merges, roughly the most frequent)."""
    table = model.transformer.wte.weight[:tok.vocab_size].detach().float()  # (vocab, C): the tokenizer's ids
    vocab = table.shape[0]
    if vocab <= n:
        ids = torch.arange(vocab)
    elif counts is not None:
        ids = torch.from_numpy(np.argsort(-counts, kind="stable")[:n].copy())
    else:
        ids = torch.arange(n)
    points = table[ids.to(table.device)]
    centred = points - points.mean(dim=0)
    _, singular, directions = torch.linalg.svd(centred, full_matrices=False)  # directions (r, C)
    axes = directions[:2]
    axes = axes * torch.where(axes.max(dim=1).values.abs() >= axes.min(dim=1).values.abs(), 1.0, -1.0)[:, None]
    xy = centred @ axes.T  # (n, 2)
    share = (singular[:2] ** 2 / (singular ** 2).sum()).tolist()
    return {"tokens": texts(tok, ids.tolist()), "token_ids": ids.tolist(), "x": xy[:, 0].tolist(),
            "y": xy[:, 1].tolist(), "explained": share}


@torch.no_grad()
def residual_trajectory(model: GPT, tok, ids: list[int], position: int = -1) -> dict:
    """How one position's residual vector moves through the layers: after the embeddings and after
    each block, its cosine similarity to the token's own input embedding and to the unembedding (the LM
    head's row) of the token the model finally predicts there."""
    idx = as_batch(model, ids)
    position = check_index("position", position, len(ids), allow_negative=True)
    model.eval()
    stream, logits = residual_stream(model, idx)
    predicted = int(cut_to_vocabulary(logits[0, position], tok.vocab_size).argmax())
    embedding = model.transformer.wte.weight[ids[position]].float()
    unembedding = model.lm_head.weight[predicted].float()
    layers = []
    for depth, x in enumerate(stream):
        vector = x[0, position].float()
        layers.append({"layer": "embeddings" if depth == 0 else depth - 1, "norm": float(vector.norm()),
                       "cos_input": float(F.cosine_similarity(vector, embedding, dim=0)),
                       "cos_predicted": float(F.cosine_similarity(vector, unembedding, dim=0))})
    return {"position": position, "token": token_text(tok, ids[position]), "predicted": token_text(tok, predicted),
            "layers": layers}


# -- 6. parameters per head ---------------------------------------------------------------------

@torch.no_grad()
def head_parameters(model: GPT, layer: int = 0) -> dict:
    """Where one layer's attention parameters live, per head: W_Q, W_K, W_V (value "down", n_embd ->
    head size) and W_O's slice (value "up", head size -> n_embd), with the shapes of the model's own
    tensors and the counts of `python -m model.report` (model/nn/report.py), which they match."""
    c = model.config
    layer = check_index("layer", layer, c.n_layer)
    attn = model.transformer.h[layer].attn
    components = {comp.name: comp for comp in attention_components(c)}
    d, hs = c.n_embd, c.n_embd // c.n_head
    w_q, w_k, w_v = attn.c_attn.weight.split(d, dim=0)  # 3 x (C, C): rows are output channels
    b_q, b_k, b_v = (None, None, None) if attn.c_attn.bias is None else attn.c_attn.bias.split(d)
    heads = []
    for h in range(c.n_head):
        rows = head_slice(model, h)
        entry = {"head": h}
        for name, weight, bias in (("W_Q", w_q, b_q), ("W_K", w_k, b_k), ("W_V", w_v, b_v)):
            per_head = components[name].per_head
            entry[name] = {"shape": [d, hs], "weights": weight[rows].numel(),
                           "biases": 0 if bias is None else bias[rows].numel(),
                           "report": {"weights": per_head[0], "biases": per_head[1]}}
        w_o = attn.c_proj.weight[:, rows]  # (C, hs): this head's columns of the output projection
        per_head = components["W_O"].per_head
        entry["W_O"] = {"shape": [hs, d], "weights": w_o.numel(), "biases": 0,
                        "report": {"weights": per_head[0], "biases": per_head[1]}}
        entry["total"] = sum(entry[n]["weights"] + entry[n]["biases"] for n in ("W_Q", "W_K", "W_V", "W_O"))
        heads.append(entry)
    shared = 0 if attn.c_proj.bias is None else attn.c_proj.bias.numel()
    return {"layer": layer, "n_head": c.n_head, "n_embd": d, "head_size": hs, "heads": heads,
            "shared": {"W_O bias": shared}, "attention_total": sum(comp.total for comp in components.values())}
