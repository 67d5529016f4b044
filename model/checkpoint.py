"""Checkpoints: written atomically, read without ever unpickling arbitrary objects.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts saved with torch.save and
read back with torch.load(weights_only=True), which refuses anything else (such as a pickled object
whose loading would run code). The resolved config is also written as config.json beside it.
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from model import config as configs
from model.data import schema
from model.data import tokenizer as tokenizers
from model.errors import TinyGPTError, first_line
from model.files import atomic_write, write_json
from model.nn.gpt import GPT

LATEST = "ckpt.pt"
BEST = "best.pt"
CONFIG_FILE = "config.json"
"""The run's resolved config, written beside the checkpoints as JSON (model.tools.runs reads it)."""
FORMAT_VERSION = 1
"""Stored in every checkpoint as "format_version", so that a later layout can be told from this one."""


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside torch.compile / DistributedDataParallel wrappers."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """torch.save `state` to `path` atomically: a crash at any moment leaves either the previous
    checkpoint or the new one, never a torn file."""
    def write(f) -> None:
        try:
            torch.save({"format_version": FORMAT_VERSION, **state}, f)
        except RuntimeError as e:  # torch's zip writer reports a failed write (a full disk) as a RuntimeError
            if "inline_container" not in str(e) and "write" not in str(e):
                raise
            if isinstance(e.__context__, OSError):  # the file's own error, e.g. "No space left on device"
                raise e.__context__ from None
            raise OSError(f"the write failed, is the disk full? ({first_line(e, 200)})") from None

    atomic_write(path, write, what="checkpoint")


def model_state(model: torch.nn.Module, model_config: configs.GPTConfig, tokenizer_meta: dict) -> dict[str, Any]:
    """The part of a checkpoint needed to sample: weights, model config, tokenizer."""
    return {
        "model": unwrap(model).state_dict(),
        "model_config": configs.to_dict(model_config),
        "tokenizer": tokenizer_meta,
    }


def safe_load(path: Path, device: str | torch.device = "cpu") -> Any:
    """torch.load(weights_only=True), telling a file that holds code-running objects (refused) apart
    from one that is truncated or not a checkpoint at all, in one line without PyTorch's advice."""
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": beside the point here
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        named = re.search(r"GLOBAL ([\w.]+)", str(e))  # what an unsafe load would have imported and called
        refers_to = [named.group(1)] if named else pickled_globals(path)
        if refers_to:
            raise TinyGPTError(
                f"refusing to load {path}: it is a pickle of more than tensors and plain data (it calls "
                f"{', '.join(refers_to[:3])}), and loading it could run code"
            ) from None
        if refers_to is None:
            reason = "it is neither a PyTorch zip file nor a pickle"
        else:
            reason = "a pickle in a form torch.load(weights_only=True) doesn't read"
    except Exception as e:  # a damaged file fails in many ways inside the unpickler (EOFError, IndexError, ...)
        reason = str(e).strip().split(". ")[0].splitlines()[0] if str(e).strip() else type(e).__name__
    raise TinyGPTError(f"{path} is not a readable checkpoint (truncated or corrupted?): {reason}")


def pickled_globals(path: Path) -> list[str] | None:
    """The names a pickle (a plain file, or the data.pkl of torch.save's zip) would import when
    loaded, found by reading its opcodes without running any; None when the file is no whole pickle."""
    import pickletools

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                data = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
        else:
            data = path.read_bytes()
        names, strings = [], []
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name == "GLOBAL":
                names.append(arg.replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(".".join(strings[-2:]))
            elif isinstance(arg, str):
                strings.append(arg)
    except Exception:  # any way of not being a pickle: truncated, garbage, no data.pkl
        return None
    return [n for n in dict.fromkeys(names) if not n.startswith(("torch.", "collections."))]


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = find_checkpoint(path)
    if not path.is_file():
        raise TinyGPTError(f"checkpoint not found: {path}")
    ckpt = safe_load(path, device)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_config" not in ckpt:
        raise TinyGPTError(f"{path} is not a tinygpt checkpoint (no model weights or config inside)")
    schema.check(ckpt, schema.Checkpoint, str(path))
    return ckpt


def find_checkpoint(out_dir: str | Path, prefer: str = BEST) -> Path:
    """The checkpoint to sample from in out_dir: best.pt if present, else ckpt.pt."""
    out_dir = Path(out_dir)
    for name in (prefer, LATEST, BEST):
        if (out_dir / name).is_file():
            return out_dir / name
    raise TinyGPTError(f"no checkpoint in {out_dir} (looked for {BEST} and {LATEST}); train a model first")


def model_config_from(ckpt: dict[str, Any]) -> configs.GPTConfig:
    """The GPTConfig of a checkpoint that load_checkpoint has checked (its values have the right types)."""
    values = ckpt["model_config"]
    known = {f.name for f in configs.config_fields(configs.GPTConfig)}
    unknown = set(values) - known
    if unknown:
        raise TinyGPTError(f"checkpoint has model options this version doesn't know: {', '.join(sorted(unknown))}")
    return configs.GPTConfig(**values)


def check_weights_fit(weights: dict[str, torch.Tensor], config: configs.GPTConfig, where: str | Path) -> None:
    """Refuse, before a model is built, weights whose names or shapes are not those of the GPT that
    `config` describes (a crafted or mismatched checkpoint would otherwise make GPT(config) allocate
    whatever the config says, e.g. a position table of 2**40 rows)."""
    layers = {key.split(".")[2] for key in weights if key.startswith("transformer.h.") and key.count(".") > 2}
    if len(layers) != config.n_layer:
        raise TinyGPTError(f"{where}: the weights hold {len(layers)} layer(s) but model_config says n_layer={config.n_layer}")
    try:
        with torch.device("meta"):  # shapes only: nothing is allocated
            expected = GPT(config).state_dict()
    except (RuntimeError, ValueError, OverflowError) as e:
        raise TinyGPTError(f"{where}: no model can be built from its model_config ({first_line(e, 200)})") from None
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    wrong = [f"{k} is {tuple(weights[k].shape)}, model_config makes it {tuple(v.shape)}"
             for k, v in expected.items() if k in weights and weights[k].shape != v.shape]
    if missing or unexpected or wrong:
        problem = (f"missing {', '.join(missing[:3])}" if missing else
                   f"unexpected {', '.join(unexpected[:3])}" if unexpected else wrong[0])
        raise TinyGPTError(f"{where}: checkpoint weights don't match its config ({problem})")


def check_finite_weights(weights: dict[str, torch.Tensor], where: str | Path) -> None:
    """Refuse weights holding NaN or infinity: every prediction of such a model is NaN."""
    for name, tensor in weights.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise TinyGPTError(f"{where} has non-finite weights (nan or inf in {name}); it can't predict anything: "
                               "use an earlier checkpoint of the run")


def stored_dtype(weights: dict[str, torch.Tensor]) -> torch.dtype:
    """The precision a checkpoint stores its weights in: that of its floating-point tensors (float32
    for tinygpt's own checkpoints, which keep float32 weights whatever the training's autocast was)."""
    return next((t.dtype for t in weights.values() if t.is_floating_point()), torch.float32)


def load_model(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[GPT, tokenizers.CharTokenizer | tokenizers.TiktokenTokenizer, dict[str, Any]]:
    """Build the GPT stored in a checkpoint file (or in out_dir's best/latest), in the precision the
    checkpoint stores; returns model, tokenizer and the raw checkpoint dict. The checkpoint is read
    into CPU memory and only the model's weights go to `device` (not the optimizer state, twice their size)."""
    path = find_checkpoint(path) if Path(path).is_dir() else Path(path)
    ckpt = load_checkpoint(path, "cpu")
    config = model_config_from(ckpt)
    config.check_buildable()
    check_weights_fit(ckpt["model"], config, path)
    check_finite_weights(ckpt["model"], path)
    tok = tokenizers.from_meta(ckpt["tokenizer"], str(path))
    if tok.vocab_size > config.vocab_size:
        raise TinyGPTError(f"{path}: its tokenizer has {tok.vocab_size} tokens but the model only {config.vocab_size}")
    model = GPT(config)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise TinyGPTError(f"checkpoint weights don't match its config: {first_line(e)}") from None
    model.to(device=device, dtype=stored_dtype(ckpt["model"]))
    return model, tok, ckpt


def write_config_json(out_dir: str | Path, values: dict[str, Any]) -> None:
    write_json(Path(out_dir) / CONFIG_FILE, values)
