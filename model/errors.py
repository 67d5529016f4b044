"""The exceptions that command-line programs turn into a single line on stderr and an exit status."""

from __future__ import annotations


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
