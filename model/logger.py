"""Where training metrics go: always out_dir/metrics.jsonl, and Weights & Biases when asked.

wandb sits behind the same two calls as the local file (`log`, `finish`), so the training loop never
checks whether it is on; WANDB_MODE (online, offline, disabled) and the other WANDB_* variables work
as usual.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from model.errors import TinyGPTError


class RunLogger:
    def __init__(
        self,
        out_dir: str | Path,
        config: dict[str, Any],
        wandb_log: bool = False,
        wandb_project: str = "tinygpt",
        wandb_run_name: str = "run",
        enabled: bool = True,
    ):
        self.enabled = enabled
        self.path = Path(out_dir) / "metrics.jsonl"
        self.start = time.time()
        self.wandb_run = None
        if enabled and wandb_log:
            try:
                import wandb
            except ImportError:
                raise TinyGPTError("wandb_log=True but wandb is not installed; pip install wandb") from None
            self.wandb_run = wandb.init(project=wandb_project, name=wandb_run_name, config=config, dir=str(out_dir))

    def log(self, metrics: dict[str, Any]) -> None:
        """Append one JSON object (with wall time since start) to metrics.jsonl and send it to wandb."""
        if not self.enabled:
            return
        record = {**metrics, "wall_time": round(time.time() - self.start, 3)}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.wandb_run is not None:
            step = metrics.get("iter")
            self.wandb_run.log({k: v for k, v in metrics.items() if k != "iter"}, step=step)

    def finish(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None
