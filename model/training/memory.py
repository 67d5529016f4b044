"""A rough estimate of the memory a training run needs, checked before anything big is allocated.

Without it, a config that cannot fit (a typo such as n_embd=76800) is found out by the operating
system's out-of-memory killer minutes later, or by a machine that swaps itself to a standstill. The
estimate is deliberately simple and is compared with the machine's *total* memory, so only configs
that cannot possibly fit are refused:

    weights + gradients + AdamW's two moments   16 bytes per parameter, all float32 (model/nn/report.py)
    activations kept for the backward pass      per layer about B*T*(34*C + 5*n_head*T) values
                                                (Korthikanti et al. 2022, "Reducing Activation
                                                Recomputation in Large Transformer Models", sec. 4.1)
    logits                                      B*T*vocab float32 values, about 3 copies (logits,
                                                softmax, their gradient)

Under FSDP each of N ranks keeps 1/N of the weights, gradients and AdamW state, plus the weights of
the units it has gathered whole: the block running and the next one, prefetched, in the compute dtype
(the root's embeddings and LM head too, while they run). Activations are per rank, as without FSDP.

Sampling a batch of B samples is checked the same way (`check_sampling_fits`), before its first
token: it keeps the weights, each layer's KV cache (2*B*block_size*C values), and while it fills
the caches, one layer's activations over the whole window and the float32 attention scores.
Evaluation (`evaluation_batch_that_fits`) keeps the weights, one layer's pass over B windows and the
logits of all B*block_size positions, and lowers B to what fits.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from model.config import GPTConfig, TrainConfig
from model.errors import TinyGPTError
from model.nn.report import Report, count_parameters

CGROUP_LIMIT = Path("/sys/fs/cgroup/memory.max")
"""A container's memory limit (cgroup v2), often smaller than the host's RAM."""


@dataclass(frozen=True)
class MemoryEstimate:
    n_params: int
    state_bytes: int
    """Weights, gradients and optimizer state."""
    activation_bytes: int
    """Activations of one micro-batch, kept for the backward pass, including the logits."""

    @property
    def total_bytes(self) -> int:
        return self.state_bytes + self.activation_bytes


def gathered_bytes(model_config: GPTConfig, dtype: torch.dtype) -> int:
    """Weights an FSDP rank holds whole at once, in the compute dtype: two blocks (the one running and
    the one prefetched) and the root's parameters (embeddings, final norm, LM head)."""
    report = Report(model_config)
    root = report.group_total("embeddings") + report.group_total("lm_head")
    block = (report.total - root) // model_config.n_layer
    return (2 * block + root) * dtype.itemsize


def estimate_training_memory(model_config: GPTConfig, config: TrainConfig, dtype: torch.dtype,
                             shards: int = 1) -> MemoryEstimate:
    """Memory of one rank; shards > 1 is FSDP over that many ranks."""
    B, T, C = config.batch_size, model_config.block_size, model_config.n_embd
    activation_size = dtype.itemsize
    per_layer_16bit = B * T * (34 * C + 5 * model_config.n_head * T)  # bytes with 16-bit activations
    activations = model_config.n_layer * per_layer_16bit * activation_size // 2
    logits = logits_bytes(B * T, model_config.vocab_size)
    report = Report(model_config)  # counted from the config: nothing is allocated, even for 175B
    state = report.memory_bytes()["fp32"]["total"]  # weights, gradients and AdamW's moments stay float32
    if shards > 1:
        state = -(-state // shards) + gathered_bytes(model_config, dtype)
    return MemoryEstimate(report.total, state, activations + logits)


def machine_memory(device: str) -> int | None:
    """Total memory of the device that will hold the model, in bytes; None when it can't be told."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_properties(torch.device(device)).total_memory
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # e.g. Windows
        return None
    try:
        limit = CGROUP_LIMIT.read_text().strip()
        if limit.isdigit():
            total = min(total, int(limit))
    except OSError:
        pass
    return total


def _gb(n_bytes: int) -> str:
    return f"{n_bytes / 1e9:,.1f} GB"


def check_fits(model_config: GPTConfig, config: TrainConfig, device: str, dtype: torch.dtype,
               shards: int = 1) -> MemoryEstimate:
    """Raise TinyGPTError, before the model is built, when the run cannot fit in the device's memory
    (each rank's device, with FSDP over `shards` ranks)."""
    estimate = estimate_training_memory(model_config, config, dtype, shards)
    available = machine_memory(device)
    if available is not None and estimate.total_bytes > available:
        raise TinyGPTError(
            f"this config needs about {_gb(estimate.total_bytes)} but {device} has {_gb(available)}: "
            f"{estimate.n_params / 1e6:,.1f}M parameters take {_gb(estimate.state_bytes)} with gradients and "
            f"AdamW state{f' per rank, sharded over {shards}' if shards > 1 else ''}, and activations for batch_size={config.batch_size} x block_size="
            f"{model_config.block_size} about {_gb(estimate.activation_bytes)}; make the model, batch_size "
            f"or block_size smaller"
        )
    return estimate


def logits_bytes(positions: int, vocab_size: int) -> int:
    """The float32 logits of `positions` token positions, about 3 copies (logits, softmax, and their
    gradient or the loss's log-probabilities)."""
    return 3 * positions * vocab_size * 4


def layer_pass_bytes(model_config: GPTConfig, batch: int, T: int, size: int) -> int:
    """One layer's activations over `batch` windows of T tokens without gradients (each layer's are
    freed when the next runs): qkv, the MLP's hidden layer, the residual and one output, in `size`-byte
    values, and the float32 attention scores."""
    window = batch * T * (3 + model_config.mlp_ratio + 2) * model_config.n_embd * size
    scores = batch * model_config.n_head * T * T * 4
    return window + scores


def sampling_bytes(model_config: GPTConfig, batch: int, prompt_tokens: int, new_tokens: int,
                   dtype: torch.dtype) -> int:
    """Memory for generating `batch` samples at once, weights included."""
    B, C = batch, model_config.n_embd
    T = min(model_config.block_size, prompt_tokens + new_tokens)  # the longest window the model runs over
    size = torch.empty((), dtype=dtype).element_size()
    weights = count_parameters(model_config) * size
    kv_caches = 2 * model_config.n_layer * B * model_config.block_size * C * size  # allocated whole
    tokens = B * (prompt_tokens + T + 1) * 9  # the padded prompt ids (int64) and its padding mask
    return weights + kv_caches + layer_pass_bytes(model_config, B, T, size) + logits_bytes(B, model_config.vocab_size) + tokens


def evaluation_bytes(model_config: GPTConfig, batch: int, dtype: torch.dtype) -> int:
    """Memory for scoring `batch` windows of block_size tokens at once (model.eval): the weights, one
    layer's pass over the windows, and the logits of every position."""
    T, size = model_config.block_size, torch.empty((), dtype=dtype).element_size()
    weights = count_parameters(model_config) * size
    tokens = 2 * batch * T * 8  # inputs and targets, int64
    return weights + layer_pass_bytes(model_config, batch, T, size) + logits_bytes(batch * T, model_config.vocab_size) + tokens


def evaluation_batch_that_fits(model_config: GPTConfig, batch: int, device: str, dtype: torch.dtype,
                               warn: Callable[[str], None]) -> int:
    """`batch`, or (with a warning) the largest batch of windows whose evaluation fits in the device's
    memory when `batch` doesn't; TinyGPTError when not even one window fits."""
    available = machine_memory(device)
    if available is None or evaluation_bytes(model_config, batch, dtype) <= available:
        return batch
    base = evaluation_bytes(model_config, 0, dtype)
    most = (available - base) // (evaluation_bytes(model_config, 1, dtype) - base)
    if most < 1:
        raise TinyGPTError(
            f"evaluating this model needs about {_gb(evaluation_bytes(model_config, 1, dtype))} even one window "
            f"of block_size={model_config.block_size} at a time, but {device} has {_gb(available)}"
        )
    warn(f"--batch_size={batch} would need about {_gb(evaluation_bytes(model_config, batch, dtype))} (logits of "
         f"{batch} x {model_config.block_size} positions x {model_config.vocab_size:,} tokens) but {device} has "
         f"{_gb(available)}; evaluating with --batch_size={most} instead (the scores are the same)")
    return most


def check_sampling_fits(model_config: GPTConfig, batch: int, prompt_tokens: int, new_tokens: int, device: str,
                        dtype: torch.dtype) -> None:
    """Raise TinyGPTError, before generating, when `batch` samples at once cannot fit in the device's memory."""
    needed = sampling_bytes(model_config, batch, prompt_tokens, new_tokens, dtype)
    available = machine_memory(device)
    if available is None or needed <= available:
        return
    base = sampling_bytes(model_config, 0, prompt_tokens, new_tokens, dtype)
    most = (available - base) // (sampling_bytes(model_config, 1, prompt_tokens, new_tokens, dtype) - base)
    raise TinyGPTError(
        f"{batch:,} samples at once need about {_gb(needed)} (KV caches and activations of block_size="
        f"{model_config.block_size} for each) but {device} has {_gb(available)}; pass --num_samples={max(most, 1):,} "
        f"or fewer"
    )
