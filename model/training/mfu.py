"""Model FLOPs utilisation (MFU): how much of the device's peak arithmetic a training run uses.

MFU = tokens/s x training FLOPs per token / peak FLOP/s. The FLOPs per token are the parameter
report's count (model/nn/report.py: every matmul forward and backward, plus attention's scores and
weighted sums), the same figure the training benchmark uses.

The peak is a number the user can give (--peak_flops, e.g. 312e12 for an A100 in bfloat16); when it is
not given, a GPU's comes from the datasheet table in model/device.py, and any other device's is measured
once with a large matmul, so MFU is then relative to the best this machine's matmul reaches, which on a
CPU is the honest ceiling anyway.
"""

from __future__ import annotations

import torch

from model.config import GPTConfig
from model.device import measure_peak_flops
from model.nn.report import flops_per_token


def datasheet_peak_flops(device: str, dtype: torch.dtype) -> float | None:
    """The GPU's peak from model/device.py's table (a short matmul on a GPU measures launch overhead,
    not arithmetic); None on other devices and on GPUs the table doesn't know."""
    if not device.startswith("cuda"):
        return None
    from model.device import gpu_peak_flops

    return gpu_peak_flops(torch.cuda.get_device_name(torch.device(device)), dtype)


class MFUMeter:
    """Turns tokens/s into MFU for one model on one device; None when MFU is switched off."""

    def __init__(self, model_config: GPTConfig, peak_flops: float, device: str, dtype: torch.dtype):
        """peak_flops: FLOP/s of the device; 0 measures it here, a negative value switches MFU off."""
        self.flops_per_token = flops_per_token(model_config)
        if peak_flops == 0:
            peak_flops = datasheet_peak_flops(device, dtype) or measure_peak_flops(device, dtype)
        self.peak_flops = peak_flops if peak_flops > 0 else None

    def __call__(self, tokens_per_sec: float) -> float | None:
        if self.peak_flops is None:
            return None
        return tokens_per_sec * self.flops_per_token / self.peak_flops
