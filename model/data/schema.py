"""What every file tinygpt loads must hold, checked before anything is built from it.

Checkpoints (torch.load with weights_only=True gives tensors and plain values), a dataset's
meta.json, tokenizer entries, a learned BPE's tokenizer.json and HellaSwag items are data that anyone
may have crafted or damaged: a string where a number belongs, an entry left out, a size of 2**40.
Each kind is described once below, as a TypedDict whose fields are Python types, `Annotated` with
limits where a type alone says too little. `check(value, Kind, where)` compares a loaded value with
its description and raises one TinyGPTError naming the file and the entry:

    out/ckpt.pt: model_config.n_layer must be an integer, got '1'

GPTConfig's and TrainConfig's own type hints (model/config.py) describe the configs stored in a
checkpoint, so a config key is described in one place only. (No `from __future__ import annotations`
here: TypedDict tells NotRequired fields apart only when the annotations are not strings.)
"""

import dataclasses
import types
import typing
from typing import Annotated, Any, Literal, NotRequired, TypedDict

import torch

from model.config import GPTConfig, valid_keys
from model.errors import TinyGPTError


# -- limits that a type alone doesn't state ----------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Between:
    """A number from `low` to `high` (None: unbounded)."""

    low: float | None = None
    high: float | None = None

    def problem(self, value: Any) -> str | None:
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            if self.high is None:
                return f"must be at least {self.low}"
            return f"must be from {self.low} to {self.high}"
        return None


@dataclasses.dataclass(frozen=True)
class Length:
    """A list or text of `low` to `high` items (None: unbounded)."""

    low: int = 0
    high: int | None = None

    def problem(self, value: Any) -> str | None:
        if len(value) < self.low or (self.high is not None and len(value) > self.high):
            exactly = self.high == self.low
            return f"must have {'exactly' if exactly else 'at least'} {self.low} items" if exactly or self.high is None \
                else f"must have {self.low} to {self.high} items"
        return None


@dataclasses.dataclass(frozen=True)
class LikeTensor:
    """A tensor of the dtype and shape that `example()` has (e.g. this process's RNG state)."""

    example: typing.Callable[[], torch.Tensor]

    def problem(self, value: torch.Tensor) -> str | None:
        want = self.example()
        if value.dtype != want.dtype or value.shape != want.shape:
            return f"must be a {want.dtype} tensor of shape {tuple(want.shape)}"
        return None


class MersennePosition:
    """Python's random state: 624 words of a Mersenne Twister, then its position among them (0 to 624)."""

    def problem(self, value: list[int]) -> str | None:
        return None if value[-1] <= 624 else "must end in a position from 0 to 624"


class PlainName:
    """A file name inside the folder that names it: no folder separators, not '..'."""

    def problem(self, value: str) -> str | None:
        if not value or "/" in value or "\\" in value or value in (".", ".."):
            return "must be a file name in the same folder"
        return None


@dataclasses.dataclass(frozen=True)
class FieldsOf:
    """A mapping of config keys (GPTConfig's or TrainConfig's) to values of their declared types;
    `known_only` refuses keys that no config declares (a newer version's architecture options)."""

    hints: typing.Callable[[], dict[str, Any]]
    known_only: bool = False


Count = Annotated[int, Between(0)]
Positive = Annotated[int, Between(1)]
SIZE_LIMIT = 2**31 - 1
"""The largest size (layers, width, context, vocabulary) a stored model config may state: past it, no
tensor of the model would fit in any machine's memory."""


def _model_hints() -> dict[str, Any]:
    hints = typing.get_type_hints(GPTConfig, include_extras=True)
    sized = {name: Annotated[int, Between(1, SIZE_LIMIT)] for name, hint in hints.items() if hint is int}
    return {**{k: v for k, v in hints.items() if k != "given"}, **sized,
            "vocab_size": Annotated[int, Between(1, SIZE_LIMIT)]}


def _train_hints() -> dict[str, Any]:
    return {name: hint for name, (_, _, hint) in valid_keys().items()}


# -- the files --------------------------------------------------------------------------------------
class CharTokenizerEntry(TypedDict):
    kind: Literal["char"]
    chars: Annotated[str, Length(1)]
    vocab_size: NotRequired[Positive]


class TiktokenTokenizerEntry(TypedDict):
    kind: Literal["tiktoken"]
    name: NotRequired[str]
    vocab_size: NotRequired[Positive]


class BPETokenizerEntry(TypedDict):
    """Inline (`json`, as in checkpoints) or naming a file beside meta.json (`file`, `sha256`)."""

    kind: Literal["bpe"]
    vocab_size: NotRequired[Positive]
    json: NotRequired[str]
    file: NotRequired[Annotated[str, PlainName()]]
    sha256: NotRequired[str]


class ChatTokenizerEntry(TypedDict):
    """A base tokenizer's entry plus the chat template's special tokens (model/data/tokenizer.py)."""

    kind: Literal["chat"]
    base: CharTokenizerEntry | TiktokenTokenizerEntry | BPETokenizerEntry
    special_tokens: Annotated[list[str], Length(1, 16)]
    vocab_size: NotRequired[Positive]


TokenizerEntry = CharTokenizerEntry | TiktokenTokenizerEntry | BPETokenizerEntry | ChatTokenizerEntry
"""A tokenizer as meta.json, checkpoints and exported folders store it (model/data/tokenizer.py)."""


class AddedToken(TypedDict):
    id: Count
    content: str


class BPEModel(TypedDict):
    type: Literal["BPE"]
    vocab: dict[str, Count]


class BPETokenizerJSON(TypedDict):
    """The parts of Hugging Face tokenizers' tokenizer.json that a learned byte-level BPE is read from."""

    model: BPEModel
    added_tokens: list[AddedToken]


class Shard(TypedDict):
    file: Annotated[str, PlainName()]
    tokens: Count


class SplitShards(TypedDict, total=False):
    train: list[Shard]
    val: list[Shard]


class DatasetMeta(TypedDict):
    """A prepared dataset's meta.json (model/data/dataset.py)."""

    tokenizer: TokenizerEntry
    vocab_size: Positive
    dtype: Literal["uint16", "uint32"]
    train_tokens: NotRequired[Count]
    val_tokens: NotRequired[Count]
    shards: NotRequired[SplitShards]


class Checkpoint(TypedDict):
    """What sampling, evaluation, serving and export read from a checkpoint (model/checkpoint.py)."""

    model: dict[str, torch.Tensor]
    model_config: Annotated[dict[str, Any], FieldsOf(_model_hints, known_only=True)]
    tokenizer: TokenizerEntry
    format_version: NotRequired[int]


class RankRNG(TypedDict):
    """One rank's random number generators (model/training/rng.py): torch's, Python's and numpy's
    Mersenne Twisters (624 words and a position each), and on CUDA the GPU's."""

    torch: Annotated[torch.Tensor, LikeTensor(torch.get_rng_state)]
    python: Annotated[list[Annotated[int, Between(0, 2**32 - 1)]], Length(625, 625), MersennePosition()]
    numpy: Annotated[torch.Tensor, LikeTensor(lambda: torch.zeros(624, dtype=torch.int64))]
    numpy_pos: Annotated[int, Between(0, 624)]
    cuda: NotRequired[torch.Tensor]


class DataPosition(TypedDict):
    batch_generator: Annotated[torch.Tensor, LikeTensor(torch.get_rng_state)]
    windows_drawn: NotRequired[Count]  # written by older versions, not read


class TrainingState(Checkpoint):
    """A checkpoint a run resumes from (model/training/trainer.py writes it)."""

    optimizer: dict[str, Any]
    iter_num: Count
    best_val_loss: float
    config: NotRequired[Annotated[dict[str, Any], FieldsOf(_train_hints)]]
    rng: NotRequired[list[RankRNG] | None]
    data_position: NotRequired[DataPosition | None]
    wandb_run_id: NotRequired[str | None]


class HellaSwagItem(TypedDict):
    """One line of a HellaSwag-format jsonl file (model/evaluation/multiple_choice.py)."""

    ctx: str
    endings: Annotated[list[str], Length(2)]
    label: Count


# -- the check --------------------------------------------------------------------------------------
def check(value: Any, kind: Any, where: str) -> None:
    """Raise TinyGPTError("{where}: {entry} must be ...") unless `value` has the shape `kind` describes."""
    problem = _problem(value, kind, "")
    if problem is not None:
        entry, text = problem
        raise TinyGPTError(f"{where}: {entry or 'the file'} {text}")


def _problem(value: Any, kind: Any, at: str) -> tuple[str, str] | None:
    """(the entry, what is wrong with it), or None when `value` fits `kind`."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is Annotated:
        inner, limits = args[0], args[1:]
        found = _problem(value, inner, at)
        if found is not None:
            return found
        for limit in limits:
            if isinstance(limit, FieldsOf):
                found = _fields_problem(value, limit, at)
            else:
                text = limit.problem(value)
                found = (at, f"{text}, got {_shown(value)}") if text else None
            if found is not None:
                return found
        return None
    if kind is Any:
        return None
    if origin in (typing.Union, types.UnionType):
        return _union_problem(value, args, at)
    if origin is Literal:
        return None if any(value == a and type(value) is type(a) for a in args) else \
            (at, f"must be one of {', '.join(repr(a) for a in args)}, got {_shown(value)}")
    if typing.is_typeddict(kind):
        return _record_problem(value, kind, at)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            return at, f"must be a list, got {_shown(value)}"
        for i, item in enumerate(value):
            found = _problem(item, args[0], f"{at}[{i}]")
            if found is not None:
                return found
        return None
    if origin is dict:
        if not isinstance(value, dict):
            return at, f"must be a mapping, got {_shown(value)}"
        for key, item in value.items():
            found = _problem(key, args[0], f"{at} key") or _problem(item, args[1], _join(at, key))
            if found is not None:
                return found
        return None
    return None if _is_a(value, kind) else (at, f"must be {_described(kind)}, got {_shown(value)}")


def _is_a(value: Any, kind: type) -> bool:
    if kind is type(None):
        return value is None
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:  # a whole number is a number too
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind)


def _record_problem(value: Any, kind: type, at: str) -> tuple[str, str] | None:
    if not isinstance(value, dict):
        return at, f"must be a mapping with {', '.join(sorted(kind.__required_keys__))}, got {_shown(value)}"
    for key in sorted(kind.__required_keys__):
        if key not in value:
            return _join(at, key), "is missing"
    hints = typing.get_type_hints(kind, include_extras=True)
    for key, hint in hints.items():
        if key in value:
            found = _problem(value[key], _required(hint), _join(at, key))
            if found is not None:
                return found
    return None


def _union_problem(value: Any, options: tuple, at: str) -> tuple[str, str] | None:
    records = [o for o in options if typing.is_typeddict(o)]
    if records and len(records) == len(options):  # records told apart by their "kind"
        kinds = {typing.get_args(typing.get_type_hints(r)["kind"])[0]: r for r in records}
        if not isinstance(value, dict):
            return at, f"must be a mapping with a kind ({', '.join(map(repr, kinds))}), got {_shown(value)}"
        if value.get("kind") not in kinds or not isinstance(value.get("kind"), str):
            return _join(at, "kind"), f"must be one of {', '.join(map(repr, kinds))}, got {_shown(value.get('kind'))}"
        return _problem(value, kinds[value["kind"]], at)
    problems = [_problem(value, option, at) for option in options]
    if None in problems:
        return None
    if type(None) in options and value is not None:  # e.g. rng: a list of states or null, and the list is wrong
        return next(p for p, o in zip(problems, options) if o is not type(None))
    return at, f"must be {' or '.join(_described(o) for o in options)}, got {_shown(value)}"


def _fields_problem(values: dict[str, Any], limit: FieldsOf, at: str) -> tuple[str, str] | None:
    hints = limit.hints()
    unknown = sorted(str(k) for k in values if k not in hints)
    if limit.known_only and unknown:
        return at, f"has options this version doesn't know: {', '.join(unknown)}"
    for key, item in values.items():
        if key in hints:
            found = _problem(item, hints[key], _join(at, key))
            if found is not None:
                return found
    return None


def _required(hint: Any) -> Any:
    """`X` for NotRequired[X] (get_type_hints keeps the wrapper when include_extras is set)."""
    return typing.get_args(hint)[0] if typing.get_origin(hint) is NotRequired else hint


def _join(at: str, key: Any) -> str:
    return f"{at}.{key}" if at else str(key)


def _described(kind: Any) -> str:
    names = {int: "an integer", float: "a number", str: "text", bool: "true or false", type(None): "null",
             torch.Tensor: "a tensor"}
    if typing.get_origin(kind) is Annotated:
        return _described(typing.get_args(kind)[0])
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return " or ".join(_described(a) for a in typing.get_args(kind))
    if typing.get_origin(kind) is list:
        return "a list"
    if typing.get_origin(kind) is dict or typing.is_typeddict(kind):
        return "a mapping"
    return names.get(kind, getattr(kind, "__name__", str(kind)))


def _shown(value: Any) -> str:
    """A short description of a value for an error message."""
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    if isinstance(value, (dict, list, tuple)):
        return f"a {type(value).__name__} of {len(value)} items"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
