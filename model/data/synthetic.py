"""Synthetic corpora that make one mechanism easy to learn and to see.

`repeats`: lines of random lowercase letters, each followed by the same letters again. The first copy
can't be predicted (each letter is a uniform guess among those the line hasn't used yet); the repeat
can be predicted perfectly by a head that finds the earlier occurrence of the current letter and
copies the letter that came after it: an induction head, which a 2-layer model forms in minutes on a
CPU. No letter appears twice in one copy, so the earlier occurrence is never ambiguous, and the lines
have random lengths, so that no fixed offset (which positions alone could learn) does the job.
"""

from __future__ import annotations

import random

from model.errors import TinyGPTError

SYNTHETIC = ("repeats",)
REPEATS_ALPHABET = "abcdefghijklmnopqrstuvwxyz"
REPEATS_LINES = 40_000
REPEATS_LENGTHS = (5, 12)
"""Shortest and longest random sequence of a line (each then appears twice)."""
REPEATS_SEED = 1337


def repeats_text(lines: int = REPEATS_LINES, lengths: tuple[int, int] = REPEATS_LENGTHS,
                 seed: int = REPEATS_SEED) -> str:
    """`lines` lines, each a random sequence of distinct lowercase letters (length in `lengths`) twice over."""
    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        letters = "".join(rng.sample(REPEATS_ALPHABET, rng.randint(*lengths)))
        out.append(letters + letters + "\n")
    return "".join(out)


def synthetic_text(name: str) -> str:
    """The text of the synthetic corpus `name` (one of SYNTHETIC)."""
    if name == "repeats":
        return repeats_text()
    raise TinyGPTError(f"unknown synthetic corpus '{name}' (known: {', '.join(SYNTHETIC)})")
