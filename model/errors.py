"""The exceptions that command-line programs turn into a single line on stderr and an exit status."""

from __future__ import annotations


class TinyGPTError(Exception):
    """A problem with the user's input (config, data, checkpoint, prompt) rather than a bug.

    `train.py`, `sample.py` and `data/prepare.py` catch it, print `error: <message>` on stderr and
    exit non-zero, so a mistyped flag never ends in a traceback.
    """


class ConfigError(TinyGPTError):
    """An unknown config key, a value of the wrong type, or values that don't fit together."""


def first_line(error: BaseException, limit: int | None = None) -> str:
    """The first non-empty line of an exception's message, cut to `limit` characters: what a library's
    (often multi-line) error contributes to our one-line message."""
    lines = str(error).strip().splitlines()
    return lines[0][:limit] if lines else ""


class Interrupted(Exception):
    """Training stopped on SIGINT/SIGTERM after saving a checkpoint; the CLI prints the message and
    exits with `exit_code` (128 + the signal number: 130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code
