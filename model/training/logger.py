"""Where training metrics go: always out_dir/metrics.jsonl and out_dir/loss.png, and Weights & Biases
when asked.

wandb sits behind the same calls as the local files (`log`, `log_sample`, `finish`), so the training
loop never checks whether it is on. `wandb_mode` (or, when that is empty, WANDB_MODE) chooses online,
offline or disabled; the other WANDB_* variables (WANDB_DIR, WANDB_ENTITY, WANDB_API_KEY, ...) work as
usual. Offline runs are written under out_dir/wandb and can be uploaded later with `wandb sync`.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from model.checkpoint import BEST
from model.files import atomic_write_bytes
from model.errors import TinyGPTError
from model.training.metrics import METRICS, read_metrics

SAMPLE_COLUMNS = ["iter", "val_loss", "text"]


class RunLogger:
    def __init__(
        self,
        out_dir: str | Path,
        config: dict[str, Any],
        wandb_log: bool = False,
        wandb_project: str = "tinygpt",
        wandb_run_name: str = "run",
        enabled: bool = True,
        wandb_mode: str = "",
        wandb_log_checkpoint: bool = False,
        resume_iter: int | None = None,
        wandb_run_id: str | None = None,
    ):
        self.enabled = enabled
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / METRICS
        self.write_failed = False
        self.start = time.time()
        if enabled:
            self.start -= self._continue_metrics(resume_iter)
        self.wandb_run = None
        self.log_checkpoint = wandb_log_checkpoint
        self.samples: list[list[Any]] = []
        if enabled and wandb_log and wandb_mode != "disabled":
            try:
                import wandb
            except ImportError:
                raise TinyGPTError("wandb_log=True but wandb is not installed; pip install wandb") from None
            # a resumed run passes the id its checkpoint kept, and goes on with that wandb run's curves
            self.wandb_run = wandb.init(
                project=wandb_project, name=wandb_run_name, config=config, dir=str(out_dir), mode=wandb_mode or None,
                id=wandb_run_id, resume="allow" if wandb_run_id else None,
            )
            # several records share an iteration (training step, evaluation, sample), so "iter" is the
            # x-axis of every chart rather than wandb's own step, which must grow with each log call
            self.wandb_run.define_metric("iter")
            self.wandb_run.define_metric("*", step_metric="iter")

    def _continue_metrics(self, resume_iter: int | None) -> float:
        """A new run starts a new metrics.jsonl. A resumed one keeps the records up to its checkpoint
        (later ones describe training that died with the process and is about to be redone) and
        continues their wall time; returns the wall time already spent."""
        if resume_iter is None or not self.path.is_file():
            self.path.unlink(missing_ok=True)
            return 0.0
        kept = [r for r in read_metrics(self.path) if r.get("iter", 0) <= resume_iter]
        atomic_write_bytes(self.path, "".join(json.dumps(r) + "\n" for r in kept).encode())
        return max((r.get("wall_time", 0.0) for r in kept), default=0.0)

    def log(self, metrics: dict[str, Any]) -> None:
        """Append one JSON object (with wall time since start) to metrics.jsonl and send it to wandb;
        keys whose value is None are left out. A record with a val_loss (an evaluation) redraws loss.png."""
        if not self.enabled:
            return
        metrics = {k: v for k, v in metrics.items() if v is not None}
        record = {**metrics, "wall_time": round(time.time() - self.start, 3)}
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
            if "val_loss" in metrics:
                from model.training.plots import plot_loss  # matplotlib takes a second to import: only when drawing

                plot_loss(self.out_dir)
        except OSError as e:
            # a full disk or a vanished folder costs the run its metrics, not its training: the
            # checkpoint writes say for themselves whether they still succeed
            if not self.write_failed:
                print(f"warning: could not write {self.path} or loss.png ({e.strerror or e}); training goes on",
                      file=sys.stderr, flush=True)
            self.write_failed = True
        if self.wandb_run is not None:
            self.wandb_run.log(metrics)

    def summary(self, values: dict[str, Any]) -> None:
        """Facts about the run as a whole (e.g. its parameter count), shown in wandb's run overview."""
        if self.wandb_run is not None:
            self.wandb_run.summary.update(values)

    @property
    def wandb_run_id(self) -> str | None:
        """The id of the wandb run being logged to (kept in checkpoints, so a resumed run continues it)."""
        if self.wandb_run is None or getattr(self.wandb_run, "disabled", False):
            return None
        return self.wandb_run.id

    @property
    def wants_samples(self) -> bool:
        """True when a text sample would go somewhere (not with WANDB_MODE=disabled, whose run is a no-op)."""
        return self.wandb_run is not None and not getattr(self.wandb_run, "disabled", False)

    def log_sample(self, iter_num: int, val_loss: float, text: str) -> None:
        """Add a generated text to the wandb Table of samples (one row per evaluation)."""
        if self.wandb_run is None:
            return
        import wandb

        self.samples.append([iter_num, val_loss, text])
        # a logged Table is a snapshot, so each evaluation logs all rows so far
        self.wandb_run.log({"iter": iter_num, "samples": wandb.Table(columns=SAMPLE_COLUMNS, data=list(self.samples))})

    def finish(self) -> None:
        if self.wandb_run is None:
            return
        best = self.out_dir / BEST
        if self.log_checkpoint and best.is_file():
            import wandb

            name = re.sub(r"[^\w.-]", "-", self.wandb_run.name or "run")  # artifact names allow only these
            artifact = wandb.Artifact(f"{name}-best", type="model")
            artifact.add_file(str(best))
            self.wandb_run.log_artifact(artifact)
        self.wandb_run.finish()
        self.wandb_run = None


@torch.no_grad()
def sample_text(model: torch.nn.Module, tokenizer, n_tokens: int, device: str, seed: int,
                check_stop: Callable[[], None] | None = None) -> str:
    """A short sample from the model as it is now, from the same seed each time (so samples logged
    at successive evaluations differ because the model changed, not the dice). check_stop, called
    before each token, may raise to abandon the sample (a stop request)."""
    from model.sampling.generate import generate
    from model.data.tokenizer import StreamDecoder

    if tokenizer.eot_token is not None:
        start = [tokenizer.eot_token]
    else:  # a character vocabulary: start on a new line, or on its first character if it has none
        start = [getattr(tokenizer, "stoi", {}).get("\n", 0)]
    was_training = model.training
    generator = torch.Generator(device=device).manual_seed(seed)
    idx = torch.tensor([start], dtype=torch.long, device=device)
    stream = StreamDecoder(tokenizer)
    pieces = []
    for ids in generate(model, idx, n_tokens, 0.8, 200, None, generator, vocab_size=tokenizer.vocab_size):
        pieces.append(stream.push(ids.tolist()))
        if check_stop is not None:
            check_stop()
    text = "".join(pieces)
    model.train(was_training)
    return text + stream.flush()
