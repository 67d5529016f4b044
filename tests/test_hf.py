"""GPT-2 checkpoints in transformers' format: load theirs, export ours, finetune and sample from them.

Every model here is a small random GPT2LMHeadModel built locally; nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from model import huggingface as hf
from model.cli import hf_main
from model.cli import sample_main, train_main
from model.config import GPTConfig
from model.errors import TinyGPTError
from model.nn.gpt import GPT
from model.data.tokenizer import CharTokenizer, TiktokenTokenizer

transformers = pytest.importorskip("transformers")
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

GPT2_VOCAB = 50257



def small_gpt2(**overrides) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    values = dict(vocab_size=GPT2_VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=4)
    values.update(overrides)
    return GPT2LMHeadModel(GPT2Config(**values)).eval()


def their_logits(model: GPT2LMHeadModel, idx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(idx).logits


def our_logits(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(idx)[0]


@pytest.fixture
def hf_dir(tmp_path):
    ref = small_gpt2()
    ref.save_pretrained(tmp_path / "gpt2-small-random")
    return tmp_path / "gpt2-small-random", ref


@pytest.mark.needs_gpt2
def test_load_save_pretrained_folder_matches_transformers(hf_dir):
    folder, ref = hf_dir
    model, tok = hf.load_pretrained(folder)
    idx = torch.randint(0, GPT2_VOCAB, (2, 24))
    torch.testing.assert_close(our_logits(model, idx), their_logits(ref, idx), rtol=0, atol=1e-4)
    assert isinstance(tok, TiktokenTokenizer) and tok.name == "gpt2"
    assert model.config.block_size == 32 and model.lm_head.weight is model.transformer.wte.weight


@pytest.mark.needs_gpt2
def test_load_pytorch_model_bin(tmp_path):
    ref = small_gpt2(n_inner=64)  # MLP 2x wide instead of 4x
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "config.json").write_text(ref.config.to_json_string())
    torch.save(ref.transformer.state_dict(), folder / "pytorch_model.bin")  # old layout: no 'transformer.' prefix
    model, _ = hf.load_pretrained(folder)
    assert model.config.mlp_ratio == 2
    idx = torch.randint(0, GPT2_VOCAB, (1, 32))
    torch.testing.assert_close(our_logits(model, idx), their_logits(ref, idx), rtol=0, atol=1e-4)


@pytest.mark.needs_gpt2
@pytest.mark.parametrize("tie_weights", [True, False])
def test_export_loads_in_transformers_with_matching_logits(tmp_path, tie_weights):
    torch.manual_seed(1)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=GPT2_VOCAB, tie_weights=tie_weights))
    folder = hf.save_pretrained(model, tmp_path / "export", TiktokenTokenizer("gpt2"))
    theirs = GPT2LMHeadModel.from_pretrained(folder).eval()
    idx = torch.randint(0, GPT2_VOCAB, (2, 16))
    torch.testing.assert_close(their_logits(theirs, idx), our_logits(model, idx), rtol=0, atol=1e-4)
    back, _ = hf.load_pretrained(folder)
    torch.testing.assert_close(our_logits(back, idx), our_logits(model, idx), rtol=0, atol=0)


def test_export_keeps_a_character_tokenizer(tmp_path):
    chars = "\n abcdefghij"
    model = GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=8, vocab_size=len(chars)))
    folder = hf.save_pretrained(model, tmp_path / "char", CharTokenizer(chars))
    _, tok = hf.load_pretrained(folder)
    assert tok.to_meta() == CharTokenizer(chars).to_meta()


def test_refuses_pickled_objects_and_unsupported_options(tmp_path, hf_dir):
    folder, ref = hf_dir
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((folder / "config.json").read_text())
    torch.save({"wte.weight": torch.zeros(1), "payload": GPTConfig()}, bad / "pytorch_model.bin")
    with pytest.raises(TinyGPTError, match="refusing to load"):
        hf.load_pretrained(bad)
    config = json.loads((folder / "config.json").read_text())
    config["activation_function"] = "relu"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(TinyGPTError, match="activation_function"):
        hf.load_pretrained(folder)


def assert_sample_py_prints_transformers_greedy(capsys, folder: Path, ref: GPT2LMHeadModel, prompt: str,
                                                new_tokens: int) -> None:
    """sample.py, with default flags but greedy, continues `prompt` as `ref.generate(do_sample=False)` does."""
    tok = TiktokenTokenizer("gpt2")
    idx = torch.tensor([tok.encode(prompt)])
    with torch.no_grad():
        out = ref.generate(idx, max_new_tokens=new_tokens, do_sample=False, pad_token_id=0,
                           attention_mask=torch.ones_like(idx))
    expected = tok.enc.decode_bytes(out[0, idx.size(1):].tolist()).decode("utf-8", errors="replace")
    args = [f"--init_from={folder}", f"--start={prompt}", "--num_samples=1", f"--max_new_tokens={new_tokens}",
            "--temperature=0"]
    assert sample_main(args) == 0
    assert capsys.readouterr().out == prompt + expected + "\n---------------\n"


@pytest.mark.needs_gpt2
def test_sample_cli_from_hf_folder_equals_transformers_greedy(hf_dir, capsys):
    folder, ref = hf_dir
    assert_sample_py_prints_transformers_greedy(capsys, folder, ref, "Hello there", 12)


@pytest.mark.needs_gpt2
def test_default_greedy_text_is_transformers_on_a_cpu_with_native_bf16(tmp_path, capsys, monkeypatch):
    """With default flags, sample.py decodes in the checkpoint's float32, also where training's dtype=auto
    would pick bfloat16: its greedy text is transformers' generate()."""
    import model.device

    # wider weights than GPT-2's init: a text of varied tokens, whose argmax bfloat16 rounding changes
    ref = small_gpt2(n_embd=64, n_positions=64, initializer_range=0.3)
    folder = tmp_path / "gpt2-wide-random"
    ref.save_pretrained(folder)
    monkeypatch.setattr(model.device, "cpu_has_native_bf16", lambda cpuinfo=None: True)
    assert model.device.resolve_dtype("auto", "cpu") == torch.bfloat16  # training's auto is unchanged
    assert_sample_py_prints_transformers_greedy(capsys, folder, ref, "The meaning of life is", 24)


@pytest.fixture
def gpt2_data_dir(tmp_path, corpus):
    from model.data.dataset import prepare

    data_dir = tmp_path / "data"
    prepare("tiny", data_dir, input_path=str(corpus), tokenizer="gpt2")
    return data_dir


@pytest.mark.needs_gpt2
def test_train_init_from_hf_folder_starts_from_its_weights(hf_dir, gpt2_data_dir, tmp_path):
    from model.checkpoint import load_model
    from helpers import tiny_overrides

    folder, ref = hf_dir
    out = tmp_path / "out"
    values = tiny_overrides(gpt2_data_dir, out, init_from=folder, max_iters=0, eval_iters=1, batch_size=2)
    assert train_main([f"--{k}={v}" for k, v in values.items()] + ["--quiet"]) == 0
    model, tok, _ = load_model(out / "ckpt.pt")
    assert model.config.n_embd == 32 and model.config.block_size == 32 and tok.name == "gpt2"
    idx = torch.randint(0, GPT2_VOCAB, (1, 20))
    torch.testing.assert_close(our_logits(model, idx), their_logits(ref, idx), rtol=0, atol=1e-4)
    values = tiny_overrides(gpt2_data_dir, tmp_path / "out2", init_from=folder, max_iters=2, eval_iters=1, batch_size=2)
    assert train_main([f"--{k}={v}" for k, v in values.items()] + ["--quiet"]) == 0  # and it trains


@pytest.mark.needs_gpt2
def test_train_init_from_hf_refuses_other_tokenizer(hf_dir, char_data_dir, tmp_path, capsys):
    from helpers import tiny_overrides

    folder, _ = hf_dir
    values = tiny_overrides(char_data_dir, tmp_path / "out", init_from=folder)
    assert train_main([f"--{k}={v}" for k, v in values.items()] + ["--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "tokenizer" in err and err.count("\n") == 1


@pytest.mark.needs_gpt2
def test_export_cli_writes_a_folder_transformers_loads(tmp_path, capsys):
    from model.checkpoint import model_state, save_checkpoint

    torch.manual_seed(2)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=GPT2_VOCAB))
    save_checkpoint(tmp_path / "ckpt.pt", model_state(model, model.config, TiktokenTokenizer("gpt2").to_meta()))
    assert hf_main([str(tmp_path / "ckpt.pt"), str(tmp_path / "exported")]) == 0
    theirs = GPT2LMHeadModel.from_pretrained(tmp_path / "exported").eval()
    idx = torch.randint(0, GPT2_VOCAB, (1, 8))
    torch.testing.assert_close(their_logits(theirs, idx), our_logits(model, idx), rtol=0, atol=1e-4)
    capsys.readouterr()
    assert hf_main([str(tmp_path / "missing.pt"), str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "missing.pt" in err and err.count("\n") == 1
