"""Sample text from a trained GPT: `python sample.py --out_dir=out --start="ROMEO:"` (see --help)."""

from model.cli import sample_main

if __name__ == "__main__":
    raise SystemExit(sample_main())
