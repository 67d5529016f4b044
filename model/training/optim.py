"""Optimizer and learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from model.config import TrainConfig


def make_optimizer(model: torch.nn.Module, config: TrainConfig, device_type: str):
    """config.optimizer 'adamw': AdamW over everything. 'muon': Muon over the transformer blocks' 2-D
    weight matrices, AdamW over the rest (embeddings, LM head, biases, norm gains), stepping together."""
    if config.optimizer == "muon":
        return make_muon(model, config, device_type)
    return make_adamw([p for p in model.parameters() if p.requires_grad], config, device_type)


def make_adamw(params: list[torch.nn.Parameter], config: TrainConfig, device_type: str) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (linear and embedding weights) only: decaying biases and
    norm gains only pulls them towards zero for no benefit."""
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # The fused kernel updates all tensors in one pass instead of a loop of small ops per tensor.
    fused = device_type in ("cpu", "cuda")
    return torch.optim.AdamW(groups, lr=config.learning_rate, betas=(config.beta1, config.beta2), fused=fused)


def learning_rate(it: int, config: TrainConfig) -> float:
    """Linear warmup for warmup_iters, then cosine decay to min_lr at lr_decay_iters, then min_lr."""
    if not config.decay_lr:
        return config.learning_rate
    if it < config.warmup_iters:
        return config.learning_rate * (it + 1) / (config.warmup_iters + 1)
    if it >= config.lr_decay_iters:
        return config.min_lr
    progress = (it - config.warmup_iters) / max(1, config.lr_decay_iters - config.warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * progress))
    return config.min_lr + coeff * (config.learning_rate - config.min_lr)


def describe_schedule(config: TrainConfig) -> str:
    """The start-up line that says how the learning rate moves over the run, and how it evaluates."""
    if not config.decay_lr:
        line = f"schedule: learning rate {config.learning_rate:g} throughout"
    else:
        decay, end = config.lr_decay_iters, config.max_iters
        where = ("the end of the run" if decay == end else f"then {config.min_lr:g} to max_iters {end}" if decay < end
                 else f"beyond max_iters {end}")
        line = (f"schedule: warmup {config.warmup_iters} iterations to {config.learning_rate:g}, cosine decay to "
                f"{config.min_lr:g} at iteration {decay}, {where}")
    return (line + f"; evaluations every {config.eval_interval} iterations on {config.evaluation_batches()} "
            "batches per split")


# -- Muon --------------------------------------------------------------------------------------------
# Muon (Keller Jordan, 2024) takes SGD-momentum's update for a weight matrix and replaces it by the
# nearest semi-orthogonal matrix (all singular values 1), so every direction the update touches moves
# by the same amount instead of a few dominant ones. The orthogonalisation is a few Newton-Schulz
# iterations, only matmuls, which run well in bfloat16.
NEWTON_SCHULZ_COEFFS = (3.4445, -4.7750, 2.0315)
"""Quintic iteration coefficients from the Muon write-up, tuned to push singular values near 1 fast."""


def orthogonalize(g: Tensor, steps: int = 5) -> Tensor:
    """Approximately U V^T for g = U S V^T, for a stack of matrices g (..., m, n), in bfloat16."""
    a, b, c = NEWTON_SCHULZ_COEFFS
    x = g.bfloat16()
    wide = g.size(-2) > g.size(-1)
    if wide:
        x = x.mT  # iterate on the short side: X X^T is then the smaller Gram matrix
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # spectral norm <= Frobenius norm <= 1
    x = x.reshape(-1, *x.shape[-2:])  # (k, m, n): one batch for baddbmm
    for _ in range(steps):
        gram = x @ x.mT  # (k, m, m)
        poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)  # b * gram + c * gram @ gram
        x = torch.baddbmm(x, poly, x, beta=a)  # a * x + poly @ x
    x = x.reshape(g.mT.shape if wide else g.shape)
    return (x.mT if wide else x).to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Nesterov momentum, orthogonalised, for 2-D weight matrices. Matrices of one shape are
    orthogonalised together as one batch: on a CPU, one batched matmul beats many small ones."""

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 2:
                    raise ValueError(f"Muon only takes 2-D matrices, got a parameter of shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else closure()
        for group in self.param_groups:
            lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
            by_shape: dict[torch.Size, list[Tensor]] = {}
            for p in group["params"]:
                if p.grad is not None:
                    by_shape.setdefault(p.shape, []).append(p)
            for shape, params in by_shape.items():
                grads = [p.grad for p in params]
                buffers = []
                for p in params:
                    if "momentum_buffer" not in self.state[p]:
                        self.state[p]["momentum_buffer"] = torch.zeros_like(p)
                    buffers.append(self.state[p]["momentum_buffer"])
                torch._foreach_mul_(buffers, mu)
                torch._foreach_add_(buffers, grads)
                nesterov = torch.stack(grads) + mu * torch.stack(buffers)  # (k, m, n)
                update = orthogonalize(nesterov)
                # keep the update's RMS similar for tall and wide matrices
                scale = max(1.0, shape[0] / shape[1]) ** 0.5
                if wd > 0:
                    torch._foreach_mul_(params, 1.0 - lr * wd)
                torch._foreach_add_(params, update.unbind(0), alpha=-lr * scale)
        return loss


class CombinedOptimizer:
    """Several optimizers, each over its own parameters, used as one: step, zero_grad, state_dict and
    param_groups (the learning-rate schedule writes to every group) cover them all."""

    def __init__(self, *optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [group for opt in self.optimizers for group in opt.param_groups]

    def step(self, closure=None):
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        if len(state.get("optimizers", [])) != len(self.optimizers):
            raise ValueError("optimizer state is for a different set of optimizers")
        for opt, s in zip(self.optimizers, state["optimizers"]):
            opt.load_state_dict(s)


def make_muon(model: torch.nn.Module, config: TrainConfig, device_type: str) -> CombinedOptimizer:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    hidden = [p for n, p in named if p.dim() == 2 and n.startswith("transformer.h.")]
    rest = [p for n, p in named if not (p.dim() == 2 and n.startswith("transformer.h."))]
    muon = Muon(hidden, lr=config.muon_lr, momentum=config.muon_momentum, weight_decay=config.weight_decay)
    # the schedule sets every group's lr to learning_rate(it) * lr_scale
    for group in muon.param_groups:
        group["lr_scale"] = config.muon_lr / config.learning_rate if config.learning_rate > 0 else 0.0
    return CombinedOptimizer(muon, make_adamw(rest, config, device_type))
