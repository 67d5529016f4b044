"""Training on several processes under torchrun: DDP (a full model copy per rank) or FSDP (sharded).

`python train.py` runs as one process; `torchrun --nproc_per_node=N train.py ...` starts N, and each
finds its place from the environment torchrun sets (RANK, LOCAL_RANK, WORLD_SIZE). Outside torchrun,
`Distributed` is a single-rank stand-in whose helpers do nothing, so the training loop has one shape.

How the ranks share the work, so that N ranks with batch_size B train exactly like one process with
batch_size N*B (same samples, same gradients, up to floating-point summation order):
  - every rank seeds the batch generator with the same `seed` and draws the starts of the *global*
    micro-batch (N*B windows); rank r reads only rows r*B .. r*B+B-1 of it from the memory-mapped data;
  - each rank's own randomness (dropout; torch, numpy and python RNGs) is seeded with seed + rank;
  - gradients are averaged over ranks only on the last micro-step of gradient accumulation;
  - logged losses are averaged over ranks; only rank 0 prints, logs, writes checkpoints, talks to wandb.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch
import torch.distributed as dist

from model.errors import TinyGPTError


def torchrun_env() -> tuple[int, int, int] | None:
    """(rank, local_rank, world_size) when launched by torchrun, else None."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    try:
        return int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), int(os.environ["WORLD_SIZE"])
    except ValueError:
        raise TinyGPTError("RANK, LOCAL_RANK and WORLD_SIZE must be integers (they are set by torchrun)") from None


class Distributed:
    """This process's place among the ranks, and the few collective operations the trainer needs."""

    def __init__(self, device: str, fsdp: bool = False):
        env = torchrun_env()
        self.rank, self.local_rank, self.world_size = env if env is not None else (0, 0, 1)
        self.fsdp = fsdp
        self.enabled = env is not None
        self.device = device
        if not self.enabled:
            return
        if device.startswith("cuda"):
            self.device = f"cuda:{self.local_rank}"  # one GPU per rank
            torch.cuda.set_device(self.device)
            backend = "nccl"
        elif device == "cpu":
            backend = "gloo"
        else:
            raise TinyGPTError(f"distributed training runs on cuda (nccl) or cpu (gloo), not on '{device}'")
        if not dist.is_initialized():
            dist.init_process_group(backend, device_id=torch.device(self.device) if backend == "nccl" else None)

    @property
    def is_master(self) -> bool:
        """Rank 0: the only one that prints, logs and writes files."""
        return self.rank == 0

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """DDP wrapper (gradients all-reduced in backward), or FSDP sharding of the model in place."""
        if not self.enabled and not self.fsdp:
            return model
        if not self.enabled:
            raise TinyGPTError("fsdp=True needs several processes: launch with torchrun --nproc_per_node=N")
        if self.fsdp:
            from torch.distributed.fsdp import fully_shard

            # Each block is its own unit: its weights are gathered just before it runs and freed after,
            # so only one block is ever whole in memory; the root holds embeddings and the final norm.
            for block in model.transformer.h:
                fully_shard(block)
            fully_shard(model)
            return model
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.local_rank] if self.device.startswith("cuda") else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def gradient_sync(self, model: torch.nn.Module, last_micro_step: bool) -> contextlib.AbstractContextManager:
        """Context for one micro-step's backward: gradients are averaged over ranks only on the last
        one; the earlier ones just accumulate locally, which saves (accumulation - 1) all-reduces."""
        if not self.enabled:
            return contextlib.nullcontext()
        if self.fsdp:
            model.set_requires_gradient_sync(last_micro_step)
            return contextlib.nullcontext()
        return contextlib.nullcontext() if last_micro_step else model.no_sync()

    def mean(self, value: float) -> float:
        """The average of a number over all ranks (e.g. each rank's loss on its part of the batch)."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t.item()) / self.world_size

    @staticmethod
    def full(value: torch.Tensor) -> float:
        """A scalar as a float, also when FSDP returns it as a DTensor (e.g. the gradient norm)."""
        return float(value.full_tensor() if hasattr(value, "full_tensor") else value)

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj` (small plain data, e.g. RNG states), in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def model_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
        """Full (unsharded) weights on rank 0 under FSDP; None means "use model.state_dict()"."""
        if not self.fsdp:
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def optimizer_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The optimizer's state, gathered whole on rank 0 under FSDP (keyed by parameter name there)."""
        if not self.fsdp:
            return optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(
            model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )

    def load_optimizer_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
        if not self.fsdp:
            optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(
            model, optimizer, optim_state_dict=state, options=StateDictOptions(full_state_dict=True)
        )

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            # every rank finishes its collectives before any tears the group down: a rank that destroys
            # it while another still writes checkpoints can abort in gloo's threads ("terminate called
            # without an active exception")
            dist.barrier()
            dist.destroy_process_group()
