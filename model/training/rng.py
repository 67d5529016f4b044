"""Every random number generator a training rank draws from, saved in checkpoints for an exact resume."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seed_rank(seed: int, rank: int) -> None:
    """Seed torch with `seed` on every rank (the same initial weights everywhere), python and numpy with
    seed + rank."""
    torch.manual_seed(seed)
    random.seed(seed + rank)
    np.random.seed((seed + rank) % 2**32)


def rng_state(device: str) -> dict[str, Any]:
    """This rank's RNG states as plain tensors and numbers (checkpoints load with weights_only=True):
    torch's CPU generator, python's and numpy's, and on CUDA the generator of this rank's GPU, which
    draws the dropout masks there."""
    state = {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]),
        "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
        "numpy_pos": int(np.random.get_state()[2]),
    }
    if device.startswith("cuda"):
        state["cuda"] = torch.cuda.get_rng_state(torch.device(device))
    return state


def restore_rng(state: dict[str, Any], device: str) -> None:
    """Put this rank's RNGs back as rng_state found them (a checkpoint from a CPU run has no CUDA state:
    the GPU's generator then keeps its seed)."""
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(int(v) for v in state["python"]), None))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    if "cuda" in state and device.startswith("cuda"):
        torch.cuda.set_rng_state(state["cuda"], torch.device(device))
