"""`python -m model.visualize --out_dir=out --start=TEXT`: draw a checkpoint's attention patterns."""

from model.cli import visualize_main

if __name__ == "__main__":
    raise SystemExit(visualize_main())
