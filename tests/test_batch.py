"""Continuous batching (model/sampling/batch.py): sequences that join and leave a running batch get
the same greedy tokens as generate() gives each of them alone."""

from __future__ import annotations

import pytest

from helpers import peaky_gpt
from model.nn.gpt import GPT
from model.sampling.batch import RunningBatch
from model.sampling.generate import generate, prepare_for_sampling



def alone(model: GPT, prompt: list[int], n: int) -> list[int]:
    return [int(t) for t in generate(model, [prompt], n, temperature=0.0)]


def run_schedule(model: GPT, schedule: list[tuple[int, list[int], int]], capacity: int) -> list[list[int]]:
    """Greedy decoding of (join step, prompt, tokens) sequences through one RunningBatch."""
    batch = RunningBatch(model, capacity)
    out: list[list[int]] = [[] for _ in schedule]
    live: dict = {}  # Sequence -> (index, next token)
    step = 0
    while step == 0 or live or any(s >= step for s, _, _ in schedule):
        for i, (start, prompt, n) in enumerate(schedule):
            if start == step:
                seq, logits = batch.join(prompt)
                live[seq] = i
                out[i].append(int(logits.argmax()))
        for seq, i in list(live.items()):
            if len(out[i]) == schedule[i][2]:
                batch.leave(seq)
                del live[seq]
        if live:
            logits = batch.step({seq: out[i][-1] for seq, i in live.items()})
            for seq, i in live.items():
                out[i].append(int(logits[seq].argmax()))
        step += 1
    return out


@pytest.mark.parametrize("shape", [
    dict(),
    dict(pos_embedding="rope", norm="rmsnorm", qk_norm=True, activation="relu2", bias=False),
])
@pytest.mark.parametrize("c_decode", [False, True])
def test_joining_and_leaving_equals_alone(shape, c_decode, monkeypatch):
    import model.kernels.decode as decode

    model = peaky_gpt(**shape)
    c_steps, c_batch_products = [], []
    rowdot = decode.rowdot
    monkeypatch.setattr(decode, "rowdot", lambda w, x, *args: c_batch_products.append(x.size(0) > 1) or rowdot(w, x, *args))
    if c_decode:
        prepare_for_sampling(model)
        fast = getattr(model, "fast_decoder", None)  # None without a C compiler
        if fast is not None:
            fast_step = fast.step
            fast.step = lambda *args: c_steps.append(1) or fast_step(*args)
    schedule = [  # (step it joins at, prompt, new tokens)
        (0, [1, 2, 3], 6),
        (2, [5, 6, 7, 8, 9, 10, 11], 4),  # longer than the batch's columns so far: shifts the others right
        (3, [4], 20),  # runs past block_size: slides
        (4, [7, 8], 3),
        (5, [3, 1], 20), (5, [9, 8], 20),  # two contexts fill up at the same step
        (9, list(range(1, 20)), 5),  # prompt longer than block_size
        (12, [2, 2], 5),  # joins a batch that others left: the padding they shared is gone
    ]
    got = run_schedule(model, schedule, capacity=8)
    expected = [alone(model, prompt, n) for _, prompt, n in schedule]
    assert got == expected
    assert len({t for tokens in expected for t in tokens}) > 3  # not one repeated token
    if getattr(model, "fast_decoder", None) is not None:
        assert c_steps  # a lone sequence decoded in C
        assert any(c_batch_products)  # and the batches' products of several rows too
    else:
        assert not c_batch_products


def test_capacity_and_bad_steps():
    model = peaky_gpt()
    batch = RunningBatch(model, capacity=1)
    seq, _ = batch.join([1, 2])
    with pytest.raises(RuntimeError, match="full"):
        batch.join([3])
    with pytest.raises(ValueError, match="every sequence"):
        batch.step({})
    batch.leave(seq)
    assert len(batch) == 0 and batch.length == 0
