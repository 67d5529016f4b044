"""GPT-2 checkpoints in Hugging Face transformers' format, in and out.

A `save_pretrained` folder holds config.json (GPT2Config) and model.safetensors (or, from older
versions, pytorch_model.bin). Our parameter names are GPT-2's, so the mapping is one to one except
that GPT-2 stores its linear layers as Conv1D, whose weight is (in, out): the transpose of
nn.Linear's (out, in). GPT-2's tokenizer is tiktoken's "gpt2" encoding.

Exported folders also carry tinygpt_tokenizer.json, so a model trained on, say, characters comes
back with its own tokenizer. A model with a learned byte-level BPE, and a chat model (any base: GPT-2,
characters or a learned BPE), also gets tokenizer.json and tokenizer_config.json, which
transformers.AutoTokenizer loads (a fast tokenizer that gives the same ids). A chat model's
tokenizer_config.json holds the chat template, so transformers' `apply_chat_template` gives the ids
of model.data.chat's `render` and `prompt_ids`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from model.checkpoint import safe_load, stored_dtype
from model.data import tokenizer as tokenizers
from model.config import GPTConfig
from model.errors import TinyGPTError, first_line
from model.files import read_json
from model.nn.gpt import GPT

if TYPE_CHECKING:
    from tokenizers import Tokenizer as HFTokenizer  # Hugging Face's; `tokenizers` here is model.data.tokenizer

CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
"""GPT-2 parameters stored as Conv1D, (in, out), transposed relative to our nn.Linear."""
WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")
"""Where a save_pretrained folder keeps its weights: safetensors, or the pickle of older versions."""
TOKENIZER_FILE = "tinygpt_tokenizer.json"
HF_TOKENIZER_CONFIG = "tokenizer_config.json"
"""transformers' settings for the tokenizer.json beside it (class, named special tokens, chat template)."""
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
) -> tuple[GPT, tokenizers.CharTokenizer | tokenizers.TiktokenTokenizer | tokenizers.ChatTokenizer]:
    """A GPT-2 model and its tokenizer from a save_pretrained folder (model.sources.load_any_model
    also takes a hub name): the tokenizer tinygpt_tokenizer.json describes (a chat model's comes back
    as a ChatTokenizer with its base), else GPT-2's."""
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise TinyGPTError(f"{folder} has no config.json; expected a transformers save_pretrained folder")
    hf_config = read_json(config_path)
    model = gpt_from_hf(hf_config, _read_weights(folder), str(folder))
    config = model.config
    tok_path = folder / TOKENIZER_FILE
    tok = tokenizers.from_meta(read_json(tok_path), str(tok_path)) if tok_path.is_file() else tokenizers.TiktokenTokenizer("gpt2")
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
    GPT2LMHeadModel.from_pretrained loads; with `tok`, also tinygpt_tokenizer.json, and for a learned
    BPE or a chat tokenizer the tokenizer.json and tokenizer_config.json that AutoTokenizer loads."""
    from safetensors.torch import save

    from model.checkpoint import unwrap
    from model.files import atomic_write_bytes, make_folder, write_json

    model = unwrap(model)
    config = model.config
    if tok is not None and tok.vocab_size < config.vocab_size:
        config = dataclasses.replace(config, vocab_size=tok.vocab_size)  # leave out rows that pad the vocabulary
    hf_config = config_to_hf(config)
    hf_tok = hf_tokenizer(tok) if tok is not None else None  # before writing anything: it may refuse
    folder = make_folder(folder)
    if tok is not None:
        hf_config.update({f"{role}_id": token_id(tok, name)
                          for role, name in hf_special_tokens(tok).items() if role in ("bos_token", "eos_token")})
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
    if hf_tok is not None:
        atomic_write_bytes(folder / tokenizers.BPE_FILE, hf_tok.to_str().encode("utf-8"))
        text = json.dumps(hf_tokenizer_config(model.config, tok), indent=2, ensure_ascii=False) + "\n"
        atomic_write_bytes(folder / HF_TOKENIZER_CONFIG, text.encode("utf-8"))
    return folder


# -- transformers' tokenizer -----------------------------------------------------------------------
def hf_tokenizer(tok: tokenizers.CharTokenizer | tokenizers.TiktokenTokenizer | tokenizers.ChatTokenizer) -> HFTokenizer | None:
    """The Hugging Face `tokenizers.Tokenizer` that gives `tok`'s ids, for a learned BPE or a chat
    tokenizer; None for a plain character or tiktoken tokenizer (exported without one, as before:
    transformers users of a GPT-2-token model take GPT-2's own tokenizer).

    A chat tokenizer's is its base's with the four chat tokens added as special tokens; adding them
    numbers them after the base vocabulary, as tinygpt does, and this checks that it did."""
    if isinstance(tok, tokenizers.ChatTokenizer):
        from tokenizers import AddedToken

        hf_tok = _hf_base_tokenizer(tok.base)
        hf_tok.add_special_tokens([AddedToken(name, special=True, normalized=False) for name in tok.specials])
        got = {name: hf_tok.token_to_id(name) for name in tok.specials}
        if got != tok.special_ids or hf_tok.get_vocab_size() != tok.vocab_size:
            raise TinyGPTError(f"the Hugging Face tokenizer numbers the chat tokens {got}, not {tok.special_ids} as "
                               "tinygpt does; can't export this chat tokenizer")
        return hf_tok
    if isinstance(tok, tokenizers.BPETokenizer):
        return _hf_base_tokenizer(tok)
    return None


def _hf_base_tokenizer(base: tokenizers.CharTokenizer | tokenizers.TiktokenTokenizer) -> HFTokenizer:
    """The `tokenizers.Tokenizer` of a chat tokenizer's base: a learned BPE's own tokenizer.json,
    GPT-2's byte-level BPE, or one token per character."""
    from tokenizers import Tokenizer

    if isinstance(base, tokenizers.BPETokenizer):
        return Tokenizer.from_str(base.hf_json)
    if isinstance(base, tokenizers.TiktokenTokenizer):
        if base.name != "gpt2":
            raise TinyGPTError(f"a chat model on tiktoken's '{base.name}' encoding can't be exported with a Hugging "
                               "Face tokenizer (only GPT-2's encoding, characters or a learned BPE)")
        return _gpt2_hf_tokenizer()
    return _char_hf_tokenizer(base)


@functools.cache
def _gpt2_bpe() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """GPT-2's vocabulary and merges in Hugging Face's byte-level spelling, from tiktoken's ranks: a
    token's rank is its GPT-2 id and the order of the merge that made it, and the merge is the pair
    that byte-pair encoding its bytes with only the lower ranks ends in."""
    enc = tokenizers.TiktokenTokenizer("gpt2").enc
    ranks = {enc.decode_single_token_bytes(i): i for i in range(enc.n_vocab) if i != enc.eot_token}
    spell = {b: ch for ch, b in tokenizers.byte_level_alphabet().items()}
    vocab = {"".join(spell[b] for b in token): rank for token, rank in ranks.items()}
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) > 1:
            left, right = _last_merge(ranks, token, rank)
            merges.append(("".join(spell[b] for b in left), "".join(spell[b] for b in right)))
    return vocab, tuple(merges)


def _last_merge(ranks: dict[bytes, int], token: bytes, rank: int) -> tuple[bytes, bytes]:
    """The two tokens whose merge made `token`: byte-pair encode its bytes (always merging the adjacent
    pair whose join has the lowest rank, as tiktoken does) with only the ranks below its own."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        joins = [(ranks.get(parts[i] + parts[i + 1], rank), i) for i in range(len(parts) - 1)]
        best, i = min(joins)
        if best >= rank:
            break
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    if len(parts) != 2:
        raise TinyGPTError(f"tiktoken's GPT-2 token {token!r} is not the merge of two lower-ranked tokens")
    return parts[0], parts[1]


def _gpt2_hf_tokenizer() -> HFTokenizer:
    """GPT-2's tokenizer in Hugging Face `tokenizers`: its byte-level BPE with GPT-2's pre-tokenisation
    (as transformers' own GPT-2 tokenizer.json) and <|endoftext|> as special token 50256."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab, merges = _gpt2_bpe()
    hf_tok = Tokenizer(models.BPE(vocab, list(merges)))
    hf_tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf_tok.decoder = decoders.ByteLevel()
    hf_tok.add_special_tokens([AddedToken(tokenizers.EOT, special=True, normalized=False)])
    return hf_tok


def _char_hf_tokenizer(base: tokenizers.CharTokenizer) -> HFTokenizer:
    """One token per character, numbered as tinygpt numbers them: a BPE with no merges and nothing
    that changes or cuts the text first (no normalizer, no pre-tokenizer), so each character is looked
    up on its own; decoding joins the characters with nothing between them. A character outside the
    vocabulary, which tinygpt refuses, is left out by Hugging Face (it has no unknown token)."""
    from tokenizers import Tokenizer, decoders, models

    hf_tok = Tokenizer(models.BPE({ch: i for i, ch in enumerate(base.chars)}, []))
    hf_tok.decoder = decoders.Fuse()
    return hf_tok


def hf_special_tokens(tok: tokenizers.CharTokenizer | tokenizers.TiktokenTokenizer | tokenizers.ChatTokenizer) -> dict[str, str]:
    """transformers' named special tokens for `tok`: the end-of-text token, where the vocabulary has
    one, as GPT-2 uses it (bos, eos and unk); a chat model's eos is <|end|>, which ends every turn, so
    that transformers' generate stops at the end of a reply."""
    base = tok.base if isinstance(tok, tokenizers.ChatTokenizer) else tok
    names = {}
    if base.eot_token is not None:
        names = {"bos_token": tokenizers.EOT, "eos_token": tokenizers.EOT, "unk_token": tokenizers.EOT}
    if isinstance(tok, tokenizers.ChatTokenizer):
        names["eos_token"] = tokenizers.CHAT_TOKENS[-1]
        names.setdefault("bos_token", tokenizers.CHAT_TOKENS[-1])
    return names


def token_id(tok: tokenizers.CharTokenizer | tokenizers.TiktokenTokenizer | tokenizers.ChatTokenizer, name: str) -> int:
    """The id of special token `name` (the end-of-text token or a chat token) in `tok`."""
    if isinstance(tok, tokenizers.ChatTokenizer) and name in tok.special_ids:
        return tok.special_ids[name]
    if name == tokenizers.EOT and tok.eot_token is not None:
        return tok.eot_token
    raise TinyGPTError(f"the tokenizer has no special token {name}")


def hf_tokenizer_config(config: GPTConfig, tok: tokenizers.TiktokenTokenizer | tokenizers.ChatTokenizer) -> dict[str, Any]:
    """tokenizer_config.json for hf_tokenizer(tok)'s tokenizer.json: transformers' generic fast
    tokenizer with hf_special_tokens(tok) as its named special tokens.

    A learned BPE reads "<|endoftext|>" in a text as plain text, as tinygpt encodes it
    (split_special_tokens). A chat tokenizer can't: apply_chat_template writes the conversation as
    text, "<|user|>" and all, and then encodes it, so the chat tokens must be matched in text, and the
    template (model.data.chat.CHAT_TEMPLATE_JINJA) is stored here. A message whose content spells a
    special token ("<|user|>", "<|endoftext|>") therefore gets that token from transformers by default,
    where tinygpt keeps the text; `apply_chat_template(..., sanitize_control_tokens=True)` (in the
    transformers versions that have it) encodes it as text. Even then a BPE may cut the text right
    beside such a spelling differently from tinygpt, which encodes a content in one piece."""
    from model.data.chat import CHAT_TEMPLATE_JINJA

    chat = isinstance(tok, tokenizers.ChatTokenizer)
    settings = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **hf_special_tokens(tok),
        "model_max_length": config.block_size,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": not chat,
    }
    if chat:
        settings["additional_special_tokens"] = list(tok.specials)
        settings["chat_template"] = CHAT_TEMPLATE_JINJA
    return settings
