"""Model FLOPs utilisation (MFU): how much of the device's peak arithmetic a training run uses.

MFU = tokens/s x training FLOPs per token / peak FLOP/s. The FLOPs per token are the parameter
report's count (model/nn/report.py: every matmul forward and backward, plus attention's scores and
weighted sums), the same figure the training benchmark uses.

The peak is a number the user knows for their GPU (e.g. 312e12 for an A100 in bfloat16); when it is
not given, it is measured once with a large matmul (model/device.py), so MFU is then relative to the
best this machine's matmul reaches, which on a CPU is the honest ceiling anyway.
"""

from __future__ import annotations

import torch

from model.config import GPTConfig
from model.device import measure_peak_flops
from model.nn.report import flops_per_token


class MFUMeter:
    """Turns tokens/s into MFU for one model on one device; None when MFU is switched off."""

    def __init__(self, model_config: GPTConfig, peak_flops: float, device: str, dtype: torch.dtype):
        """peak_flops: FLOP/s of the device; 0 measures it here, a negative value switches MFU off."""
        self.flops_per_token = flops_per_token(model_config)
        if peak_flops == 0:
            peak_flops = measure_peak_flops(device, dtype)
        self.peak_flops = peak_flops if peak_flops > 0 else None

    def __call__(self, tokens_per_sec: float) -> float | None:
        if self.peak_flops is None:
            return None
        return tokens_per_sec * self.flops_per_token / self.peak_flops
