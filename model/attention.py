"""`python -m model.attention MODEL --start=TEXT`: the old name of `python -m model.visualize`."""

from model.cli import visualize_main

if __name__ == "__main__":
    raise SystemExit(visualize_main())
