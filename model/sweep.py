"""`python -m model.sweep CONFIG --budgets=B1,B2,... [--sizes=...] [--out=DIR]`: an IsoFLOP sweep and its scaling fit."""

from model.tools.sweep import main

if __name__ == "__main__":
    raise SystemExit(main())
