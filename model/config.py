"""Typed configs for the model and for training, loaded from TOML files and `--key=value` flags.

Config files are flat, like nanoGPT's: every key is either a `GPTConfig` field (the network) or a
`TrainConfig` field (everything else), and a file states only what differs from the defaults below.
Flags given on the command line win over the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from model.errors import ConfigError

RECORD_ONLY = {"config_key": False}
"""Metadata of a config field that records something about the config (which keys were given) and is
no config key itself: no flag sets it, and it is neither saved nor compared."""


@dataclass
class GPTConfig:
    """The shape of the network. Defaults are nanoGPT's CPU recipe size (about 0.8M parameters)."""

    n_layer: int = 4
    """Number of transformer blocks."""
    n_head: int = 4
    """Attention heads per block; each head sees n_embd // n_head channels."""
    n_embd: int = 128
    """Width of the residual stream (d_model)."""
    block_size: int = 64
    """Context length: the most tokens the model attends over (size of the position table)."""
    vocab_size: int | None = None
    """Token vocabulary size; None takes it from the prepared dataset's meta.json."""
    dropout: float = 0.0
    """Dropout probability on embeddings, attention weights and residual branches (0 for none)."""
    bias: bool = True
    """Use biases in linear layers and LayerNorms, as GPT-2 does."""
    tie_weights: bool = True
    """Share the token embedding matrix with the output (LM head) projection, as GPT-2 does."""
    mlp_ratio: int = 4
    """Hidden width of each MLP as a multiple of n_embd."""
    pos_embedding: str = "learned"
    """'learned' (GPT-2's position table) or 'rope' (rotary embeddings applied to queries and keys)."""
    norm: str = "layernorm"
    """'layernorm' (GPT-2) or 'rmsnorm' (no mean subtraction, no bias: a little cheaper)."""
    activation: str = "gelu"
    """MLP nonlinearity: 'gelu' (GPT-2, tanh approximation) or 'relu2' (squared ReLU)."""
    qk_norm: bool = False
    """RMS-normalise each head's queries and keys before the dot product (steadier at high learning rates)."""
    given: frozenset[str] | None = field(default=None, repr=False, compare=False, metadata=RECORD_ONLY)
    # keys a config file or flag set (build_configs records them); None for a config built in code

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_head", "n_embd", "block_size", "mlp_ratio"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.vocab_size is not None and self.vocab_size < 1:
            raise ConfigError(f"vocab_size must be a positive integer, got {self.vocab_size}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        for name, allowed in ARCH_CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got '{getattr(self, name)}'")

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    def check_buildable(self, require_vocab: bool = True) -> None:
        """Raise ConfigError unless a model of this shape can be instantiated.

        Kept apart from __post_init__ so that a parameter report can still be made for configs
        (such as two of the GPT-3 paper's rows) whose width is not a multiple of the head count.
        """
        if self.n_embd % self.n_head != 0:
            raise ConfigError(
                f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}; "
                f"choose n_head from the divisors of n_embd, e.g. {_nearest_divisors(self.n_embd, self.n_head)}"
            )
        if self.pos_embedding == "rope" and self.head_size % 2:
            raise ConfigError(
                f"pos_embedding='rope' rotates channel pairs, so the head size n_embd/n_head must be even; "
                f"got {self.n_embd}/{self.n_head} = {self.head_size}"
            )
        if require_vocab and self.vocab_size is None:
            raise ConfigError("vocab_size is not set; it normally comes from the dataset's meta.json")


@dataclass
class TrainConfig:
    """Everything about a training run except the network's shape. Key names are nanoGPT's."""

    # I/O
    out_dir: str = "out"
    """Folder for checkpoints (ckpt.pt latest, best.pt best validation), config.json and metrics.jsonl;
    one run at a time (it holds out_dir/.lock while it runs)."""
    eval_interval: int = 250
    """Estimate train/val loss (and save checkpoints) every this many iterations."""
    log_interval: int = 10
    """Print the training loss every this many iterations."""
    eval_iters: int | None = None
    """Random batches per split used to estimate the loss at each evaluation; None scales it with the run
    so that all evaluations together cost about EVAL_BUDGET of the training steps (at most 200, nanoGPT's)."""
    eval_only: bool = False
    """Evaluate once (estimate and full validation) and exit without training."""
    always_save_checkpoint: bool = True
    """Write ckpt.pt at every evaluation; when False it is written only when val loss improves."""
    init_from: str = "scratch"
    """'scratch' for a new model, 'resume' to continue from out_dir/ckpt.pt (with its architecture, and its
    learning-rate schedule and dropout unless set), or a model to finetune: a Hugging Face GPT-2 folder or hub name
    (e.g. gpt2), a training run folder or a checkpoint file."""
    overwrite: bool = False
    """Let a new run (init_from other than 'resume') start in an out_dir that holds a run: the old run's
    checkpoints, metrics.jsonl, loss.png and config.json are deleted first. Without it such a run is refused."""
    # logging
    wandb_log: bool = False
    """Log to Weights & Biases (respects WANDB_MODE, e.g. offline)."""
    wandb_project: str = "tinygpt"
    """wandb project name."""
    wandb_run_name: str = "run"
    """wandb run name."""
    wandb_mode: str = ""
    """'online', 'offline' or 'disabled'; empty leaves it to WANDB_MODE (wandb's default is online)."""
    wandb_log_checkpoint: bool = False
    """At the end of the run, upload best.pt to wandb as a model artifact."""
    sample_tokens: int = 200
    """Length of the text sample logged to wandb (a Table) at each evaluation; 0 for none."""
    peak_flops: float = 0.0
    """Peak FLOP/s of the device, for MFU; 0 takes a known GPU's datasheet peak (model/device.py) or measures it once with a brief large matmul, negative skips MFU."""
    # data
    dataset: str = "shakespeare_char"
    """Name of the prepared dataset folder under data_dir (train.bin, val.bin, meta.json)."""
    data_dir: str = "data"
    """Folder that holds prepared datasets."""
    gradient_accumulation_steps: int = 1
    """Micro-batches summed into one optimizer step."""
    batch_size: int = 12
    """Sequences per micro-batch."""
    # optimizer
    learning_rate: float = 1e-3
    """Peak learning rate."""
    max_iters: int = 2000
    """Total optimizer steps."""
    weight_decay: float = 0.1
    """AdamW weight decay, applied to matrices only (not biases, norms)."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.99
    """AdamW beta2."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping."""
    on_nan: str = "stop"
    """When a step's loss or gradients are NaN or inf: 'stop' the run, or 'skip' the step; it is never applied."""
    # learning rate schedule
    decay_lr: bool = True
    """Use linear warmup then cosine decay; False keeps learning_rate constant."""
    warmup_iters: int = 100
    """Iterations of linear warmup."""
    lr_decay_iters: int = 2000
    """Iteration at which the cosine decay reaches min_lr. When not set, or set equal to max_iters in the
    same config file, it follows max_iters (also a --max_iters override); any other value is kept."""
    min_lr: float = 1e-4
    """Floor of the learning rate (about learning_rate / 10)."""
    # system
    device: str = "auto"
    """'auto' (cuda, then mps, then cpu), 'cpu', 'cuda', 'cuda:N' or 'mps'."""
    dtype: str = "auto"
    """'float32', 'bfloat16' or 'float16' (with a grad scaler); 'auto' is bfloat16 on GPUs and CPUs with native bfloat16, float16 on older GPUs, else float32."""
    compile: bool | None = None
    """Wrap the model in torch.compile (pays a compile time up front); None: on for CUDA, off elsewhere (on a CPU it costs minutes)."""
    kernels: bool = True
    """Use the optional C kernels on a CPU (model/kernels: dropout, attention weights, GELU, LayerNorm,
    fused-bias linear), built with the system's C compiler on first use; False keeps PyTorch's own ops
    and builds nothing (as does the environment variable TINYGPT_KERNELS=0)."""
    seed: int = 1337
    """Seed for weights initialisation and batch sampling."""
    fsdp: bool = False
    """Under torchrun, shard weights, gradients and optimizer state over the ranks (FSDP) instead of
    keeping a full copy on each (DDP): for models that don't fit one GPU."""
    # optimizer choice
    optimizer: str = "adamw"
    """'adamw', or 'muon': Muon (orthogonalised momentum) for the blocks' 2-D weight matrices, AdamW for the rest."""
    muon_lr: float = 0.02
    """Peak learning rate of the Muon matrices (follows the same warmup/decay shape as learning_rate)."""
    muon_momentum: float = 0.95
    """Muon's Nesterov momentum."""
    full_eval_interval: int = 0
    """Also compute the full-validation loss every this many iterations (0: only at the end of training)."""
    given: frozenset[str] | None = field(default=None, repr=False, compare=False, metadata=RECORD_ONLY)
    # keys a config file or flag set (build_configs records them); None for a config built in code

    def __post_init__(self) -> None:
        positive = ("eval_interval", "log_interval", "eval_iters", "gradient_accumulation_steps", "batch_size")
        for name in positive:
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)}")
        for name in ("max_iters", "warmup_iters", "lr_decay_iters"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("learning_rate", "min_lr", "weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.on_nan not in ON_NAN:
            raise ConfigError(f"on_nan must be one of {', '.join(ON_NAN)}; got '{self.on_nan}'")
        if self.wandb_mode not in WANDB_MODES:
            raise ConfigError(f"wandb_mode must be one of {', '.join(map(repr, WANDB_MODES))}; got '{self.wandb_mode}'")
        if self.sample_tokens < 0:
            raise ConfigError(f"sample_tokens must be >= 0, got {self.sample_tokens}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got '{self.optimizer}'")
        if self.muon_lr < 0 or not 0.0 <= self.muon_momentum < 1.0:
            raise ConfigError(f"muon_lr must be >= 0 and muon_momentum in [0, 1); got {self.muon_lr}, {self.muon_momentum}")
        if self.fsdp and self.optimizer == "muon":
            raise ConfigError("optimizer='muon' needs whole matrices and can't run with fsdp=True; use optimizer='adamw'")
        if self.full_eval_interval < 0:
            raise ConfigError(f"full_eval_interval must be >= 0, got {self.full_eval_interval}")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of auto, {', '.join(DTYPES)}; got '{self.dtype}'")
        check_device("device", self.device)
        check_seed("seed", self.seed)
        for name in ("out_dir", "dataset"):
            if not getattr(self, name).strip():
                raise ConfigError(f"{name} must not be empty")

    def evaluation_batches(self) -> int:
        """eval_iters, or when it is None the most batches per split that keep every evaluation of the
        run together within EVAL_BUDGET of its training compute. An evaluation runs 2 x eval_iters
        forward passes (train and val split) of one micro-batch each, and a forward pass costs about a
        third of a training micro-step (forward + backward); the run evaluates every eval_interval
        iterations and once more at the end."""
        if self.eval_iters is not None:
            return self.eval_iters
        evaluations = self.max_iters // self.eval_interval + 1
        micro_steps = max(self.max_iters, 1) * self.gradient_accumulation_steps
        fitting = int(EVAL_BUDGET * micro_steps * FORWARD_PER_STEP / (2 * evaluations))
        return max(1, min(MAX_EVAL_ITERS, fitting))

    def check_schedule(self) -> None:
        """Refuse a learning-rate schedule that climbs instead of decaying. Called once the schedule is
        final (after a resumed run has taken the checkpoint's), not in __post_init__."""
        if self.decay_lr and self.min_lr > self.learning_rate:
            raise ConfigError(
                f"min_lr={self.min_lr:g} is above learning_rate={self.learning_rate:g}, so the cosine decay would "
                f"raise the rate; set min_lr <= learning_rate (about a tenth of it), or decay_lr=False"
            )

    def schedule_warnings(self) -> list[str]:
        """Legal but surprising schedule settings, one line each."""
        if self.decay_lr and self.warmup_iters > self.lr_decay_iters:
            return [f"warmup_iters={self.warmup_iters} is beyond lr_decay_iters={self.lr_decay_iters}: the rate "
                    f"warms up, then drops straight to min_lr at iteration {self.warmup_iters}"]
        return []


EVAL_BUDGET = 0.03
"""The share of a run's training compute its loss estimates may take when eval_iters is not set."""
FORWARD_PER_STEP = 3
"""Forward passes that cost as much as one training micro-step (a forward and a backward pass)."""
MAX_EVAL_ITERS = 200
"""The most batches per split a derived eval_iters takes (nanoGPT's eval_iters): enough for a steady estimate."""

SEED_RANGE = (-(2**63), 2**63 - 1)
"""Seeds PyTorch's generators accept (64-bit)."""


def check_device(name: str, device: str) -> None:
    if not (device in ("auto", "cpu", "cuda", "mps") or device.startswith("cuda:")):
        raise ConfigError(f"{name} must be one of auto, cpu, cuda, cuda:N, mps; got '{device}'")


def check_seed(name: str, seed: int) -> None:
    if not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        raise ConfigError(f"{name} must be a 64-bit integer (from -2**63 to 2**63-1), got {seed}")


DTYPES = ("float32", "bfloat16", "float16")
"""The precisions a run or a sampler can use, by their torch names (model/device.py turns one into a
torch.dtype); the dtype key also takes 'auto'."""
ON_NAN = ("stop", "skip")
WANDB_MODES = ("", "online", "offline", "disabled")
OPTIMIZERS = ("adamw", "muon")
ARCH_CHOICES = {
    "pos_embedding": ("learned", "rope"),
    "norm": ("layernorm", "rmsnorm"),
    "activation": ("gelu", "relu2"),
}
_SECTIONS = (GPTConfig, TrainConfig)


def _nearest_divisors(n: int, near: int) -> str:
    divisors = sorted((d for d in range(1, n + 1) if n % d == 0), key=lambda d: abs(d - near))
    return ", ".join(str(d) for d in sorted(divisors[:3]))


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each dataclass field (read from the source, so it is written only once)."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
            docs[node.target.id] = " ".join(str(after.value.value).split())
    return docs


def config_fields(cls: type[GPTConfig] | type[TrainConfig]) -> list[dataclasses.Field]:
    """The fields of GPTConfig or TrainConfig that are config keys (every field but `given`)."""
    return [f for f in fields(cls) if f.metadata.get("config_key", True)]


def describe_keys() -> str:
    """A help text listing every config key with its default and docstring, the docstrings in one column."""
    flags = {cls: [(f"--{f.name}={f.default!r}", f.name) for f in config_fields(cls)] for cls in _SECTIONS}
    width = max(len(flag) for rows in flags.values() for flag, _ in rows)
    lines = []
    for cls, rows in flags.items():
        docs = field_docs(cls)
        lines.append(f"{cls.__name__} keys:")
        lines.extend(f"  {flag:<{width}}  {docs.get(name, '')}" for flag, name in rows)
    return "\n".join(lines)


def valid_keys() -> dict[str, tuple[type[GPTConfig] | type[TrainConfig], dataclasses.Field, Any]]:
    """Every config key, mapped to the dataclass that owns it, its field and its type hint."""
    keys = {}
    for cls in _SECTIONS:
        hints = typing.get_type_hints(cls)
        for f in config_fields(cls):
            keys[f.name] = (cls, f, hints[f.name])
    return keys


def _type_name(hint: Any) -> str:
    if isinstance(hint, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    return "None" if hint is type(None) else hint.__name__


def did_you_mean(word: str, choices: typing.Iterable[str]) -> str:
    """' (did you mean X?)' for the choice closest to a mistyped word, or '' when none is close: the one
    rule for config keys and for every program's flags."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


ONE_DASH_FLAG = re.compile(r"-[A-Za-z_]\w+(=.*)?", re.S)
"""An argument such as '-max_iters=5': a flag's name (a word of two or more characters) after one dash."""


def one_dash_hint(arg: str) -> str | None:
    """For an argument such as '-max_iters=5' (a flag with one dash), the sentence that says so."""
    if ONE_DASH_FLAG.fullmatch(arg):
        return f"'{arg}' has one dash; flags take two: '-{arg}'"
    return None


def _unknown_key(key: str) -> ConfigError:
    names = list(valid_keys())
    hint = did_you_mean(key, names)
    return ConfigError(f"unknown config key '{key}'{hint}; valid keys: {', '.join(names)}")


def _finite(key: str, number: float) -> float:
    if not math.isfinite(number):
        raise ConfigError(f"config key '{key}' must be a finite number, got {number}")
    return number


BOOL_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
"""What a command-line boolean may say, in any case."""


def parse_bool(text: str) -> bool:
    """A command-line boolean (one of BOOL_WORDS, any case); usable as an argparse `type`."""
    try:
        return BOOL_WORDS[text.lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(f"expected True or False, got '{text}'") from None


def coerce(key: str, value: Any, hint: Any) -> Any:
    """Check (TOML values) or parse (command-line strings) `value` against the field type `hint`."""
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    from_cli = isinstance(value, str)
    for t in allowed:
        if t is type(None):
            if value is None or (from_cli and value in ("None", "none", "null")):
                return None
        elif t is bool:
            if isinstance(value, bool):
                return value
            if from_cli and value.lower() in BOOL_WORDS:
                return parse_bool(value)
        elif t is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if from_cli:
                try:
                    return int(value.replace("_", ""))
                except ValueError:
                    pass
        elif t is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return _finite(key, float(value))
            if from_cli:
                try:
                    return _finite(key, float(value))
                except ValueError:
                    pass
        elif t is str:
            if isinstance(value, str):
                return value
    raise ConfigError(f"config key '{key}' expects {_type_name(hint)}, got {value!r}")


def parse_overrides(args: list[str] | tuple[str, ...]) -> dict[str, str]:
    """Turn ['--n_layer=4', '--compile=False'] into {'n_layer': '4', 'compile': 'False'}."""
    out = {}
    for arg in args:
        if one_dash_hint(arg):
            raise ConfigError(one_dash_hint(arg))
        if not arg.startswith("--") or "=" not in arg:
            raise ConfigError(f"expected --key=value, got '{arg}'")
        key, value = arg[2:].split("=", 1)
        out[key.replace("-", "_")] = value
    return out


def split_config_args(
    args: list[str] | tuple[str, ...], switches: tuple[str, ...] = ()
) -> tuple[str | None, list[str], set[str]]:
    """A program's `[CONFIG.toml] [--key=value ...]` arguments as (the config file or None, the
    --key=value overrides, the given ones among the program's own `switches` such as --quiet)."""
    given = {a for a in args if a in switches}
    rest = [a for a in args if a not in switches]
    path = rest.pop(0) if rest and not rest[0].startswith("-") else None
    return path, rest, given


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not valid UTF-8 text") from None


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The values of a TOML config file, or of a run's config.json (the resolved config it wrote)."""
    if Path(path).suffix.lower() != ".json":
        return read_toml(path)
    from model.files import read_json

    if not Path(path).is_file():
        raise ConfigError(f"config file not found: {path}")
    values = read_json(path)
    if not isinstance(values, dict):
        raise ConfigError(f"{path} holds no config: expected a JSON object of keys and values")
    return values


def build_configs(values: dict[str, Any]) -> tuple[GPTConfig, TrainConfig]:
    """Build both configs from one flat mapping of keys to (TOML or command-line string) values."""
    keys = valid_keys()
    per_section: dict[type, dict[str, Any]] = {cls: {} for cls in _SECTIONS}
    for key, value in values.items():
        if key not in keys:
            raise _unknown_key(key)
        cls, _, hint = keys[key]
        per_section[cls][key] = coerce(key, value, hint)
    return (GPTConfig(**per_section[GPTConfig], given=frozenset(per_section[GPTConfig])),
            TrainConfig(**per_section[TrainConfig], given=frozenset(per_section[TrainConfig])))


def was_given(config: GPTConfig | TrainConfig, key: str) -> bool:
    """Whether a config file or flag set `key`. For a config built in code (which doesn't record what
    was passed), a value other than the default counts as set."""
    if config.given is not None:
        return key in config.given
    return getattr(config, key) != getattr(type(config)(), key)


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] | dict[str, Any] = ()
) -> tuple[GPTConfig, TrainConfig]:
    """Load a TOML config or a run's config.json (or the defaults, when path is None) and apply overrides on top."""
    values: dict[str, Any] = read_config_file(path) if path is not None else {}
    for key, value in values.items():
        if isinstance(value, dict):
            raise ConfigError(f"config files are flat; move the keys of table [{key}] to the top level")
    extra = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    follows = schedule_follows_max_iters(values, extra)
    values.update(extra)
    model_config, train_config = build_configs(values)
    if follows:  # not recorded as given: a resumed run still takes the checkpoint's schedule
        train_config.lr_decay_iters = train_config.max_iters
    return model_config, train_config


def schedule_follows_max_iters(file_values: dict[str, Any], overrides: dict[str, Any]) -> bool:
    """Whether lr_decay_iters was left to follow max_iters: no flag sets it, and the config file (or,
    without one, the defaults) either doesn't set it or sets it equal to max_iters. A schedule chosen
    separately (a flag, or a file value other than the file's max_iters) is kept."""
    if "lr_decay_iters" in overrides:
        return False
    if "lr_decay_iters" not in file_values:
        return True
    hints = typing.get_type_hints(TrainConfig)
    decay = coerce("lr_decay_iters", file_values["lr_decay_iters"], hints["lr_decay_iters"])
    max_iters = coerce("max_iters", file_values.get("max_iters", TrainConfig.max_iters), hints["max_iters"])
    return decay == max_iters


def to_dict(model_config: GPTConfig, train_config: TrainConfig | None = None) -> dict[str, Any]:
    """One flat dict (JSON- and TOML-friendly) of everything needed to rebuild the configs."""
    configs = (model_config,) if train_config is None else (model_config, train_config)
    return {f.name: getattr(c, f.name) for c in configs for f in config_fields(type(c))}


def from_dict(values: dict[str, Any]) -> tuple[GPTConfig, TrainConfig]:
    """Inverse of to_dict; unknown keys (e.g. from a newer version) are an error, not silently dropped."""
    return build_configs(dict(values))
