"""The one exception type that command-line programs turn into a single line on stderr, and
`read_json`, which reads a user's JSON file or raises it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class TinyGPTError(Exception):
    """A problem with the user's input (config, data, checkpoint, prompt) rather than a bug.

    `train.py`, `sample.py` and `data/prepare.py` catch it, print `error: <message>` on stderr and
    exit non-zero, so a mistyped flag never ends in a traceback.
    """


class ConfigError(TinyGPTError):
    """An unknown config key, a value of the wrong type, or values that don't fit together."""


class Interrupted(Exception):
    """Training stopped on SIGINT/SIGTERM after saving a checkpoint; the CLI prints the message and
    exits with `exit_code` (128 + the signal number: 130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def read_json(path: str | Path) -> Any:
    """The JSON value in a user's file (a config, a dataset's meta.json, a tokenizer); a TinyGPTError
    naming the file when it can't be read or isn't JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise TinyGPTError(f"cannot read {path}: {e.strerror or e}") from None
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        raise TinyGPTError(f"{path} is not valid JSON: {e}") from None
