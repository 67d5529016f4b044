"""`python -m model.report CONFIG [--key=value ...] [--json]`: parameters, FLOPs and memory of a config."""

from model.cli import report_main

if __name__ == "__main__":
    raise SystemExit(report_main())
