"""`python -m model.hf MODEL DEST`: export a model as a Hugging Face transformers GPT-2 folder."""

from model.cli import hf_main

if __name__ == "__main__":
    raise SystemExit(hf_main())
