"""`python -m model.visualize MODEL --start=TEXT`: draw a model's attention patterns."""

from model.cli import visualize_main

if __name__ == "__main__":
    raise SystemExit(visualize_main())
