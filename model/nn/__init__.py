"""The network in plain PyTorch: GPT, attention, layers, and its parameter/FLOP report."""
