"""tinygpt: a small, readable GPT you can train on your own text and sample from.

The library lives here; `train.py`, `sample.py` and `data/prepare.py` are thin programs on top.
"""

from model.config import GPTConfig, TrainConfig, load_config
from model.errors import ConfigError, TinyGPTError
from model.gpt import GPT

__all__ = ["GPT", "GPTConfig", "TrainConfig", "load_config", "ConfigError", "TinyGPTError"]
