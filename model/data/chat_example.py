"""The shipped chat example: conversations whose answers can be checked, generated deterministically.

Four tasks, each asked several ways: adding and subtracting two numbers from 10 to 99, and reversing
or sorting the letters of a word (words from the shipped Tiny Shakespeare). Some conversations open
with a system prompt, some hold two exchanges. Each question (task and operands) belongs to the
training or to the validation questions, never both, and the validation conversations come last
(the last 10%, where a chat dataset's validation split is cut), so a model is scored on questions it
never saw.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

from model.data.chat import Message

CONVERSATIONS = 10_000
"""How many conversations `python data/prepare.py --dataset=chat_example` writes."""
VAL_FRACTION = 0.1
SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "Answer with the result only.",
    "You are good with numbers and words.",
)
TWO_EXCHANGES = 0.25
"""The share of conversations with two questions and answers (the second is the one scored)."""
WITH_SYSTEM = 0.3
"""The share of conversations that open with a system prompt."""

Question = tuple[str, int | str, int | str]
"""A task name and its operands: ("add", 12, 30), ("reverse", "lord", "")."""

PHRASINGS: dict[str, tuple[str, ...]] = {
    "add": ("What is {a} + {b}?", "Add {a} and {b}.", "{a} plus {b}?", "Compute {a}+{b}.",
            "What do you get if you add {a} to {b}?"),
    "sub": ("What is {a} - {b}?", "Subtract {b} from {a}.", "{a} minus {b}?", "Compute {a}-{b}."),
    "reverse": ("Reverse the word {a}.", "Spell {a} backwards.", "What is {a} written backwards?"),
    "sort": ("Sort the letters of {a}.", "Put the letters of {a} in alphabetical order.",
             "What are the letters of {a} in sorted order?"),
}
ANSWERS: dict[str, Callable[[int | str, int | str], str]] = {
    # a sum is answered as an equation: the digits it adds sit at the same places before every result,
    # whichever way the question put them, which a small model learns far sooner
    "add": lambda a, b: f"{a} + {b} = {int(a) + int(b)}",
    "sub": lambda a, b: f"{a} - {b} = {int(a) - int(b)}",
    "reverse": lambda a, b: str(a)[::-1],
    "sort": lambda a, b: "".join(sorted(str(a))),
}


def words_of(text: str, shortest: int = 3, longest: int = 7) -> list[str]:
    """The distinct lower-case words of `text` of shortest..longest letters, sorted."""
    return sorted({w for w in re.findall(r"\b[a-z]+\b", text) if shortest <= len(w) <= longest})


def all_questions(words: list[str]) -> list[Question]:
    numbers = range(10, 100)
    return ([("add", a, b) for a in numbers for b in numbers] + [("sub", a, b) for a in numbers for b in numbers]
            + [("reverse", w, "") for w in words] + [("sort", w, "") for w in words])


def exchange(question: Question, rng: random.Random) -> list[Message]:
    task, a, b = question
    return [{"role": "user", "content": rng.choice(PHRASINGS[task]).format(a=a, b=b)},
            {"role": "assistant", "content": ANSWERS[task](a, b)}]


def conversation(pools: dict[str, list[Question]], rng: random.Random) -> list[Message]:
    """One conversation from questions of `pools` (task -> questions); each question's task is
    picked uniformly, so the four tasks are equally common."""
    messages = [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}] if rng.random() < WITH_SYSTEM else []
    for _ in range(2 if rng.random() < TWO_EXCHANGES else 1):
        messages += exchange(rng.choice(pools[rng.choice(list(PHRASINGS))]), rng)
    return messages


def chat_example(corpus: str, n: int = CONVERSATIONS, seed: int = 0) -> tuple[list[list[Message]], list[list[Message]]]:
    """(training, validation) conversations, n in all, VAL_FRACTION of them for validation; those ask
    only held-out questions (every question of a task and its operands is held out or not)."""
    rng = random.Random(seed)
    questions = all_questions(words_of(corpus))
    rng.shuffle(questions)
    held_out = set(questions[: int(len(questions) * VAL_FRACTION)])
    pools = {split: {task: [q for q in questions if (q in held_out) == (split == "val") and q[0] == task]
                     for task in PHRASINGS} for split in ("train", "val")}
    n_val = round(n * VAL_FRACTION)
    return ([conversation(pools["train"], rng) for _ in range(n - n_val)],
            [conversation(pools["val"], rng) for _ in range(n_val)])
