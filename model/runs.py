"""`python -m model.runs compare OUT_DIR [OUT_DIR ...] [--plot=compare.png]`: compare training runs."""

from model.cli import runs_main

if __name__ == "__main__":
    raise SystemExit(runs_main())
