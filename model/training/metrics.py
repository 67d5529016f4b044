"""metrics.jsonl: a training run's log, one JSON object per line, appended by the logger and read by
the loss plots, a resumed run, the run comparison and the training benchmark.

A record maps metric names to numbers ("iter", an integer, says which iteration it belongs to). The
file is only a log: a line that is not such a record (a stray byte, a line that isn't JSON, a string
where a number belongs) is skipped with one warning, so a damaged log never stops a training run
or a comparison. A torn last line (the run was killed mid-write) is skipped without one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

METRICS = "metrics.jsonl"
"""Its file name inside a run's out_dir."""
LOSS_PLOT = "loss.png"
"""The loss curves drawn from it (model/training/plots.py), beside it in out_dir."""

_warned: set[Path] = set()
"""The files read_metrics has already warned about in this process (one warning each, not one per read)."""


def is_record(value: Any) -> bool:
    """A metrics record: a JSON object of numbers, whose "iter" (if any) is a whole number >= 0."""
    if not isinstance(value, dict):
        return False
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value.values())
    return numbers and (isinstance(value.get("iter", 0), int) and value.get("iter", 0) >= 0)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl, skipping (with one warning on stderr) lines that are not records."""
    path = Path(path)
    lines = path.read_bytes().split(b"\n")
    torn = lines.pop() if lines else b""  # after the last newline: empty, or a write cut short
    records, damaged = [], 0
    for line in lines:
        try:
            record = json.loads(line.decode("utf-8"))
        except ValueError:  # undecodable bytes or not JSON
            record = None
        if is_record(record):
            records.append(record)
        elif line.strip():
            damaged += 1
    try:
        last = json.loads(torn.decode("utf-8")) if torn.strip() else None
    except ValueError:
        last = None
    if is_record(last):
        records.append(last)
    if damaged and path.resolve() not in _warned:
        _warned.add(path.resolve())
        print(f"warning: skipped {damaged} damaged line(s) of {path} (each line should be a JSON object of numbers)",
              file=sys.stderr, flush=True)
    return records
