"""tinygpt: a small, readable GPT you can train on your own text and sample from.

The library lives here; `train.py`, `sample.py` and `data/prepare.py` are thin programs on top.
Names are imported lazily, so tools that don't need torch (e.g. `python -m model.report`) start fast.
"""

import importlib

_EXPORTS = {
    "GPT": "model.nn.gpt",
    "GPTConfig": "model.config",
    "TrainConfig": "model.config",
    "load_config": "model.config",
    "ConfigError": "model.errors",
    "TinyGPTError": "model.errors",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'model' has no attribute {name!r}")
