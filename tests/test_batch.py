"""Continuous batching (model/sampling/batch.py): sequences that join and leave a running batch get
the same greedy tokens as generate() gives each of them alone."""

from __future__ import annotations

import pytest

from helpers import peaky_gpt
from model.nn.gpt import GPT
from model.sampling.batch import RunningBatch, batch_twin
from model.sampling.generate import generate, prepare_for_sampling

pytestmark = pytest.mark.usefixtures("one_thread")


def alone(model: GPT, prompt: list[int], n: int) -> list[int]:
    return [int(t) for t in generate(model, [prompt], n, temperature=0.0)]


def run_schedule(model: GPT, schedule: list[tuple[int, list[int], int]], capacity: int,
                 batch_model: GPT | None = None) -> list[list[int]]:
    """Greedy decoding of (join step, prompt, tokens) sequences through one RunningBatch."""
    batch = RunningBatch(model, capacity, batch_model)
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
@pytest.mark.parametrize("c_decode, twin", [(False, False), (True, False), (True, True)])
def test_joining_and_leaving_equals_alone(shape, c_decode, twin):
    model = peaky_gpt(**shape)
    batch_model, twin_passes = None, []
    if twin:
        batch_model = prepare_for_sampling(batch_twin(model), c_decode=False)
        twin_forward = batch_model.next_logits
        batch_model.next_logits = lambda *args: twin_passes.append(1) or twin_forward(*args)
    c_steps = []
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
    got = run_schedule(model, schedule, capacity=8, batch_model=batch_model)
    expected = [alone(model, prompt, n) for _, prompt, n in schedule]
    assert got == expected
    assert len({t for tokens in expected for t in tokens}) > 3  # not one repeated token
    if getattr(model, "fast_decoder", None) is not None:
        assert c_steps  # a lone sequence decoded in C
    assert bool(twin_passes) == twin  # prefills and batches through the twin


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
