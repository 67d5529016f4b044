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
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist

from model.errors import TinyGPTError
from model.files import process_alive


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
        self.cpu_group = None
        self.processes: list[tuple[str, int]] = []
        """(host name, process id) of every rank, in rank order."""
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
        # host-side agreements (the stop request) go through gloo on CPU tensors: over nccl they would
        # wait for the GPU to finish the step's queued work
        self.cpu_group = dist.new_group(backend="gloo") if backend == "nccl" else None
        self.processes = self.gather((socket.gethostname(), os.getpid()))  # to name a rank that dies

    @contextlib.contextmanager
    def naming_dead_ranks(self) -> Iterator[None]:
        """Inside it, the error of a collective that failed because another rank's process died (gloo's
        "Connection closed by peer", with a traceback from deep inside the backend) becomes one line
        that names the rank. Ranks on other machines can't be looked at; their death stays the backend's."""
        try:
            yield
        except Exception:
            dead = self.dead_ranks() if self.enabled else []
            if not dead:
                raise
            raise TinyGPTError(
                f"rank {', '.join(map(str, dead))} of {self.world_size} died (its process is gone), so rank "
                f"{self.rank} stops too; resume the run with --init_from=resume"
            ) from None

    def dead_ranks(self, wait: float = 2.0) -> list[int]:
        """The other ranks on this machine whose process has ended, looked for during up to `wait`
        seconds (the backend can notice a closed connection before the process is gone)."""
        host, deadline = socket.gethostname(), time.monotonic() + wait
        while True:
            dead = [rank for rank, (where, pid) in enumerate(self.processes)
                    if rank != self.rank and where == host and not process_alive(pid)]
            if dead or time.monotonic() > deadline:
                return dead
            time.sleep(0.05)

    @property
    def is_master(self) -> bool:
        """Rank 0: the only one that prints, logs and writes files."""
        return self.rank == 0

    def check_fsdp(self) -> None:
        if self.fsdp and not self.enabled:
            raise TinyGPTError("fsdp=True needs several processes: launch with torchrun --nproc_per_node=N")

    def build_sharded(self, build: Callable[[], torch.nn.Module], weights: dict[str, torch.Tensor] | None,
                      dtype: torch.dtype) -> torch.nn.Module:
        """The model `build` makes, sharded by FSDP over the ranks without ever being whole on a GPU.

        It is built on the meta device (shapes only, no memory), sharded, and only then given memory on
        this rank's device, each rank holding 1/world_size of every weight. The values come from
        `weights` (a full state dict on every rank: resume, finetuning) or, for a new model, from one
        built normally on rank 0's CPU with the run's seed, so the initial weights are exactly those of
        a single-process run; rank 0 sends each rank its shards, one tensor at a time.

        Weights are gathered in `dtype` for the forward and backward passes (MixedPrecisionPolicy), and
        gradients are reduced over the ranks in float32; the sharded weights, gradients and optimizer
        state stay float32."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

        reference = build() if self.is_master else None  # on the CPU, before the meta build: same RNG draws
        with torch.device("meta"):
            model = build()
        policy = MixedPrecisionPolicy(param_dtype=None if dtype == torch.float32 else dtype,
                                      reduce_dtype=torch.float32)
        # Each block is its own unit: its weights are gathered just before it runs and freed after,
        # so only one block is ever whole in memory; the root holds embeddings and the final norm.
        for block in model.transformer.h:
            fully_shard(block, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        register_fsdp_forward_method(model, "next_logits")  # sampling calls it instead of forward
        model.to_empty(device=self.device)
        if weights is None:
            weights = reference.state_dict() if reference is not None else {}
            options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        else:
            options = StateDictOptions(full_state_dict=True)
        set_model_state_dict(model, weights, options=options)
        # buffers outside the state dict (e.g. rotary frequencies) come from rank 0's CPU model
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                if reference is not None:
                    buffer.copy_(reference.get_buffer(name))
                dist.broadcast(buffer, src=0)
        return model

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The DDP wrapper (gradients all-reduced in backward); the model itself when not distributed or
        when FSDP already sharded it (build_sharded)."""
        self.check_fsdp()
        if not self.enabled or self.fsdp:
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

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The average of a tensor over all ranks (e.g. each rank's loss on its part of the batch), on the
        device: nothing waits for the result until it is read."""
        if not self.enabled:
            return value
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value / self.world_size

    def agreed_max(self, value: int) -> int:
        """The largest of every rank's `value`, on every rank: one small all-reduce of a CPU tensor
        (e.g. the signal number of a stop request, 0 for none), so all ranks decide alike."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.int64, device="cpu" if self.cpu_group is not None else self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.cpu_group)
        return int(t.item())

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
