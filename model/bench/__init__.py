"""Benchmarks that print numbers side by side in one run: `python -m model.bench {generate,train} ...`."""
