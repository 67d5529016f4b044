"""Corpora and tokenizers: preparing datasets on disk and reading batches from them."""
