"""`python -m model.serve MODEL [MODEL ...] [--runs=FOLDER]`: the playground page and an OpenAI-compatible API."""

from model.cli import serve_main

if __name__ == "__main__":
    raise SystemExit(serve_main())
