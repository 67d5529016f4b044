"""The training loop: data, model, optimizer, evaluation, checkpoints and logs, wired together."""

from __future__ import annotations

import dataclasses
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from model import checkpoint, data
from model.config import GPTConfig, TrainConfig, to_dict
from model.device import autocast, resolve_device, resolve_dtype
from model.errors import TinyGPTError
from model.evaluate import estimate_loss, split_loss
from model.gpt import GPT
from model.logger import RunLogger
from model.optim import learning_rate, make_optimizer


def open_dataset(config: TrainConfig, echo=print) -> data.TokenDataset:
    """The prepared dataset, preparing the known ones (e.g. Tiny Shakespeare) on first use."""
    folder = Path(config.data_dir) / config.dataset
    if not (folder / "meta.json").is_file() and config.dataset in data.KNOWN_DATASETS:
        echo(f"preparing dataset '{config.dataset}' in {folder}")
        data.prepare(config.dataset, config.data_dir)
    return data.TokenDataset(folder)


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


def _rng_state(batch_generator: torch.Generator) -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "batches": batch_generator.get_state(),
        "python": list(random.getstate()[1]),
        "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
        "numpy_pos": int(np.random.get_state()[2]),
    }


def _restore_rng(state: dict[str, Any], batch_generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    batch_generator.set_state(state["batches"])
    random.setstate((3, tuple(int(v) for v in state["python"]), None))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))


class Trainer:
    """Holds a run's state; `run()` trains to max_iters and returns a summary dict."""

    def __init__(self, model_config: GPTConfig, config: TrainConfig, quiet: bool = False):
        model_config.check_buildable(require_vocab=False)  # fail before any data is prepared
        self.config = config
        self.quiet = quiet
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        self.ctx = autocast(self.device, self.dtype)
        self.out_dir = _make_out_dir(config.out_dir)
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        np.random.seed(config.seed % 2**32)
        self.batch_generator = torch.Generator().manual_seed(config.seed)

        self.dataset = open_dataset(config, self.echo)
        self.tokenizer_meta = self.dataset.meta["tokenizer"]
        self.iter_num = 0
        self.best_val_loss = float("inf")
        resume = None
        if config.init_from == "resume":
            resume = checkpoint.load_checkpoint(self.out_dir / checkpoint.LATEST, "cpu")
            model_config = checkpoint.model_config_from(resume)
            self.echo(f"resuming from {self.out_dir / checkpoint.LATEST} at iteration {resume['iter_num']}")
        pretrained = None
        if config.init_from not in ("scratch", "resume"):  # a Hugging Face GPT-2 folder or hub name
            pretrained = self._load_pretrained(config.init_from)
            model_config = dataclasses.replace(pretrained.config, dropout=model_config.dropout)
        model_config = self._fit_vocab(model_config)
        self.model_config = model_config

        self.model = GPT(model_config)
        if resume is not None:
            self.model.load_state_dict(resume["model"])
        if pretrained is not None:
            self.model.load_state_dict(pretrained.state_dict())
        self.model.to(self.device)
        self.optimizer = make_optimizer(self.model, config, self.device.split(":")[0])
        if resume is not None:
            self.optimizer.load_state_dict(resume["optimizer"])
            self.iter_num = int(resume["iter_num"])
            self.best_val_loss = float(resume["best_val_loss"])
            if "rng" in resume:
                _restore_rng(resume["rng"], self.batch_generator)
        self.scaler = torch.amp.GradScaler(self.device.split(":")[0], enabled=self.dtype == torch.float16)
        self.step_model = torch.compile(self.model) if config.compile else self.model
        self.config_dict = to_dict(model_config, config)
        checkpoint.write_config_json(self.out_dir, self.config_dict)
        self.logger = RunLogger(
            self.out_dir, self.config_dict, config.wandb_log, config.wandb_project, config.wandb_run_name
        )

    def echo(self, message: str) -> None:
        if not self.quiet:
            tqdm.write(message, file=sys.stdout)

    def _load_pretrained(self, name_or_dir: str) -> GPT:
        from model.hf import load_pretrained

        model, tok = load_pretrained(name_or_dir)
        if tok.to_meta() != self.tokenizer_meta:
            raise TinyGPTError(
                f"init_from={name_or_dir} uses tokenizer {tok.to_meta()['kind']} ({tok.vocab_size} tokens) but dataset "
                f"'{self.config.dataset}' was prepared with {self.tokenizer_meta.get('kind')} "
                f"({self.tokenizer_meta.get('vocab_size')} tokens); prepare it with the same tokenizer (e.g. --tokenizer=gpt2)"
            )
        self.echo(f"initialized from {name_or_dir}: {model.num_params() / 1e6:.1f}M parameters, block_size {model.config.block_size}")
        return model

    def _fit_vocab(self, model_config: GPTConfig) -> GPTConfig:
        data_vocab = self.dataset.vocab_size
        if model_config.vocab_size is None:
            return dataclasses.replace(model_config, vocab_size=data_vocab)
        if model_config.vocab_size < data_vocab:
            raise TinyGPTError(
                f"model vocab_size {model_config.vocab_size} is smaller than dataset "
                f"'{self.config.dataset}' vocabulary ({data_vocab} tokens)"
            )
        return model_config

    # -- pieces of the loop --------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        c = self.config
        return estimate_loss(
            self.step_model, self.dataset, c.batch_size, self.model_config.block_size, c.eval_iters,
            self.ctx, self.device, c.seed,
        )

    def full_val_loss(self) -> float:
        return split_loss(
            self.step_model, self.dataset, "val", self.model_config.block_size, max(self.config.batch_size, 64),
            self.ctx, self.device,
        )

    def save(self, name: str) -> None:
        state = checkpoint.model_state(self.model, self.model_config, self.tokenizer_meta)
        state.update(
            optimizer=self.optimizer.state_dict(),
            iter_num=self.iter_num,
            best_val_loss=self.best_val_loss,
            config=self.config_dict,
            rng=_rng_state(self.batch_generator),
        )
        checkpoint.save_checkpoint(self.out_dir / name, state)

    def train_step(self, lr: float) -> tuple[float, float]:
        """One optimizer step over gradient_accumulation_steps micro-batches; returns (loss, grad norm)."""
        c = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total = 0.0
        for _ in range(c.gradient_accumulation_steps):
            x, y = self.dataset.get_batch("train", c.batch_size, self.model_config.block_size, self.batch_generator)
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with self.ctx:
                _, loss = self.step_model(x, y)
                loss = loss / c.gradient_accumulation_steps
            self.scaler.scale(loss).backward()
            total += loss.item()
        grad_norm = 0.0
        if c.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return total, grad_norm

    def eval_and_checkpoint(self) -> None:
        losses = self.evaluate()
        self.echo(f"step {self.iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
        self.logger.log({"iter": self.iter_num, "train_loss": losses["train"], "val_loss": losses["val"]})
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
        self.echo(f"full-val loss {loss:.4f}")
        self.logger.log({"iter": self.iter_num, "full_val_loss": loss})
        return loss

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        c = self.config
        n_params = self.model.num_params()
        self.echo(f"model: {n_params / 1e6:.2f}M parameters, device {self.device}, dtype {str(self.dtype).split('.')[-1]}")
        if c.eval_only:
            self.eval_and_checkpoint()
            loss = self.report_full_val()
            self.logger.finish()
            return {"iter_num": self.iter_num, "full_val_loss": loss}
        tokens_per_iter = c.gradient_accumulation_steps * c.batch_size * self.model_config.block_size
        start_iter = self.iter_num
        bar = tqdm(total=c.max_iters, initial=start_iter, disable=True if self.quiet else None, unit="it",
                   dynamic_ncols=True, leave=False)
        t_start = t_last = time.time()
        self.model.train()
        while self.iter_num < c.max_iters:
            if self.iter_num % c.eval_interval == 0 and not (self.iter_num == start_iter and start_iter > 0):
                self.eval_and_checkpoint()
                t_last = time.time()  # don't count evaluation time in tokens/s
            lr = learning_rate(self.iter_num, c)
            loss, grad_norm = self.train_step(lr)
            self.iter_num += 1
            now = time.time()
            dt, t_last = now - t_last, now
            tokens_per_sec = tokens_per_iter / max(dt, 1e-9)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_per_sec:,.0f}", refresh=False)
            if self.iter_num % c.log_interval == 0 or self.iter_num == c.max_iters:
                self.echo(f"iter {self.iter_num}: loss {loss:.4f}, time {dt * 1000:.1f}ms, lr {lr:.2e}, {tokens_per_sec:,.0f} tok/s")
                self.logger.log({"iter": self.iter_num, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                                 "tokens_per_sec": tokens_per_sec})
        bar.close()
        train_time = time.time() - t_start
        if self.iter_num > start_iter or start_iter == 0:
            self.eval_and_checkpoint()
            self.save(checkpoint.LATEST)
        loss = self.report_full_val()
        self.logger.finish()
        self.echo(f"trained {self.iter_num - start_iter} iterations in {train_time:.1f}s; checkpoints in {self.out_dir}")
        return {"iter_num": self.iter_num, "best_val_loss": self.best_val_loss, "full_val_loss": loss,
                "train_time": train_time}


def train(model_config: GPTConfig, config: TrainConfig, quiet: bool = False) -> dict[str, Any]:
    return Trainer(model_config, config, quiet).run()
