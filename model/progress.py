"""Progress bars: one policy for data preparation, training, evaluation and sampling.

Bars go to stderr, so they never mix with text written to stdout, and switch themselves off when
stderr is not a terminal (a log file, a CI job, a pipe) or when the user passes --quiet.
"""

from __future__ import annotations

from collections.abc import Iterable

from tqdm import tqdm


def progress(
    iterable: Iterable | None = None, total: int | None = None, desc: str | None = None, unit: str = "it",
    quiet: bool = False, leave: bool = False, unit_scale: bool = False,
) -> tqdm:
    # disable=None is tqdm's "only when attached to a terminal"
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=True if quiet else None, leave=leave,
                unit_scale=unit_scale, dynamic_ncols=True)
