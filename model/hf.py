"""`python -m model.hf CHECKPOINT DEST`: export a checkpoint as a Hugging Face transformers GPT-2 folder."""

from model.cli import hf_main

if __name__ == "__main__":
    raise SystemExit(hf_main())
