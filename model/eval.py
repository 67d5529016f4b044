"""`python -m model.eval MODEL --text=FILE | --dataset=NAME | --hellaswag=FILE | --chat=FILE [--json]`: evaluate a model."""

from model.cli import eval_main

if __name__ == "__main__":
    raise SystemExit(eval_main())
