"""`python -m model.chat MODEL [--start=TEXT]`: chat with a chat model in the terminal (see --help)."""

from model.cli import chat_main

if __name__ == "__main__":
    raise SystemExit(chat_main())
