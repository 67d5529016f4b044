"""`python -m model.inspect VIEW MODEL [--start=TEXT | --text=FILE] [--json] [--out=PNG]`: look inside a model."""

from model.tools.inspect import main

if __name__ == "__main__":
    raise SystemExit(main())
