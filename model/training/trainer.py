"""The training loop: data, model, optimizer, evaluation, checkpoints and logs, wired together."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from model import checkpoint
from model.data import dataset as data
from model.training import memory
from model.training import nonfinite
from model.training import signals
from model.config import GPTConfig, TrainConfig, to_dict
from model.device import allow_tf32, autocast, describe_precision, resolve_device, resolve_dtype
from model.training.distributed import Distributed
from model.errors import TinyGPTError
from model.files import remove_stale_temporaries
from model.fused import apply_kernels
from model.kernels import build as kernels
from model.training.evaluate import estimate_loss, split_bpb, split_loss
from model.nn.gpt import GPT
from model.training.logger import RunLogger, sample_text
from model.training.mfu import MFUMeter
from model.threads import describe_threads
from model.training.optim import describe_schedule, learning_rate, make_optimizer
from model.nn.report import GROUPS, Report
from model.training.distributed import torchrun_env
from model.training.lock import OutDirLock
from model.training.resume import (load_training_state, model_config_for_resume, refuse_used_out_dir,
                                   train_config_for_resume)
from model.training.rng import restore_rng, rng_state, seed_rank


def open_dataset(config: TrainConfig, echo=print, quiet: bool = False) -> data.TokenDataset:
    """The prepared dataset, preparing the known ones (e.g. Tiny Shakespeare) on first use."""
    folder = Path(config.data_dir) / config.dataset
    if not (folder / data.META).is_file() and config.dataset in (*data.KNOWN_DATASETS, data.CHAT_EXAMPLE):
        echo(f"preparing dataset '{config.dataset}' in {folder}")
        if config.dataset == data.CHAT_EXAMPLE:
            data.prepare_chat(config.dataset, config.data_dir, quiet=quiet)
        else:
            data.prepare(config.dataset, config.data_dir, quiet=quiet)
    return data.TokenDataset(folder)


def add_token_rows(model: GPT, known: int, wanted: int) -> GPT:
    """`model` with embedding (and LM-head) rows for token ids known..wanted-1, each the mean of the
    rows of the `known` tokens it has learned: a new token starts where an average token is, not at a
    random place the model has never seen. Grows the vocabulary to `wanted` rows if it has fewer."""
    config = dataclasses.replace(model.config, vocab_size=max(model.config.vocab_size, wanted))
    state = model.state_dict()
    for name in ("transformer.wte.weight", "lm_head.weight"):
        if name in state:
            rows = state[name]
            grown = rows.new_zeros(config.vocab_size, rows.size(1))
            grown[: min(len(rows), config.vocab_size)] = rows[: config.vocab_size]
            grown[known:wanted] = rows[:known].float().mean(0).to(rows.dtype)
            state[name] = grown
    grown_model = GPT(config).to(next(model.parameters()).dtype)
    grown_model.load_state_dict(state)
    return grown_model


def _make_out_dir(path: str) -> Path:
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{id(out)}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise TinyGPTError(f"out_dir {out} is not writable: {e.strerror or e}") from None
    return out


VOCAB_MULTIPLE = 64
"""Embedding and LM-head rows are padded to a multiple of this for BPE vocabularies: GPU matmuls run on
tiles of 64 (and more), so GPT-2's 50,257 rows leave the last tile of every LM-head product ragged."""


def padded_vocab_size(vocab_size: int) -> int:
    return -(-vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def loss_scaler(device: str, dtype: torch.dtype) -> torch.amp.GradScaler:
    """float16's narrow range needs the loss scaled up (and the gradients back down before they are used)
    so that small gradients don't underflow: a GradScaler, on for float16 only; with any other dtype it is
    off and each of its calls does nothing."""
    return torch.amp.GradScaler(torch.device(device).type, enabled=dtype == torch.float16)


class Trainer:
    """Holds a run's state; `run()` trains to max_iters and returns a summary dict."""

    def __init__(self, model_config: GPTConfig, config: TrainConfig, quiet: bool = False):
        model_config.check_buildable(require_vocab=False)  # fail before any data is prepared
        if config.init_from != "resume":  # else checked once the checkpoint's schedule is taken
            config.check_schedule()
        self.config, self.quiet = config, quiet
        self._start_process()
        self.dataset = self._open_dataset()
        resume = self._load_resume() if config.init_from == "resume" else None
        weights = self._choose_model(model_config, resume)
        fitted = self.dataset.fit_chat(self.model_config.block_size)
        if fitted:
            self.echo(fitted)
        self._settle_schedule(resume)
        self._check_memory()  # before allocating anything
        self.stop = signals.GracefulStop(self.dist.world_size == 1)  # active inside train(); polled after every step
        kernels.set_enabled(self.config.kernels)  # the C kernels (CPU) for this process, or PyTorch's ops only
        self._build_model(weights)
        del weights  # a pretrained model's tensors: the model holds its own copy now
        self._build_optimizer(resume)
        self._start_logs(resume)

    def echo(self, message: str) -> None:
        if not self.quiet and self.dist.is_master:
            tqdm.write(message, file=sys.stdout)

    # -- set-up, in the order __init__ runs it ---------------------------------------------------
    def _start_process(self) -> None:
        """This rank's place among the ranks, its device and precision, out_dir, and the seeds."""
        c = self.config
        self.dist = Distributed(resolve_device(c.device), c.fsdp)
        self.device = self.dist.device
        self.dtype = resolve_dtype(c.dtype, self.device)
        self.ctx = autocast(self.device, self.dtype)
        allow_tf32(self.device)
        self.out_dir = _make_out_dir(c.out_dir) if self.dist.is_master else Path(c.out_dir)
        if self.dist.is_master:
            remove_stale_temporaries(self.out_dir)  # left by runs killed mid-save
        refuse_used_out_dir(self.out_dir, c, self.echo)  # every rank decides alike, before anything is written
        seed_rank(c.seed, self.dist.rank)
        self.batch_generator = torch.Generator().manual_seed(c.seed)  # alike on all ranks: see distributed.py
        self.iter_num = 0
        self.best_val_loss = float("inf")

    def _open_dataset(self) -> data.TokenDataset:
        """The dataset; rank 0 prepares a known one on first use while the other ranks wait."""
        if not self.dist.is_master:
            self.dist.barrier()
        dataset = open_dataset(self.config, self.echo, self.quiet)
        if self.dist.is_master:
            self.dist.barrier()
        self.tokenizer_meta = dataset.meta["tokenizer"]
        return dataset

    def _load_resume(self) -> dict[str, Any]:
        path = self.out_dir / checkpoint.LATEST
        resume = load_training_state(path)
        self.echo(f"resuming from {path} at iteration {resume['iter_num']}")
        return resume

    def _choose_model(self, requested: GPTConfig, resume: dict[str, Any] | None) -> dict[str, torch.Tensor] | None:
        """Set model_config: a resumed run's checkpoint's (checked against the requested one and the
        dataset), a Hugging Face model's for init_from=NAME, else the requested one; each fitted to the
        dataset's vocabulary. Returns the weights to start from, None for a new model."""
        weights = None
        if resume is not None:
            model_config = model_config_for_resume(resume, requested, self.dataset.meta,
                                                   self.out_dir / checkpoint.LATEST, self.echo)
            weights = resume["model"]
        elif self.config.init_from != "scratch":  # a Hugging Face GPT-2 folder or hub name
            pretrained = self._load_pretrained(self.config.init_from)
            model_config = dataclasses.replace(pretrained.config, dropout=requested.dropout)
            weights = pretrained.state_dict()
        else:
            model_config = requested
        self.model_config = self._fit_vocab(model_config)
        return weights

    def _load_pretrained(self, name_or_dir: str) -> GPT:
        from model.sources import load_any_model

        model, tok = load_any_model(name_or_dir)
        wanted = self.tokenizer_meta
        if wanted.get("kind") == "chat" and tok.to_meta() == wanted.get("base"):
            model = add_token_rows(model, tok.vocab_size, wanted["vocab_size"])
            self.echo(f"added the chat template's {wanted['vocab_size'] - tok.vocab_size} tokens to {name_or_dir}'s "
                      "vocabulary: new embedding rows, the mean of the existing ones")
        elif tok.to_meta() != wanted:
            data_tok = wanted.get("base", wanted) if wanted.get("kind") == "chat" else wanted
            chat_note = (" (a character vocabulary is the characters of the text it was prepared from, so a character "
                         "model fits only conversations prepared with that same vocabulary)") if data_tok.get("kind") == "char" else ""
            raise TinyGPTError(
                f"init_from={name_or_dir} uses tokenizer {tok.to_meta()['kind']} ({tok.vocab_size} tokens) but dataset "
                f"'{self.config.dataset}' was prepared with {data_tok.get('kind')} ({data_tok.get('vocab_size')} tokens"
                f"{' before the chat tokens' if data_tok is not wanted else ''}); prepare it with the model's tokenizer "
                f"(e.g. --tokenizer=gpt2){chat_note}"
            )
        self.echo(f"initialized from {name_or_dir}: {model.num_params() / 1e6:.1f}M parameters, block_size {model.config.block_size}")
        return model

    def _fit_vocab(self, model_config: GPTConfig) -> GPTConfig:
        """The dataset's vocabulary, unless the config asks for more rows. A new model on a BPE vocabulary
        (GPT-2's 50,257 tokens) gets rows up to a multiple of VOCAB_MULTIPLE, which no token uses."""
        data_vocab = self.dataset.vocab_size
        if model_config.vocab_size in (None, data_vocab):
            pad = self.config.init_from == "scratch" and self.tokenizer_meta.get("kind") == "tiktoken"
            return dataclasses.replace(model_config, vocab_size=padded_vocab_size(data_vocab) if pad else data_vocab)
        if model_config.vocab_size < data_vocab:
            raise TinyGPTError(
                f"model vocab_size {model_config.vocab_size} is smaller than dataset "
                f"'{self.config.dataset}' vocabulary ({data_vocab} tokens)"
            )
        return model_config

    def _settle_schedule(self, resume: dict[str, Any] | None) -> None:
        """A resumed run takes the checkpoint's learning-rate schedule wherever no config file or flag
        sets it (then checks it); every run warns about a surprising one."""
        if resume is not None:
            self.config = train_config_for_resume(resume, self.config, self.echo)
            self.config.check_schedule()
        if self.dist.is_master:
            for warning in self.config.schedule_warnings():
                print(f"warning: {warning}", file=sys.stderr, flush=True)

    def _check_memory(self) -> None:
        shards = self.dist.world_size if self.dist.fsdp else 1
        memory.check_fits(self.model_config, self.config, self.device, self.dtype, shards)

    def _build_model(self, weights: dict[str, torch.Tensor] | None) -> None:
        """The model on the device with `weights` (else newly initialised), sharded by FSDP or wrapped
        by DDP under torchrun, and compiled when asked to."""
        self.dist.check_fsdp()
        if self.dist.fsdp:
            self.model = self.dist.build_sharded(lambda: apply_kernels(GPT(self.model_config)), weights, self.dtype)
        else:
            self.model = apply_kernels(GPT(self.model_config))
            if weights is not None:
                self.model.load_state_dict(weights)
            self.model.to(self.device)
        if self.dist.enabled:
            torch.manual_seed(self.config.seed + self.dist.rank)  # each rank its own dropout masks
        self.wrapped_model = self.dist.wrap(self.model)  # DDP wrapper, or self.model (FSDP already sharded it)
        self.compile = self.config.compile if self.config.compile is not None else self.device.startswith("cuda")
        self.step_model = torch.compile(self.wrapped_model) if self.compile else self.wrapped_model

    def _build_optimizer(self, resume: dict[str, Any] | None) -> None:
        """The optimizer, the float16 loss scaler, the NaN guard and the batches; a resumed run's
        optimizer state, iteration, data position and RNGs."""
        c = self.config
        self.optimizer = make_optimizer(self.model, c, self.device.split(":")[0])
        if resume is not None:
            self._restore_training_state(resume)
        self.scaler = loss_scaler(self.device, self.dtype)
        self.guard = nonfinite.StepGuard(self.device, self.dtype, c.on_nan)
        self.batches = data.BatchLoader(self.dataset, "train", c.batch_size, self.model_config.block_size,
                                        self.batch_generator, self.device, self.dist.rank, self.dist.world_size)
        self.tokens_since_log = 0
        """Tokens trained on, all ranks together, since the last log line (for its tokens/s)."""

    def _restore_training_state(self, resume: dict[str, Any]) -> None:
        """Where the checkpointed run left off: optimizer state, iteration, best validation loss, the
        data sampler's position and this rank's RNGs."""
        try:
            self.dist.load_optimizer_state(self.model, self.optimizer, resume["optimizer"])
        except (KeyError, ValueError, TypeError, IndexError, RuntimeError):
            raise TinyGPTError(
                f"the checkpoint's optimizer state does not fit optimizer='{self.config.optimizer}'; "
                "resume with the optimizer the run was started with"
            ) from None
        self.iter_num = int(resume["iter_num"])
        self.best_val_loss = float(resume["best_val_loss"])
        position = resume.get("data_position")  # a 'windows_drawn' count beside it, in some checkpoints, is unused
        if position is not None:
            self.batch_generator.set_state(position["batch_generator"])
        states = resume.get("rng")  # one state per rank that wrote the checkpoint
        if not states:
            return
        if len(states) == self.dist.world_size:
            restore_rng(states[self.dist.rank], self.device)
        else:
            self.echo(f"note: checkpoint was written by {len(states)} rank(s), this run has "
                      f"{self.dist.world_size}; dropout and other RNGs restart from seed + rank")

    def _start_logs(self, resume: dict[str, Any] | None) -> None:
        """config.json, metrics.jsonl (and wandb) through the run logger, and the MFU meter."""
        self.config_dict = to_dict(self.model_config, self.config)
        if self.dist.is_master:
            checkpoint.write_config_json(self.out_dir, self.config_dict)
        c = self.config
        resumed_run_id = resume.get("wandb_run_id") if resume is not None else None
        self.logger = RunLogger(
            self.out_dir, self.config_dict, c.wandb_log, c.wandb_project, c.wandb_run_name,
            enabled=self.dist.is_master,
            wandb_mode=c.wandb_mode, wandb_log_checkpoint=c.wandb_log_checkpoint,
            resume_iter=self.iter_num if resume is not None else None,
            wandb_run_id=resumed_run_id,
        )
        # kept in every checkpoint, also by a run that doesn't log to wandb, for a later resume that does
        self.wandb_run_id = self.logger.wandb_run_id or resumed_run_id
        self.mfu = MFUMeter(self.model_config, c.peak_flops, self.device, self.dtype)

    # -- pieces of the loop --------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        c = self.config
        return estimate_loss(
            self.step_model, self.dataset, c.batch_size, self.model_config.block_size, c.evaluation_batches(),
            self.ctx, self.device, c.seed, quiet=self.quiet, check_stop=self.stop.check,
        )

    def full_val_loss(self) -> float:
        return split_loss(
            self.step_model, self.dataset, "val", self.model_config.block_size, max(self.config.batch_size, 64),
            self.ctx, self.device, quiet=self.quiet, check_stop=self.stop.check,
        )

    def save(self, name: str) -> None:
        # Every rank takes part (FSDP gathers the shards, each rank sends its RNG state); rank 0 writes.
        self.guard.check(self.echo)  # a bad step since the last check stops the run before it is saved
        full_weights = self.dist.model_state(self.model)
        optimizer_state = self.dist.optimizer_state(self.model, self.optimizer)
        rng_per_rank = self.dist.gather(rng_state(self.device))
        if not self.dist.is_master:
            return
        state = checkpoint.model_state(self.model, self.model_config, self.tokenizer_meta)
        if full_weights is not None:
            state["model"] = full_weights
        state.update(
            optimizer=optimizer_state,
            iter_num=self.iter_num,
            best_val_loss=self.best_val_loss,
            config=self.config_dict,
            rng=rng_per_rank,
            data_position={"batch_generator": self.batches.generator_state()},
            wandb_run_id=self.wandb_run_id,
        )
        checkpoint.save_checkpoint(self.out_dir / name, state)
        if name == checkpoint.LATEST:
            self.stop.checkpoint_written(self.out_dir / name, self.iter_num)

    def train_step(self, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step over gradient_accumulation_steps micro-batches; returns (loss, grad norm)
        as tensors on the device. Nothing here waits for the device: reading them is the caller's sync."""
        c = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        loss_sum = torch.zeros((), device=self.device)
        for micro_step in range(c.gradient_accumulation_steps):
            x, y = self.batches.next()
            self.tokens_since_log += x.numel() * self.dist.world_size  # a chat batch is as wide as it needs
            with self.dist.gradient_sync(self.wrapped_model, micro_step == c.gradient_accumulation_steps - 1):
                with self.ctx:
                    _, loss = self.step_model(x, y)
                    loss = loss / c.gradient_accumulation_steps
                self.scaler.scale(loss).backward()  # float16: the loss scaled up; otherwise as it is
            loss_sum += loss.detach()
        loss = self.dist.mean(loss_sum)
        self.scaler.unscale_(self.optimizer)  # float16: the true gradients again, for clipping and the step
        # with clipping off, an infinite threshold still measures the norm (for the logs) and clips nothing
        max_norm = c.grad_clip if c.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        if self.dist.fsdp:
            grad_norm = grad_norm.full_tensor()  # a DTensor: the norm over every rank's shards
        skip = self.guard.skip(self.iter_num, loss, grad_norm)  # a non-finite loss or norm: never applied
        nonfinite.step_unless(self.optimizer, skip)
        self.scaler.update()  # float16: grow the loss scale, or back it off after an overflow
        self.optimizer.zero_grad(set_to_none=True)
        return loss, grad_norm

    def eval_and_checkpoint(self) -> None:
        losses = self.evaluate()
        self.echo(f"step {self.iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}, "
                  f"val bpb {losses['val_bpb']:.4f}")
        self.logger.log({"iter": self.iter_num, "train_loss": losses["train"], "val_loss": losses["val"],
                         "val_bpb": losses["val_bpb"]})
        # under FSDP every rank takes part in the forward passes (each holds a shard of every weight)
        wants_samples = self.config.sample_tokens > 0 and self.logger.wants_samples
        if self.dist.fsdp:
            wants_samples = bool(self.dist.agreed_max(int(wants_samples)))
        if wants_samples:
            c = self.config
            text = sample_text(self.model, self.dataset.tokenizer(), c.sample_tokens, self.device, c.seed,
                               self.stop.check)
            self.logger.log_sample(self.iter_num, losses["val"], text)
        improved = losses["val"] < self.best_val_loss
        if improved:
            self.best_val_loss = losses["val"]
        if self.iter_num > 0:
            if improved:
                self.save(checkpoint.BEST)
            if improved or self.config.always_save_checkpoint:
                self.save(checkpoint.LATEST)

    def report_full_val(self) -> float:
        loss = self.full_val_loss()
        bpb = split_bpb(loss, self.dataset, "val")
        self.echo(f"full-val loss {loss:.4f}, bpb {bpb:.4f}")
        # train_time: seconds since training started, counting compilation, evaluations and checkpoints
        self.logger.log({"iter": self.iter_num, "full_val_loss": loss, "full_val_bpb": bpb,
                         "train_time": time.time() - self.t_start})
        return loss

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train (or with eval_only, evaluate); a stop request saves ckpt.pt and raises Interrupted."""
        self.bar = None
        try:
            return self._run()
        except signals.StopRequested:
            saved = None
            if not self.config.eval_only:  # an evaluation-only run has nothing new to save
                saved = self.out_dir / checkpoint.LATEST
                self.save(checkpoint.LATEST)
            self.stop.mark_saved()
            if self.bar is not None:
                self.bar.close()
            self.logger.finish()
            self.dist.close()  # every rank has finished the save's collectives before any exits
            raise self.stop.interrupted(self.iter_num, saved) from None

    def _run(self) -> dict[str, Any]:
        c = self.config
        report = Report(self.model_config)
        self.t_start = time.time()
        self.echo(f"model: {report.total / 1e6:.2f}M parameters, device {self.device}, "
                  f"{describe_precision(c.dtype, self.device, self.dtype)}, compile {self.compile}")
        if self.model_config.vocab_size > self.dataset.vocab_size:
            self.echo(f"vocabulary: {self.dataset.vocab_size:,} tokens in {self.model_config.vocab_size:,} rows "
                      f"(the rest pad the embedding to a multiple of {VOCAB_MULTIPLE}; never sampled)")
        self.echo(report.summary())
        self.echo(describe_threads(kernels.library() is not None if self.device == "cpu" else None))
        self.echo(describe_schedule(c))
        per_group = {f"params_{group}": report.group_total(group) for group in GROUPS}
        self.logger.summary({"params": report.total, "params_non_embedding": report.non_embedding,
                             **per_group, "flops_per_token": self.mfu.flops_per_token, "peak_flops": self.mfu.peak_flops})
        if c.eval_only:
            self.eval_and_checkpoint()
            loss = self.report_full_val()
            self.logger.finish()
            self.dist.close()
            return {"iter_num": self.iter_num, "full_val_loss": loss}
        start_iter = self.iter_num
        hide_bar = self.quiet or not self.dist.is_master
        bar = self.bar = tqdm(total=c.max_iters, initial=start_iter, disable=True if hide_bar else None, unit="it",
                              dynamic_ncols=True, leave=False)
        t_start = t_last = self.t_start = time.time()
        iters_since_log = self.tokens_since_log = 0
        self.model.train()
        while self.iter_num < c.max_iters:
            if self.iter_num % c.eval_interval == 0 and not (self.iter_num == start_iter and start_iter > 0):
                self.eval_and_checkpoint()
                t_last, iters_since_log, self.tokens_since_log = time.time(), 0, 0  # don't count evaluation time in tokens/s
            if c.full_eval_interval and self.iter_num % c.full_eval_interval == 0 and self.iter_num > start_iter:
                self.report_full_val()
                t_last, iters_since_log, self.tokens_since_log = time.time(), 0, 0
            lr = learning_rate(self.iter_num, c)
            loss, grad_norm = self.train_step(lr)
            self.iter_num += 1
            iters_since_log += 1
            if self.stop.agreed(self.dist.agreed_max):  # every rank stops after the same step
                raise signals.StopRequested
            bar.update(1)
            if self.iter_num % c.log_interval == 0 or self.iter_num == c.max_iters:
                # the only host sync of the loop: the step's loss and norm, and whether any step was bad
                loss, grad_norm = float(loss), float(grad_norm)
                self.guard.check(self.echo)
                now = time.time()
                tokens_per_sec = self.tokens_since_log / max(now - t_last, 1e-9)
                dt, t_last = (now - t_last) / iters_since_log, now  # seconds per iteration since the last log
                iters_since_log = self.tokens_since_log = 0
                bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_per_sec:,.0f}", refresh=False)
                self.echo(f"iter {self.iter_num}: loss {loss:.4f}, time {dt * 1000:.1f}ms, lr {lr:.2e}, {tokens_per_sec:,.0f} tok/s")
                self.logger.log({"iter": self.iter_num, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                                 "tokens_per_sec": tokens_per_sec, "mfu": self.mfu(tokens_per_sec)})
        bar.close()
        train_time = time.time() - t_start
        if self.iter_num > start_iter or start_iter == 0:
            self.eval_and_checkpoint()
            self.save(checkpoint.LATEST)
        loss = self.report_full_val()
        self.logger.finish()
        self.echo(f"trained {self.iter_num - start_iter} iterations in {train_time:.1f}s; checkpoints in {self.out_dir}")
        self.dist.close()
        return {"iter_num": self.iter_num, "best_val_loss": self.best_val_loss, "full_val_loss": loss,
                "train_time": train_time}


def train(model_config: GPTConfig, config: TrainConfig, quiet: bool = False) -> dict[str, Any]:
    """Run a training (or evaluation) to its end, holding out_dir's lock (rank 0) the whole time."""
    env = torchrun_env()
    owns_out_dir = env is None or env[0] == 0
    with OutDirLock(_make_out_dir(config.out_dir)) if owns_out_dir else contextlib.nullcontext():
        trainer = Trainer(model_config, config, quiet)
        if config.init_from == "resume":  # the checkpoint it resumed from stays until the next save
            trainer.stop.checkpoint_written(trainer.out_dir / checkpoint.LATEST, trainer.iter_num)
        with trainer.stop, trainer.dist.naming_dead_ranks():
            return trainer.run()
