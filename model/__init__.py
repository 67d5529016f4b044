"""tinygpt: a small, readable GPT you can train on your own text and sample from.

The library lives here; `train.py`, `sample.py` and `data/prepare.py` are thin programs on top.
"""

import importlib

__all__ = ["GPT", "GPTConfig", "TrainConfig", "load_config", "ConfigError", "TinyGPTError"]
_HOMES = {
    "GPT": "model.gpt",
    "GPTConfig": "model.config",
    "TrainConfig": "model.config",
    "load_config": "model.config",
    "ConfigError": "model.errors",
    "TinyGPTError": "model.errors",
}


def __getattr__(name: str):
    # Imported on first use, not with the package: `python -m model.attention` must be able to run
    # model/attention.py as a script before anything has imported it as a module.
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'model' has no attribute {name!r}")
