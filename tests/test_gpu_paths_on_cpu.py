"""The GPU and multi-GPU code paths, proven on a CPU: torch.cuda mocked, the meta device, float16
autocast with a GradScaler, torch.compile's eager backend, and 2 gloo ranks under torchrun."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

from helpers import ROOT, tiny_gpt, tiny_overrides
from model import checkpoint, device as devices
from model.config import GPTConfig, TrainConfig, load_config
from model.data.dataset import BatchLoader, TokenDataset, prepare
from model.errors import TinyGPTError
from model.fused import apply_kernels
from model.kernels import ops
from model.nn import attention
from model.nn.gpt import GPT
from model.training import memory, rng
from model.training.mfu import MFUMeter
from model.training.signals import GracefulStop
from model.training.trainer import Trainer, loss_scaler, padded_vocab_size, train

ARCH_OPTIONS = [{}, {"pos_embedding": "rope"}, {"norm": "rmsnorm"}, {"activation": "relu2"}, {"qk_norm": True},
                {"dropout": 0.1}, {"bias": False, "tie_weights": False}]


# -- device and dtype ------------------------------------------------------------------------------
def fake_gpu(native_bf16: bool, emulated_bf16: bool = True):
    def is_bf16_supported(including_emulation: bool = True) -> bool:
        return native_bf16 or (including_emulation and emulated_bf16)

    return mock.patch.multiple(torch.cuda, is_available=mock.Mock(return_value=True),
                               is_bf16_supported=mock.Mock(side_effect=is_bf16_supported))


@pytest.mark.parametrize("native, emulated, expected", [
    (True, True, torch.bfloat16),  # A100, H100, L4, RTX 30xx/40xx
    (False, True, torch.float16),  # V100, T4: bf16 only emulated
    (False, False, torch.float16),  # older still
])
def test_auto_dtype_on_a_gpu(native, emulated, expected):
    with fake_gpu(native, emulated):
        assert devices.resolve_device("auto") == "cuda"
        assert devices.resolve_dtype("auto", "cuda") == expected
        assert devices.resolve_dtype("auto", "cuda:1") == expected
        assert devices.resolve_dtype("float32", "cuda") == torch.float32
        line = devices.describe_precision("auto", "cuda", expected)
    assert ("native" in line) == native and ("GradScaler" in line) == (expected == torch.float16)


@pytest.mark.parametrize("native", [True, False])
def test_a_gpu_gets_a_loss_scaler_only_when_it_trains_in_float16(native):
    with fake_gpu(native, emulated_bf16=True):
        dtype = devices.resolve_dtype("auto", "cuda:0")
        scaler = loss_scaler("cuda:0", dtype)
        assert scaler.is_enabled() == (dtype == torch.float16) == (not native)
        assert not loss_scaler("cuda:0", torch.float32).is_enabled()
    if not native:
        assert scaler.get_scale() == 2.0**16


@pytest.mark.parametrize("flags, expected", [
    ("fpu sse avx2 avx512f avx512_bf16", torch.bfloat16),
    ("fpu sse avx2 amx_tile amx_bf16", torch.bfloat16),
    ("fpu sse avx2 avx512f", torch.float32),
])
def test_auto_dtype_on_a_cpu_follows_its_native_bf16_instructions(tmp_path, flags, expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: x\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    with mock.patch.object(devices, "CPUINFO", cpuinfo), mock.patch.object(torch.cuda, "is_available", return_value=False):
        assert devices.resolve_dtype("auto", "cpu") == expected
        assert devices.resolve_dtype("auto", "mps") == torch.float32
    assert devices.cpu_flags(tmp_path / "missing") == set()


def test_gpu_peak_flops_table():
    a100 = devices.gpu_peak_flops("NVIDIA A100-SXM4-80GB", torch.bfloat16)
    assert a100 == 312e12 and devices.gpu_peak_flops("NVIDIA A100 80GB PCIe", torch.float16) == 312e12
    assert devices.gpu_peak_flops("NVIDIA H100 80GB HBM3", torch.bfloat16) > devices.gpu_peak_flops("NVIDIA H100 PCIe", torch.bfloat16)
    assert devices.gpu_peak_flops("NVIDIA L4", torch.bfloat16) == 121e12
    assert devices.gpu_peak_flops("NVIDIA L40S", torch.bfloat16) == 362e12  # not taken for an L4
    assert devices.gpu_peak_flops("NVIDIA A10", torch.bfloat16) == 125e12  # not taken for an A100
    assert devices.gpu_peak_flops("NVIDIA GeForce RTX 4090", torch.float32) == 82.6e12
    assert devices.gpu_peak_flops("Tesla V100-SXM2-16GB", torch.bfloat16) is None  # no bf16 at all
    assert devices.gpu_peak_flops("Some Future GPU", torch.bfloat16) is None


def test_mfu_takes_a_known_gpus_peak_from_the_table_and_the_flag_overrides_it():
    config = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=64)
    with mock.patch.object(torch.cuda, "get_device_name", return_value="NVIDIA H100 80GB HBM3"), \
            mock.patch("model.training.mfu.measure_peak_flops", side_effect=AssertionError("measured")):
        assert MFUMeter(config, 0.0, "cuda", torch.bfloat16).peak_flops == 989e12
        assert MFUMeter(config, 5e12, "cuda", torch.bfloat16).peak_flops == 5e12
    with mock.patch.object(torch.cuda, "get_device_name", return_value="Unknown GPU"), \
            mock.patch("model.training.mfu.measure_peak_flops", return_value=7e12):
        assert MFUMeter(config, 0.0, "cuda:0", torch.bfloat16).peak_flops == 7e12


def test_compile_defaults_to_cuda_only():
    assert TrainConfig().compile is None
    assert load_config(None, ["--compile=True"])[1].compile is True


# -- the model on the GPU path -------------------------------------------------------------------
def test_training_step_on_the_meta_device_takes_the_fused_attention_path():
    """Off the CPU, attention is PyTorch's fused causal kernel and none of model/kernels' CPU code runs,
    also with the kernels applied."""
    with torch.device("meta"):
        model = apply_kernels(GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=64, dropout=0.1)))
    model.to(torch.bfloat16)
    x = torch.randint(0, 64, (2, 16), device="meta")
    fused = []
    real_sdpa = F.scaled_dot_product_attention

    def sdpa(*args, **kwargs):
        fused.append((kwargs.get("is_causal"), kwargs.get("attn_mask")))
        return real_sdpa(*args, **kwargs)

    with mock.patch.object(attention.F, "scaled_dot_product_attention", sdpa), \
            mock.patch.object(ops, "attention_probs", side_effect=AssertionError("explicit CPU path")):
        _, loss = model(x, x)
        loss.backward()
    assert fused == [(True, None), (True, None)]
    assert model.lm_head.weight.grad.device.type == "meta"


def test_no_mask_is_built_when_the_fused_causal_path_runs():
    with torch.device("meta"):
        model = apply_kernels(GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=64)))
    with mock.patch.object(attention, "build_mask", side_effect=AssertionError("mask built")):
        model(torch.randint(0, 64, (2, 16), device="meta"))


@pytest.mark.parametrize("kernels", [False, True], ids=["plain", "kernels"])
@pytest.mark.parametrize("options", ARCH_OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "gpt2")
def test_compiles_whole_for_every_architecture_option(options, kernels):
    torch._dynamo.reset()
    model = tiny_gpt(vocab_size=64, **options).train()
    if kernels:
        apply_kernels(model)
    x = torch.randint(0, 64, (2, 16))
    compiled = torch.compile(model, fullgraph=True, backend="eager")  # fullgraph: any graph break fails
    _, loss = compiled(x, x)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters())
    if not options.get("dropout"):
        assert loss.item() == pytest.approx(model(x, x)[1].item(), rel=1e-5)


# -- the training step: no host sync, NaN guard, float16 ----------------------------------------
HOST_SYNCS = ("item", "__float__", "__int__", "__bool__", "tolist", "cpu")
"""Tensor methods that, on a GPU, wait for every queued kernel to finish."""


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_a_training_step_reads_nothing_back_from_the_device(char_data_dir, tmp_path, dtype):
    # kernels off: the CPU kernels read their dropout seed from a CPU tensor; on a GPU they never run
    trainer = Trainer(*load_config(None, tiny_overrides(char_data_dir, tmp_path / "out", dtype=dtype, kernels=False,
                                                        gradient_accumulation_steps=2)), quiet=True)
    trainer.train_step(1e-3)
    calls = []

    def spy(name):
        original = getattr(torch.Tensor, name)

        def method(self, *args, **kwargs):
            calls.append(name)
            return original(self, *args, **kwargs)
        return method

    with mock.patch.multiple(torch.Tensor, **{name: spy(name) for name in HOST_SYNCS}):
        for _ in range(3):
            loss, norm = trainer.train_step(1e-3)
    assert calls == []
    assert isinstance(loss, torch.Tensor) and math.isfinite(float(loss)) and float(norm) > 0


def nan_loss_at(trainer: Trainer, bad_iter: int) -> None:
    def hook(module, inputs, output):
        if module.training and trainer.iter_num == bad_iter:
            return output * float("nan")

    trainer.model.lm_head.register_forward_hook(hook)


def test_float16_with_grad_scaler_on_cpu_autocast_skips_a_nan_step(char_data_dir, tmp_path, capsys):
    out = tmp_path / "out"
    values = tiny_overrides(char_data_dir, out, dtype="float16", on_nan="skip", max_iters=8, eval_interval=4,
                            log_interval=4)
    trainer = Trainer(*load_config(None, values), quiet=False)
    assert trainer.dtype == torch.float16 and trainer.scaler.is_enabled()
    assert trainer.scaler.get_scale() == 2.0**16
    nan_loss_at(trainer, 5)
    before = {}

    def remember(module, inputs, output):
        if trainer.iter_num == 6 and module.training and not before:
            before.update({k: v.clone() for k, v in trainer.model.state_dict().items()})

    trainer.model.lm_head.register_forward_hook(remember)
    summary = trainer.run()
    printed = capsys.readouterr().out
    assert "dtype float16" in printed
    assert "iteration 5: the loss is nan; skipped this step (on_nan=skip)" in printed
    assert summary["iter_num"] == 8 and math.isfinite(summary["full_val_loss"])
    final = checkpoint.load_checkpoint(out / "ckpt.pt")
    assert all(t.isfinite().all() for t in final["model"].values())
    assert trainer.scaler.get_scale() < 2.0**16  # the NaN step backed the loss scale off


def test_a_nan_step_is_never_applied_even_before_it_is_reported(char_data_dir, tmp_path):
    """The guard reads its flags only at log_interval, but the step itself is skipped on the device."""
    trainer = Trainer(*load_config(None, tiny_overrides(char_data_dir, tmp_path / "out", dtype="float32",
                                                        grad_clip=0.0)), quiet=True)
    trainer.train_step(1e-3)
    weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    moments = {k: v.clone() for k, v in trainer.optimizer.state_dict()["state"][0].items()}
    nan_loss_at(trainer, trainer.iter_num)
    loss, norm = trainer.train_step(1e-3)
    assert not math.isfinite(float(loss))
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(value, weights[name]), name
    for key, value in trainer.optimizer.state_dict()["state"][0].items():
        assert torch.equal(value, moments[key]), key  # AdamW's step count and moments too
    with pytest.raises(TinyGPTError, match=r"^iteration 0: the loss is nan; stopped without applying the step"):
        trainer.guard.check()


def tensors_in(state) -> list[torch.Tensor]:
    """Every tensor in a nested optimizer state dict, in order."""
    if isinstance(state, torch.Tensor):
        return [state.clone()]
    if isinstance(state, dict):
        return [t for key in sorted(state, key=str) for t in tensors_in(state[key])]
    if isinstance(state, (list, tuple)):
        return [t for item in state for t in tensors_in(item)]
    return []


@pytest.mark.parametrize("optimizer, dtype", [("adamw", "float32"), ("adamw", "bfloat16"), ("muon", "float32")])
def test_a_step_with_an_infinite_loss_is_skipped_even_when_its_gradients_are_finite(char_data_dir, tmp_path, optimizer,
                                                                                     dtype):
    """The loss's own finiteness decides too (fused AdamW skips in its kernel, Muon after reading the flag)."""
    trainer = Trainer(*load_config(None, tiny_overrides(char_data_dir, tmp_path / "out", dtype=dtype,
                                                        optimizer=optimizer)), quiet=True)
    assert not trainer.scaler.is_enabled()  # no loss scaling outside float16
    trainer.train_step(1e-3)
    weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    moments = tensors_in(trainer.optimizer.state_dict())
    model = trainer.step_model
    trainer.step_model = lambda x, y: (None, model(x, y)[1] + float("inf"))  # the gradients stay those of the loss
    loss, norm = trainer.train_step(1e-3)
    assert float(loss) == math.inf and math.isfinite(float(norm)) and float(norm) > 0
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(value, weights[name]), name
    after = tensors_in(trainer.optimizer.state_dict())
    assert len(after) == len(moments) and all(torch.equal(a, b) for a, b in zip(after, moments))
    with pytest.raises(TinyGPTError, match=r"^iteration 0: the loss is inf; stopped without applying the step"):
        trainer.guard.check()
    trainer.step_model = model
    trainer.train_step(1e-3)  # the next good step is applied
    assert not all(torch.equal(v, weights[k]) for k, v in trainer.model.state_dict().items())


# -- data, vocabulary, sampling ----------------------------------------------------------------
def test_prefetched_batches_are_the_same_and_resume_at_the_first_untrained_one(char_data_dir):
    dataset = TokenDataset(char_data_dir / "tiny")

    def loader(prefetch: bool) -> BatchLoader:
        return BatchLoader(dataset, "train", 4, 16, torch.Generator().manual_seed(5), "cpu", prefetch=prefetch)

    plain, ahead = loader(False), loader(True)
    for _ in range(3):
        for a, b in zip(plain.next(), ahead.next()):
            assert torch.equal(a, b)
    assert not torch.equal(plain.generator_state(), ahead.generator.get_state())  # one batch read ahead
    assert torch.equal(plain.generator_state(), ahead.generator_state())  # but saved where training is
    resumed = loader(True)
    resumed.set_generator_state(ahead.generator_state())
    assert torch.equal(resumed.next()[0], plain.next()[0])


@pytest.fixture
def bpe_data_dir(tmp_path: Path, corpus: Path) -> Path:
    data_dir = tmp_path / "bpe"
    prepare("tinybpe", data_dir, input_path=str(corpus), tokenizer="gpt2")
    return data_dir


@pytest.mark.needs_gpt2
def test_bpe_vocabulary_is_padded_and_padded_ids_are_never_sampled_or_exported(bpe_data_dir, tmp_path, capsys):
    from transformers import GPT2LMHeadModel

    from model.huggingface import save_pretrained
    from model.sampling.generate import generate_text

    out = tmp_path / "out"
    values = tiny_overrides(bpe_data_dir, out, dataset="tinybpe", vocab_size=50257, max_iters=2, eval_interval=2,
                            n_embd=16, batch_size=2, dtype="float32")
    train(*load_config(None, values))
    assert "vocabulary: 50,257 tokens in 50,304 rows" in capsys.readouterr().out
    assert padded_vocab_size(50257) == 50304 and padded_vocab_size(65) == 128 and padded_vocab_size(64) == 64
    model, tok, _ = checkpoint.load_model(out)
    assert model.config.vocab_size == 50304 and tok.vocab_size == 50257

    with torch.no_grad():  # make the padding rows the most likely "tokens" by far
        model.lm_head.weight[50257:] = 0.0
        model.lm_head.weight[50257:, 0] = 1e4 * torch.sign(model.transformer.ln_f.weight[0])
    out_ids = []
    for _, text in generate_text(model, tok, [[0]], 20, temperature=1.0, top_k=None, seed=1):
        out_ids.extend(tok.encode(text))
    assert out_ids and max(out_ids) < 50257

    folder = save_pretrained(model, tmp_path / "hf", tok)
    config = json.loads((folder / "config.json").read_text())
    assert config["vocab_size"] == 50257
    assert GPT2LMHeadModel.from_pretrained(folder).lm_head.weight.shape == (50257, 32 // 2)

    # a resumed run keeps the checkpoint's padded rows although the config still says 50257
    resumed = Trainer(*load_config(None, {**values, "init_from": "resume", "max_iters": "3"}), quiet=True)
    assert resumed.model_config.vocab_size == 50304


@pytest.mark.parametrize("option, value", [("pos_embedding", "rope"), ("norm", "rmsnorm"), ("activation", "relu2"),
                                           ("qk_norm", True)])
def test_hf_export_refuses_what_gpt2_cannot_represent(tmp_path, option, value):
    from model.huggingface import save_pretrained

    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=32, **{option: value}))
    with pytest.raises(TinyGPTError, match=rf"^GPT-2 can't represent {option}={value!r} \(it has {option}="):
        save_pretrained(model, tmp_path / "hf")
    assert not (tmp_path / "hf" / "model.safetensors").exists()


def test_sample_defaults_to_auto_device_and_dtype_and_loads_weights_only(trained, monkeypatch):
    from model import cli

    seen = {}
    real_load = checkpoint.load_checkpoint

    def load(path, device="cpu"):
        seen["map_location"] = device
        return real_load(path, device)

    monkeypatch.setattr(checkpoint, "load_checkpoint", load)
    with mock.patch("model.device.resolve_inference_dtype", wraps=devices.resolve_inference_dtype) as resolve_dtype:
        assert cli.sample_main(["--out_dir", str(trained), "--num_samples=1", "--max_new_tokens=3", "--quiet"]) == 0
    assert resolve_dtype.call_args.args[0] == "auto"
    assert seen["map_location"] == "cpu"  # the optimizer state never goes to the device


# -- FSDP memory, RNG, stop agreement -----------------------------------------------------------
def test_memory_check_counts_each_ranks_shard_under_fsdp():
    model_config, config = load_config(ROOT / "configs" / "gpt3-2.7b.toml", ["--batch_size=1"])
    device_memory = 40e9  # an A100 40GB
    alone = memory.estimate_training_memory(model_config, config, torch.bfloat16)
    sharded = memory.estimate_training_memory(model_config, config, torch.bfloat16, shards=8)
    assert alone.state_bytes == alone.n_params * 16 > device_memory  # float32 weights, gradients, AdamW m and v
    assert sharded.total_bytes < device_memory
    assert sharded.state_bytes > alone.state_bytes / 8  # plus the blocks gathered whole
    assert sharded.activation_bytes == alone.activation_bytes
    with mock.patch.object(memory, "machine_memory", return_value=int(device_memory)):
        memory.check_fits(model_config, config, "cuda:0", torch.bfloat16, shards=8)
        with pytest.raises(TinyGPTError, match="per rank, sharded over 2"):
            memory.check_fits(model_config, config, "cuda:0", torch.bfloat16, shards=2)


def test_cuda_rng_state_is_saved_and_restored_per_rank(tmp_path):
    state_on_gpu1 = torch.arange(16, dtype=torch.uint8)
    with mock.patch.object(torch.cuda, "get_rng_state", return_value=state_on_gpu1) as get, \
            mock.patch.object(torch.cuda, "set_rng_state") as put:
        state = rng.rng_state("cuda:1")
        assert get.call_args.args == (torch.device("cuda:1"),)
        checkpoint.save_checkpoint(tmp_path / "ckpt.pt", {"model": {}, "model_config": {}, "rng": [state]})
        loaded = checkpoint.safe_load(tmp_path / "ckpt.pt")["rng"][0]  # weights_only loading
        rng.restore_rng(loaded, "cuda:1")
        assert torch.equal(put.call_args.args[0], state_on_gpu1) and put.call_args.args[1] == torch.device("cuda:1")
        put.reset_mock()
        rng.restore_rng(rng.rng_state("cpu"), "cuda:1")  # a CPU run's checkpoint: the GPU keeps its seed
        put.assert_not_called()
    assert "cuda" not in rng.rng_state("cpu")


def test_a_stop_request_on_any_rank_stops_every_rank():
    with GracefulStop() as stop:
        assert not stop.agreed(lambda mine: mine)
        assert stop.agreed(lambda mine: max(mine, signal.SIGTERM))  # another rank got SIGTERM
        assert stop.interrupted(3, Path("ckpt.pt")).exit_code == 143
        stop.mark_saved()
        os.kill(os.getpid(), signal.SIGTERM)  # torchrun's SIGTERM while exiting: ignored, no KeyboardInterrupt
        time.sleep(0.05)


def test_pyproject_torch_floor_admits_the_gpu_benchmark_machines_release():
    """`python -m model.bench gpu` runs where PyTorch 2.11 is installed (docs/gpu.md, "Installing PyTorch"), so the floor in
    pyproject.toml must admit 2.11, and no upper bound may shut out newer releases."""
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_spec = next(d.replace(" ", "") for d in dependencies if re.match(r"torch\b", d))
    floor = re.fullmatch(r"torch>=(\d+)\.(\d+)", torch_spec)
    assert floor is not None, f"torch is pinned as {torch_spec!r}: a floor and no upper bound expected"
    assert (int(floor[1]), int(floor[2])) <= (2, 11)


# -- torchrun ---------------------------------------------------------------------------------------
def torchrun(nproc: int, values: dict, **popen) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "train.py", *[f"--{k}={v}" for k, v in values.items()], "--quiet"]
    return subprocess.Popen(command, cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            **popen)


def worker_with_rank(launcher: int, rank: int) -> int:
    for task in Path(f"/proc/{launcher}/task").iterdir():
        for child in (task / "children").read_text().split():
            if f"RANK={rank}".encode() in Path(f"/proc/{child}/environ").read_bytes().split(b"\0"):
                return int(child)
    raise AssertionError(f"no worker with RANK={rank}")


def logged_iters(out: Path) -> list[int]:
    path = out / "metrics.jsonl"
    if not path.is_file():
        return []
    return [r["iter"] for r in map(json.loads, path.read_text().splitlines()) if "loss" in r]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the workers through /proc (Linux)")
def test_sigterm_to_one_rank_saves_once_and_every_rank_exits_alike_then_resumes(char_data_dir, tmp_path):
    out = tmp_path / "out"
    values = tiny_overrides(char_data_dir, out, max_iters=100000, lr_decay_iters=100000, eval_interval=100000,
                            log_interval=1, dtype="float32")
    run = torchrun(2, values)
    deadline = time.time() + 240
    while len(logged_iters(out)) < 3:
        assert run.poll() is None and time.time() < deadline, run.communicate()[1][-3000:]
        time.sleep(0.2)
    os.kill(worker_with_rank(run.pid, 1), signal.SIGTERM)  # rank 1 only: rank 0 hears of it by agreement
    _, stderr = run.communicate(timeout=240)
    stops = re.findall(r"SIGTERM received: stopped after iteration (\d+)", stderr)
    assert len(stops) == 2 and stops[0] == stops[1], stderr[-3000:]  # both ranks, after the same step
    # torchrun's summary lists the ranks that failed before it stopped the rest: one or both, each 143
    assert re.findall(r"exitcode\s*:\s*143", stderr) and not re.findall(r"exitcode\s*:\s*130", stderr), stderr[-3000:]
    stopped = int(stops[0])
    saved = checkpoint.load_checkpoint(out / "ckpt.pt")
    assert saved["iter_num"] == stopped and len(saved["rng"]) == 2
    assert not list(out.glob(".*.tmp*"))

    resumed = torchrun(2, {**values, "init_from": "resume", "max_iters": stopped + 2})
    _, stderr = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, stderr[-3000:]
    assert checkpoint.load_checkpoint(out / "ckpt.pt")["iter_num"] == stopped + 2


@pytest.mark.slow
def test_fsdp_with_wandb_offline_samples_text_at_each_evaluation(char_data_dir, tmp_path):
    out = tmp_path / "out"
    values = tiny_overrides(char_data_dir, out, fsdp=True, wandb_log=True, wandb_mode="offline", sample_tokens=12,
                            max_iters=4, eval_interval=2, dtype="bfloat16")
    run = torchrun(2, values)
    _, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr[-3000:]
    tables = sorted(out.glob("wandb/offline-run-*/files/media/table/samples_*.table.json"))
    assert tables, sorted(p.name for p in out.rglob("*"))
    rows = json.loads(max(tables, key=lambda p: p.stat().st_mtime).read_text())["data"]
    assert [row[0] for row in rows] == [0, 2, 4] and all(isinstance(row[2], str) and row[2] for row in rows)
    model, tok, ckpt = checkpoint.load_model(out)  # the full weights, gathered on rank 0 for sample.py
    assert ckpt["iter_num"] == 4 and all(t.isfinite().all() for t in model.state_dict().values())


# -- python -m model.bench gpu -----------------------------------------------------------------------
def test_bench_gpu_without_a_gpu_says_so_and_exits_0(capsys):
    from model.bench import gpu

    with mock.patch.object(torch.cuda, "is_available", return_value=False):
        assert gpu.main([]) == 0
        assert gpu.main(["--device=cuda"]) == 0
    assert "no NVIDIA GPU here" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_gpu_tiny_on_cpu_prints_ours_next_to_transformers_without_wandb_or_datasets(tmp_path):
    """As CI runs it; wandb and datasets are made unimportable, as on the GPU machine."""
    script = ("import sys; sys.modules['wandb'] = None; sys.modules['datasets'] = None; "
              "from model.bench.gpu import main; raise SystemExit(main(sys.argv[1:]))")
    done = subprocess.run([sys.executable, "-c", script, "--device=cpu", "--tiny", f"--out={tmp_path}"], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"^tinygpt\s+\w+\s+False\s+50,304\s+[\d,]+", done.stdout, re.M), done.stdout
    assert re.search(r"^transformers GPT2LMHeadModel \(sdpa\)\s+\w+\s+False\s+50,257\s+[\d,]+", done.stdout, re.M)
    results = json.loads((tmp_path / "gpu.json").read_text())
    assert [row["name"] for row in results["training"]] == ["tinygpt", "transformers GPT2LMHeadModel (sdpa)"]
    assert all(row["tokens_per_sec"] > 0 for row in results["training"] + results["decoding"])
    assert {(row["name"], row["batch"]) for row in results["decoding"]} == {
        (name, batch) for name in ("tinygpt", "transformers") for batch in (1, 8)}
    assert all(row["same_greedy_tokens"] > 0.5 for row in results["decoding"])
