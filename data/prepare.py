"""Prepare a dataset: `python data/prepare.py --dataset=shakespeare_char [--input=FILE]` (see --help)."""

from model.cli import prepare_main

if __name__ == "__main__":
    raise SystemExit(prepare_main())
