"""Model FLOPs utilisation (MFU): how much of the device's peak arithmetic a training run uses.

Training costs about 6N FLOPs per token for the weights (2N in the forward pass, 4N in the backward)
plus 12·L·T·d for attention's scores and weighted sums, which have no parameters (PaLM, appendix B;
N non-embedding parameters, L layers, T context, d width). MFU = tokens/s × FLOPs per token / peak.

The peak is a number the user can give (--peak_flops, e.g. 312e12 for an A100 in bfloat16); when it is
not given, a GPU's comes from the datasheet table in model/device.py, and any other device's is measured
once with a large matmul, so MFU is then relative to the best this machine's matmul reaches, which on a
CPU is the honest ceiling anyway.
"""

from __future__ import annotations

import time

import torch

from model.config import GPTConfig


def flops_per_token(model_config: GPTConfig, n_params_non_embedding: int) -> int:
    """Training FLOPs (forward and backward) per token: 6N + 12·L·T·d."""
    c = model_config
    return 6 * n_params_non_embedding + 12 * c.n_layer * c.block_size * c.n_embd


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elif device == "mps":
        torch.mps.synchronize()


@torch.no_grad()
def measure_peak_flops(device: str, dtype: torch.dtype, size: int = 1024, seconds: float = 0.25) -> float:
    """FLOP/s of the fastest of repeated (size x size) @ (size x size) matmuls within `seconds`."""
    # a generator of its own: drawing from the global one would shift dropout masks after a resume
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    a @ b  # warm-up: first-call allocation and kernel selection are not arithmetic
    _synchronize(device)
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == float("inf"):
        t0 = time.perf_counter()
        a @ b
        _synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best


def datasheet_peak_flops(device: str, dtype: torch.dtype) -> float | None:
    """The GPU's peak from model/device.py's table (a short matmul on a GPU measures launch overhead,
    not arithmetic); None on other devices and on GPUs the table doesn't know."""
    if not device.startswith("cuda"):
        return None
    from model.device import gpu_peak_flops

    return gpu_peak_flops(torch.cuda.get_device_name(torch.device(device)), dtype)


class MFUMeter:
    """Turns tokens/s into MFU for one model on one device; None when MFU is switched off."""

    def __init__(self, model_config: GPTConfig, n_params_non_embedding: int, peak_flops: float, device: str,
                 dtype: torch.dtype):
        self.flops_per_token = flops_per_token(model_config, n_params_non_embedding)
        if peak_flops == 0:
            peak_flops = datasheet_peak_flops(device, dtype) or measure_peak_flops(device, dtype)
        self.peak_flops = peak_flops if peak_flops > 0 else None

    def __call__(self, tokens_per_sec: float) -> float | None:
        if self.peak_flops is None:
            return None
        return tokens_per_sec * self.flops_per_token / self.peak_flops
