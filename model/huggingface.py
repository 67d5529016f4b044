"""GPT-2 checkpoints in Hugging Face transformers' format, in and out.

A `save_pretrained` folder holds config.json (GPT2Config) and model.safetensors (or, from older
versions, pytorch_model.bin). Our parameter names are GPT-2's, so the mapping is one to one except
that GPT-2 stores its linear layers as Conv1D, whose weight is (in, out): the transpose of
nn.Linear's (out, in). GPT-2's tokenizer is tiktoken's "gpt2" encoding.

Exported folders also carry tinygpt_tokenizer.json, so a model trained on, say, characters comes
back with its own tokenizer. A model with a learned byte-level BPE also gets tokenizer.json and
tokenizer_config.json, which transformers.AutoTokenizer loads (a PreTrainedTokenizerFast that gives
the same ids).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from model.checkpoint import safe_load, stored_dtype
from model.data import tokenizer as tokenizers
from model.config import GPTConfig
from model.errors import TinyGPTError, first_line
from model.files import read_json
from model.nn.gpt import GPT

CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
"""GPT-2 parameters stored as Conv1D, (in, out), transposed relative to our nn.Linear."""
WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")
"""Where a save_pretrained folder keeps its weights: safetensors, or the pickle of older versions."""
TOKENIZER_FILE = "tinygpt_tokenizer.json"
GPT2_ARCHITECTURE = {"pos_embedding": "learned", "norm": "layernorm", "activation": "gelu", "qk_norm": False}
"""GPTConfig's architecture options as GPT-2 has them; a model with any other can't be exported."""
HUB_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
"""OpenAI's GPT-2 sizes on the Hugging Face hub (any other hub id of a GPT-2 model works too)."""


def config_from_hf(hf: dict[str, Any]) -> GPTConfig:
    """Our GPTConfig for a transformers GPT2Config dict; refuses options our model doesn't have."""
    if hf.get("model_type", "gpt2") != "gpt2":
        raise TinyGPTError(f"only GPT-2 checkpoints can be loaded, this one is model_type '{hf.get('model_type')}'")
    n_embd = hf.get("n_embd", 768)
    n_inner = hf.get("n_inner") or 4 * n_embd
    unsupported = {
        "activation_function": (hf.get("activation_function", "gelu_new"), ("gelu_new", "gelu_pytorch_tanh")),
        "layer_norm_epsilon": (hf.get("layer_norm_epsilon", 1e-5), (1e-5,)),
        "scale_attn_weights": (hf.get("scale_attn_weights", True), (True,)),
        "scale_attn_by_inverse_layer_idx": (hf.get("scale_attn_by_inverse_layer_idx", False), (False,)),
        "reorder_and_upcast_attn": (hf.get("reorder_and_upcast_attn", False), (False,)),
    }
    for key, (value, allowed) in unsupported.items():
        if value not in allowed:
            raise TinyGPTError(f"GPT-2 option {key}={value!r} is not supported (expected {allowed[0]!r})")
    if n_inner % n_embd != 0:
        raise TinyGPTError(f"GPT-2 n_inner={n_inner} is not a multiple of n_embd={n_embd}")
    return GPTConfig(
        n_layer=hf.get("n_layer", 12),
        n_head=hf.get("n_head", 12),
        n_embd=n_embd,
        block_size=hf.get("n_positions", 1024),
        vocab_size=hf.get("vocab_size", 50257),
        dropout=0.0,
        bias=True,
        tie_weights=hf.get("tie_word_embeddings", True),
        mlp_ratio=n_inner // n_embd,
    )


def config_to_hf(config: GPTConfig) -> dict[str, Any]:
    """The config.json transformers expects for a GPT2LMHeadModel of our shape."""
    if not config.bias:
        raise TinyGPTError("GPT-2 has biases in every linear layer and LayerNorm; a bias=False model can't be exported")
    for option, gpt2 in GPT2_ARCHITECTURE.items():
        if getattr(config, option) != gpt2:
            raise TinyGPTError(f"GPT-2 can't represent {option}={getattr(config, option)!r} (it has {option}={gpt2!r}): "
                               "this model can't be exported to transformers' GPT-2")
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": config.mlp_ratio * config.n_embd,
        "activation_function": "gelu_new",
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "tie_word_embeddings": config.tie_weights,
        "bos_token_id": 50256,
        "eos_token_id": 50256,
        "torch_dtype": "float32",
    }


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    safetensors_path, bin_path = (folder / name for name in WEIGHTS_FILES)
    if safetensors_path.is_file():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(safetensors_path)
        except (SafetensorError, OSError, ValueError) as e:
            raise TinyGPTError(f"{safetensors_path} is not a readable safetensors file: {first_line(e, 200)}") from None
    if bin_path.is_file():
        return safe_load(bin_path)
    raise TinyGPTError(f"{folder} has neither {' nor '.join(WEIGHTS_FILES)} (sharded checkpoints aren't supported)")


def state_dict_from_hf(weights: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """transformers' GPT-2 tensors -> our state dict (keys with or without the 'transformer.' prefix)."""
    out = {}
    for key, value in weights.items():
        if key.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # causal-mask buffers stored by old transformers versions, not parameters
        name = key if key.startswith(("transformer.", "lm_head.")) else f"transformer.{key}"
        out[name] = value.t().contiguous() if name.endswith(CONV1D_SUFFIXES) else value
    if config.tie_weights:
        out["lm_head.weight"] = out["transformer.wte.weight"]
    return out


def gpt_from_hf(hf_config: dict[str, Any], weights: dict[str, torch.Tensor], source: str = "checkpoint") -> GPT:
    """Our GPT holding a transformers GPT-2's weights, from its config dict and state dict (e.g.
    `gpt_from_hf(m.config.to_dict(), m.state_dict())` for a GPT2LMHeadModel m in memory), in the
    precision the weights are stored in."""
    config = config_from_hf(hf_config)
    model = GPT(config)
    missing, unexpected = model.load_state_dict(state_dict_from_hf(weights, config), strict=False)
    if missing or unexpected:
        problem = f"missing {', '.join(missing[:3])}" if missing else f"unexpected {', '.join(unexpected[:3])}"
        raise TinyGPTError(f"{source}: weights don't match config.json ({problem})")
    return model.to(stored_dtype(weights))


def load_pretrained(
    folder: str | Path, device: str | torch.device = "cpu"
) -> tuple[GPT, tokenizers.CharTokenizer | tokenizers.TiktokenTokenizer]:
    """A GPT-2 model and its tokenizer from a save_pretrained folder (model.sources.load_any_model
    also takes a hub name)."""
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise TinyGPTError(f"{folder} has no config.json; expected a transformers save_pretrained folder")
    hf_config = read_json(config_path)
    model = gpt_from_hf(hf_config, _read_weights(folder), str(folder))
    config = model.config
    tok_path = folder / TOKENIZER_FILE
    tok = tokenizers.from_meta(read_json(tok_path)) if tok_path.is_file() else tokenizers.TiktokenTokenizer("gpt2")
    if tok.vocab_size > config.vocab_size:
        raise TinyGPTError(f"{folder}: tokenizer has {tok.vocab_size} tokens but the model only {config.vocab_size}")
    return model.to(device), tok


def download(name: str) -> Path:
    """The local snapshot folder of hub model `name` (config.json and weights only), downloaded
    unless huggingface_hub's cache holds it."""
    try:
        from huggingface_hub import snapshot_download  # installed with datasets and transformers
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:
        raise TinyGPTError(f"'{name}' is no file or folder here, and huggingface_hub is not installed to download it") from None

    try:
        return Path(snapshot_download(name, allow_patterns=["config.json", WEIGHTS_FILES[0]]))
    except LocalEntryNotFoundError:  # no network, or HF_HUB_OFFLINE, and not in the cache
        raise TinyGPTError(
            f"'{name}' is no file or folder here, and the Hugging Face hub can't be reached to download it "
            f"(offline?); point at a local folder instead: a GPT-2 folder written by save_pretrained (e.g. "
            f"GPT2LMHeadModel.from_pretrained('{name}').save_pretrained('{Path(name).name}-local') on a machine "
            f"online, then pass {Path(name).name}-local), a training run folder or a checkpoint file"
        ) from None
    except Exception as e:  # an unknown name, a private model, ...: one line, not a traceback
        raise TinyGPTError(
            f"'{name}' is no file or folder here, nor a model the Hugging Face hub could give "
            f"({type(e).__name__}); GPT-2's names there: {', '.join(HUB_NAMES)}"
        ) from None


def save_pretrained(model: GPT, folder: str | Path, tok=None) -> Path:
    """Write `model` as a transformers GPT-2 folder (config.json, model.safetensors) that
    GPT2LMHeadModel.from_pretrained loads; with `tok`, also tinygpt_tokenizer.json."""
    from safetensors.torch import save

    from model.checkpoint import unwrap
    from model.files import atomic_write_bytes, make_folder, write_json

    model = unwrap(model)
    config = model.config
    if tok is not None and tok.vocab_size < config.vocab_size:
        config = dataclasses.replace(config, vocab_size=tok.vocab_size)  # leave out rows that pad the vocabulary
    hf_config = config_to_hf(config)
    folder = make_folder(folder)
    if tok is not None and tok.eot_token is not None:
        hf_config.update(bos_token_id=tok.eot_token, eos_token_id=tok.eot_token)
    tensors = {}
    for name, value in model.state_dict().items():
        if name == "lm_head.weight" and model.config.tie_weights:
            continue  # the same tensor as transformer.wte.weight; transformers re-ties it
        value = value.detach().float().cpu()
        if name in ("transformer.wte.weight", "lm_head.weight"):
            value = value[: config.vocab_size]
        tensors[name] = (value.t() if name.endswith(CONV1D_SUFFIXES) else value).contiguous()
    atomic_write_bytes(folder / "model.safetensors", save(tensors, metadata={"format": "pt"}))
    write_json(folder / "config.json", hf_config)
    if tok is not None:
        atomic_write_bytes(folder / TOKENIZER_FILE, json.dumps(tok.to_meta()).encode())
    if isinstance(tok, tokenizers.BPETokenizer):
        atomic_write_bytes(folder / tokenizers.BPE_FILE, tok.hf_json.encode("utf-8"))
        atomic_write_bytes(folder / "tokenizer_config.json", (json.dumps(hf_tokenizer_config(model.config), indent=2) + "\n").encode())
    return folder


def hf_tokenizer_config(config: GPTConfig) -> dict[str, Any]:
    """tokenizer_config.json for a learned BPE's tokenizer.json: transformers' generic fast tokenizer,
    with the end-of-text token as GPT-2 uses it, and "<|endoftext|>" in a text read as plain text (as
    tinygpt encodes it) rather than as the special token."""
    eot = tokenizers.EOT
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": eot,
        "eos_token": eot,
        "unk_token": eot,
        "model_max_length": config.block_size,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": True,
    }
