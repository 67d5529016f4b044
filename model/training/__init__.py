"""Training: the loop, optimizers, evaluation, logging, checkpoints on signals, several processes."""
