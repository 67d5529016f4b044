"""Train a GPT: `python train.py [CONFIG.toml] [--key=value ...]` (see --help for every key)."""

from model.cli import train_main

if __name__ == "__main__":
    raise SystemExit(train_main())
