"""`python -m model.serve --out_dir=RUN [...]`: the playground page and an OpenAI-compatible API."""

from model.cli import serve_main

if __name__ == "__main__":
    raise SystemExit(serve_main())
