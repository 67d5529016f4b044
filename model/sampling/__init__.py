"""Sampling text from a trained model: KV-cached generation, top-k/top-p, stop strings."""
