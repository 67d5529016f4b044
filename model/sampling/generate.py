"""Sampling text from a trained GPT, one token at a time.

The prompt is run through the model once (prefill), filling every layer's KV cache; after that each
new token is a single query against the cached keys and values, so a step costs one token's worth of
compute instead of the whole context's.

Past block_size the context slides: the model always sees the last block_size tokens, with positions
counted from the first of them, exactly as a model without a cache that crops its input each step.
Because the learned position embeddings then shift by one for every token, no cached key stays
valid, so each step past block_size re-prefills the cache from the last block_size tokens. Greedy
output is therefore identical with and without the cache at every length; the cache just stops
saving time once the text is longer than the context.

Several prompts (or several samples of one prompt) decode as one batch: shorter prompts are padded
on the left and a key-padding mask hides the padding, with positions counted from each row's first
real token, so every row gets the same tokens as it would alone.
"""

from __future__ import annotations

import sys
from collections.abc import Collection, Iterator, Sequence

import torch
from torch import Tensor

from model.errors import TinyGPTError
from model.fused import apply_kernels
from model.nn.gpt import GPT


def sample_next(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Pick the next token for each row of logits (B, vocab) -> (B,).

    temperature 0 is greedy (argmax); top_k keeps the k most likely tokens; top_p keeps the smallest
    set of most likely tokens whose probabilities add up to at least top_p (nucleus sampling).
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float()
    # shifted so the largest is 0, and divided by at least float32's smallest normal number: a tiny
    # temperature then drives the others to -inf (greedy, its limit), never to inf - inf or 0 / 0 = nan
    logits = (logits - logits.max(dim=-1, keepdim=True).values) / max(temperature, torch.finfo(logits.dtype).tiny)
    if top_k is not None and top_k > 0 and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0.0 < top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # drop a token when the tokens ranked above it already reach top_p (the top token always stays)
        drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= top_p
        drop_sorted[:, 0] = False  # also when top_p is below float32's resolution
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


def cut_to_vocabulary(logits: Tensor, vocab_size: int | None) -> Tensor:
    """logits (..., model's vocab) -> (..., vocab_size): only the ids the tokenizer has. A model can
    have more vocabulary rows than its tokenizer has tokens (padded for speed, see
    model/training/trainer.py's padded_vocab_size, or trained with a larger --vocab_size); those ids
    are no token, so they are never sampled, ranked or scored. vocab_size None keeps every row."""
    return logits if vocab_size is None else logits[..., :vocab_size]


def prepare_for_sampling(model: GPT, dtype: torch.dtype = torch.float32, c_decode: bool = True) -> GPT:
    """Cast the model to dtype for inference, let the C kernels run it (apply_kernels, unless they are
    switched off) and lay its weights out for fast decoding, in place; returns the model in eval mode.

    Decoding one token multiplies a single row by each weight matrix, which is limited by how fast
    the weights stream from memory. On a CPU, with c_decode (the default), products of up to 16 rows
    (a batch's decoding step, a short prompt) go through the C row-dot kernels, which read each weight
    once for all the rows, at close to the memory bandwidth, and a batch-1 decoding step runs whole
    in C, without PyTorch's per-op overhead between the products (model/kernels/decode.py). Where
    those can't be built or are switched off (TINYGPT_KERNELS=0), or with c_decode=False, every
    linear layer's weight is stored transposed in memory (column-major) instead: PyTorch computes
    F.linear(x, W) as x @ W.t(), and with W row-major that is a transposed view that the CPU BLAS
    reads at a fraction of the bandwidth, while with W column-major, W.t() is a plain row-major
    (in, out) matrix whose product streams faster. Shapes, names and results are
    unchanged either way (only the summation order inside a product may differ in the last bits).
    """
    apply_kernels(model).to(dtype).eval()
    if model.lm_head.weight.device.type != "cpu":
        return model  # GPU libraries read either layout at full speed: the relayout below is for CPU BLAS
    if c_decode:
        from model.kernels import build
        from model.kernels.decode import FastDecoder, use_rowdot

        if use_rowdot(model):
            try:
                FastDecoder.attach(model, build.library())
            except TinyGPTError as e:  # an architecture the C step doesn't implement: PyTorch's decodes it
                print(f"note: {e}; decoding in PyTorch", file=sys.stderr)
            return model
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            weight = module.weight  # the tied LM head is the token embedding: converted once
            if weight.is_contiguous():
                weight.data = weight.data.t().contiguous().t()  # same (out, in) shape, column-major
    return model


def left_pad(prompts: Sequence[Sequence[int]], device: str | torch.device = "cpu") -> tuple[Tensor, Tensor | None]:
    """Token lists of different lengths -> ids (B, T) padded on the left, and the padding mask
    (B, T), True at padding (None when all prompts have the same length)."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    T = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), T, dtype=torch.long)
    pad = torch.ones(len(prompts), T, dtype=torch.bool)
    for row, p in enumerate(prompts):
        ids[row, T - len(p):] = torch.tensor(list(p), dtype=torch.long)
        pad[row, T - len(p):] = False
    return ids.to(device), (pad.to(device) if pad.any() else None)


@torch.inference_mode()
def generate(
    model: GPT,
    prompts: Tensor | Sequence[Sequence[int]],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    vocab_size: int | None = None,
) -> Iterator[Tensor]:
    """Yield the next token ids (B,) for max_new_tokens steps, continuing the prompts: a (B, T)
    tensor, or a list of token lists of any lengths (left-padded into one batch).

    use_cache=False recomputes the whole (cropped) context at every step; it exists to check the
    cache against, and gives the same greedy tokens. vocab_size: the tokenizer's, when the model has
    more rows (a vocabulary padded for speed); ids from vocab_size up are never sampled.
    """
    model.eval()
    device = model.lm_head.weight.device
    if isinstance(prompts, Tensor):
        idx, pad = prompts.to(device), None
    else:
        idx, pad = left_pad(prompts, device)
    block_size = model.config.block_size
    caches = model.make_caches() if use_cache else None
    fast = getattr(model, "fast_decoder", None)  # decoding one row in C (model/kernels/decode.py)
    if fast is not None and (not use_cache or pad is not None or idx.size(0) != 1 or not fast.matches(model)):
        fast = None
    new = idx  # tokens the model hasn't seen yet
    for _ in range(max_new_tokens):
        window = slice(max(0, idx.size(1) - block_size), idx.size(1))
        if caches is not None and (window.start > 0 or caches[0].length == 0):
            for cache in caches:  # (re)fill the cache from the visible window
                cache.reset()
            new = idx[:, window]
        elif caches is None:
            new = idx[:, window]
        window_pad = None if pad is None else pad[:, window]
        if window_pad is not None and not window_pad.any():
            window_pad = None
        if fast is not None and new.size(1) == 1 and fast.usable(caches):
            logits = fast.step(int(new[0, 0]), caches)  # (1, vocab)
        else:
            logits = model.next_logits(new, window_pad, caches)  # (B, vocab)
        logits = cut_to_vocabulary(logits, vocab_size)
        next_ids = sample_next(logits, temperature, top_k, top_p, generator)  # (B,)
        # only the last block_size tokens are ever looked at again; keeping one more than that (so the
        # window still slides) bounds memory however many tokens are asked for
        idx = torch.cat((idx, next_ids[:, None]), dim=1)[:, -(block_size + 1) :]
        if pad is not None:
            pad = torch.cat((pad, pad.new_zeros(pad.size(0), 1)), dim=1)[:, -(block_size + 1) :]
        new = next_ids[:, None]
        yield next_ids


class StopAtString:
    """One sample's text as it streams in, cut at the first stop string, which is left out.

    Text that could still turn out to be the start of a stop string is held back until the next
    piece shows whether it is, so nothing printed ever has to be taken back.
    """

    def __init__(self, stops: Sequence[str] = ()):
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.stopped = False

    def push(self, text: str) -> str:
        """Add text; return the part that is now certain to be output."""
        if self.stopped:
            return ""
        self.pending += text
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.pending, self.stopped = self.pending[: min(hits)], "", True
            return out
        hold = max((n for s in self.stops for n in range(1, len(s)) if self.pending.endswith(s[:n])), default=0)
        out, self.pending = self.pending[: len(self.pending) - hold], self.pending[len(self.pending) - hold:]
        return out

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


@torch.no_grad()
def generate_text(
    model: GPT,
    tok,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop: Sequence[str] = (),
    seed: int | None = None,
    use_cache: bool = True,
    stop_tokens: Collection[int] = (),
) -> Iterator[tuple[int, str]]:
    """Yield (row, text) pieces of each prompt's continuation as its tokens arrive, decoding with
    tokenizer `tok`. A row ends at its first stop string (left out of the text) or at its first token
    in `stop_tokens` (e.g. a chat model's end-of-turn token, also left out); generation ends when
    every row has, or after max_new_tokens. The same seed gives the same text."""
    from model.data.tokenizer import StreamDecoder

    device = model.lm_head.weight.device
    generator = torch.Generator(device=device)
    if seed is not None:
        generator.manual_seed(seed)
    else:
        generator.seed()
    decoders = [StreamDecoder(tok) for _ in prompts]
    stoppers = [StopAtString(stop) for _ in prompts]
    tokens = generate(model, prompts, max_new_tokens, temperature, top_k, top_p, generator, use_cache, tok.vocab_size)
    for next_ids in tokens:
        for row, token in enumerate(next_ids.tolist()):
            if token in stop_tokens and not stoppers[row].stopped:  # the row ends here: out with what it held
                text = stoppers[row].push(decoders[row].flush()) + stoppers[row].flush()
                stoppers[row].stopped = True
            else:
                text = stoppers[row].push(decoders[row].push([token]))
            if text:
                yield row, text
        if all(s.stopped for s in stoppers):
            return
    for row, (decoder, stopper) in enumerate(zip(decoders, stoppers)):
        text = stopper.push(decoder.flush()) + stopper.flush()  # a stopped row has nothing left
        if text:
            yield row, text
