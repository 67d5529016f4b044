"""The C kernels behind model/kernels/ops.py against PyTorch, forward and backward, float32 and bfloat16:
GELU, attention's fused scale, causal mask, softmax and dropout, LayerNorm to bf16 and the linear
layer with the bias inside oneDNN's product; PyTorch's own ops wherever they don't apply; applying
them to a network (model/fused.py: the same parameters and state dict); a whole GPT with the kernels
applied and without; tracing through the custom ops (torch.compile, meta device, FlopCounterMode);
the switch that turns them off; the build's failure marker; the decode struct."""

from __future__ import annotations

import copy
import dataclasses

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from model.config import GPTConfig, load_config
from model.fused import FUSED, KernelAttention, KernelBlock, apply_kernels
from model.kernels import build, ops
from model.kernels.modules import FusedBiasLinear, GELUTanh, HashDropout, LayerNormToBF16
from model.nn.gpt import GPT
from helpers import ROOT

TOLERANCE = {torch.float32: dict(atol=2e-6, rtol=2e-6), torch.bfloat16: dict(atol=1e-2, rtol=1e-2)}


def made_by(t: torch.Tensor, op: str) -> bool:
    """Whether t's autograd node is the custom op tinygpt::<op>."""
    return f"tinygpt_{op}" in type(t.grad_fn).__name__


@pytest.fixture
def kernels_off(monkeypatch):
    monkeypatch.setenv("TINYGPT_KERNELS", "0")


@pytest.mark.needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gelu_matches_pytorch_forward_and_backward(dtype):
    x = torch.cat([torch.randn(100_000) * 3, torch.tensor([0.0, 1e-4, -1e-4, -12.0, 12.0, -100.0, 100.0, 3e38])])
    x = x.to(dtype).requires_grad_()
    reference = x.detach().double().requires_grad_()
    y = ops.gelu(x)
    assert made_by(y, "gelu_tanh")
    expected = F.gelu(reference, approximate="tanh")
    grad = torch.randn_like(expected)
    y.backward(grad.to(dtype))
    expected.backward(grad)
    assert y.dtype == dtype and y.shape == x.shape
    torch.testing.assert_close(y.double(), expected, **TOLERANCE[dtype])
    torch.testing.assert_close(x.grad.double(), reference.grad, **TOLERANCE[dtype])
    with torch.no_grad():  # inference: forward only, the same values
        assert torch.equal(ops.gelu(x), y)


def test_gelu_falls_back_to_pytorch(monkeypatch):
    x = torch.randn(1000, dtype=torch.float64)  # no float64 kernel
    assert torch.equal(ops.gelu(x), F.gelu(x, approximate="tanh"))
    monkeypatch.setenv("TINYGPT_KERNELS", "0")
    x = torch.randn(1000, requires_grad=True)
    y = ops.gelu(x)
    assert torch.equal(y, F.gelu(x, approximate="tanh")) and not made_by(y, "gelu_tanh")


def reference_weights(scores, scale, causal):
    T, S = scores.shape[-2:]
    visible = torch.ones(T, S, dtype=torch.bool).tril(S - T) if causal else torch.ones(T, S, dtype=torch.bool)
    return F.softmax((scores * scale).masked_fill(~visible, float("-inf")), dim=-1), visible


@pytest.mark.needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("T,S,causal", [(70, 70, True), (5, 41, True), (1, 9, True), (33, 33, False), (3, 40, False)])
def test_attention_probs_match_masked_softmax(dtype, T, S, causal):
    scores = (torch.randn(2, 3, T, S) * 5).to(dtype).requires_grad_()
    reference = scores.detach().double().requires_grad_()
    att = ops.attention_probs(scores, 0.3, None, 0.0, causal=causal)
    assert made_by(att, "attention_probs")
    expected, visible = reference_weights(reference, 0.3, causal)
    grad = torch.randn_like(expected)
    att.backward(grad.to(dtype))
    expected.backward(grad)
    torch.testing.assert_close(att.double(), expected, **TOLERANCE[dtype])
    torch.testing.assert_close(scores.grad.double(), reference.grad, **TOLERANCE[dtype])
    assert (att[..., ~visible] == 0).all() and (scores.grad[..., ~visible] == 0).all()


@pytest.mark.needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_dropout_drops_weights_and_their_gradient(dtype):
    p = 0.3
    scores = torch.randn(4, 2, 64, 64).to(dtype).requires_grad_()
    reference = scores.detach().double().requires_grad_()
    dropped = ops.attention_probs(scores, 0.125, None, p, causal=True)
    att, visible = reference_weights(reference, 0.125, True)
    kept = dropped != 0  # softmax weights of visible keys are > 0, so zeros are the dropped ones
    assert abs(kept[..., visible].float().mean().item() - (1 - p)) < 0.02
    assert not kept[..., ~visible].any()
    torch.testing.assert_close(dropped.double(), att * kept / (1 - p), **TOLERANCE[dtype])
    grad = torch.randn_like(att)
    dropped.backward(grad.to(dtype))
    (att * kept / (1 - p)).backward(grad)  # the same mask, so the same gradient
    torch.testing.assert_close(scores.grad.double(), reference.grad, **TOLERANCE[dtype])


@pytest.mark.needs_kernels
def test_attention_dropout_repeats_under_manual_seed():
    scores = torch.randn(2, 2, 32, 32)
    torch.manual_seed(5)
    a, b = (ops.attention_probs(scores, 1.0, None, 0.5, causal=True) for _ in range(2))
    torch.manual_seed(5)
    assert torch.equal(ops.attention_probs(scores, 1.0, None, 0.5, causal=True), a) and not torch.equal(a, b)


def test_attention_probs_take_pytorchs_steps_where_the_kernel_doesnt_apply(monkeypatch):
    scores = torch.randn(2, 1, 8, 8, requires_grad=True)
    padding = torch.ones(2, 1, 1, 8, dtype=torch.bool)
    padding[0, ..., 5:] = False  # a mask that is not the causal one: the kernel can't take it
    cases = [(scores.double(), None, False), (scores.half(), None, True), (scores, padding, False),
             (torch.randn(1, 1, 8, 4, requires_grad=True), None, False)]  # fewer keys than queries
    for s, mask, causal in cases:
        att = ops.attention_probs(s, 0.5, mask, 0.0, causal=causal)
        visible = torch.ones(s.shape[-2:], dtype=torch.bool).tril(s.shape[-1] - s.shape[-2]) if causal else True
        visible = visible & (True if mask is None else mask)
        expected = F.softmax((s * 0.5).masked_fill(~torch.as_tensor(visible), float("-inf")), dim=-1)
        assert not made_by(att, "attention_probs")
        torch.testing.assert_close(att, expected)
    monkeypatch.setenv("TINYGPT_KERNELS", "0")
    assert not made_by(ops.attention_probs(scores, 0.5, None, 0.0), "attention_probs")


@pytest.mark.needs_kernels
@pytest.mark.parametrize("autocast", [False, True])
def test_linear_with_the_bias_fused_matches_nn_linear(autocast):
    from model.kernels.linear import fused_bias_linear_available

    torch.manual_seed(0)
    reference = torch.nn.Linear(24, 40)
    ours = apply_kernels(copy.deepcopy(reference))
    assert type(ours) is FusedBiasLinear
    assert list(ours.state_dict()) == ["weight", "bias"]
    x = torch.randn(3, 7, 24, requires_grad=True)
    results = []
    for module in (ours, reference):
        x.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            y = module(x)
        y.float().square().sum().backward()
        results.append([y, x.grad, module.weight.grad, module.bias.grad])
    assert results[0][0].dtype == results[1][0].dtype == (torch.bfloat16 if autocast else torch.float32)
    tolerance = dict(atol=5e-2, rtol=2e-2) if autocast else dict(atol=1e-5, rtol=1e-5)
    for a, b in zip(*results):
        torch.testing.assert_close(a.float(), b.float(), **tolerance)
    assert made_by(ours(x), "linear") == fused_bias_linear_available()  # the fused path ran where it exists


@pytest.mark.needs_kernels
@pytest.mark.parametrize("bias", [True, False])
def test_layernorm_to_bf16_matches_pytorch_under_autocast(bias):
    torch.manual_seed(0)
    reference = torch.nn.LayerNorm(48, bias=bias)
    with torch.no_grad():
        reference.weight.uniform_(0.5, 1.5)
        if bias:
            reference.bias.uniform_(-1, 1)
    ours = apply_kernels(copy.deepcopy(reference))
    assert type(ours) is LayerNormToBF16
    x = (torch.randn(3, 10, 48) * 3 + 1).requires_grad_()
    grad = torch.randn(3, 10, 48).bfloat16()
    results = []
    for module in (ours, reference):
        x.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = module(x).to(torch.bfloat16)  # what the next matmul does with PyTorch's float32 result
        y.backward(grad)
        results.append([y.float(), x.grad, module.weight.grad] + ([module.bias.grad] if bias else []))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert made_by(ours(x), "layer_norm_to_bf16")
    assert torch.equal(ours(x), reference(x))  # without autocast: PyTorch's own
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-5, rtol=1e-5)  # dx: float32 throughout


def default_architecture(**overrides) -> GPTConfig:
    """GPTConfig's default architecture (learned positions, LayerNorm, GELU, biases, tied head), small."""
    values = dict(n_layer=2, n_head=4, n_embd=64, block_size=32, vocab_size=96)
    return GPTConfig(**dict(values, **overrides))


def fast_cpu_architecture() -> GPTConfig:
    """configs/shakespeare_char_cpu.toml's network: rotary, RMSNorm, ReLU², QK-norm, no biases, untied head."""
    return load_config(ROOT / "configs" / "shakespeare_char_cpu.toml", ["--vocab_size=65"])[0]


ARCHITECTURES = {"default": default_architecture, "fast_cpu": fast_cpu_architecture}


def loss_and_grads(model: GPT, idx: torch.Tensor, autocast: bool, step=None) -> list[torch.Tensor]:
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        _, loss = (model if step is None else step)(idx, idx)
    loss.backward()
    return [loss.detach()] + [p.grad.clone() for p in model.parameters()]


def test_apply_kernels_changes_classes_only(monkeypatch):
    """Every module with a kernel version becomes it in place: the same objects, parameters (tied
    ones still tied) and state dict; a second call changes nothing; switched off, nothing at all."""
    from model.nn.gpt import Block

    torch.manual_seed(0)
    model = GPT(default_architecture(dropout=0.1))
    modules, plain_kinds = dict(model.named_modules()), {type(m) for m in model.modules()}
    pointers = {k: v.data_ptr() for k, v in model.state_dict().items()}
    monkeypatch.setenv("TINYGPT_KERNELS", "0")
    assert apply_kernels(model) is model and {type(m) for m in model.modules()} == plain_kinds
    monkeypatch.setenv("TINYGPT_KERNELS", "1")
    apply_kernels(model)
    assert dict(model.named_modules()) == modules  # the same module objects, under the same names
    kinds = {type(m) for m in model.modules()}
    assert {KernelAttention, KernelBlock, FusedBiasLinear, GELUTanh, HashDropout, LayerNormToBF16} <= kinds
    assert not kinds & {torch.nn.Linear, torch.nn.Dropout, torch.nn.GELU, torch.nn.LayerNorm, Block}
    assert all(isinstance(m, Block) for m in model.transformer.h)
    assert {k: v.data_ptr() for k, v in model.state_dict().items()} == pointers
    assert model.lm_head.weight is model.transformer.wte.weight
    apply_kernels(model)
    assert {type(m) for m in model.modules()} == kinds
    exact = torch.nn.GELU()  # not the tanh approximation: no kernel computes it
    assert type(apply_kernels(exact)) is torch.nn.GELU


@pytest.mark.needs_kernels
@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16"])
def test_a_gpt_trains_the_same_with_the_kernels_applied_and_without(architecture, autocast, monkeypatch):
    """Forward and backward of a whole GPT with every kernel applied (the explicit attention path, as
    bf16 training on a CPU takes it) and of the plain network (PyTorch's fused attention), within the
    kernels' own tolerances: float32 as the fused-bias linear's, bfloat16 as the explicit path's."""
    monkeypatch.setattr(ops, "explicit_is_faster", lambda *args: True)
    torch.manual_seed(0)
    plain = GPT(ARCHITECTURES[architecture]()).train()  # dropout 0: both sides compute the same function
    fused = apply_kernels(copy.deepcopy(plain))
    idx = torch.randint(0, plain.config.vocab_size, (2, 32))
    attention_probs = []
    real_probs = ops.attention_probs
    monkeypatch.setattr(ops, "attention_probs", lambda *args, **kwargs: attention_probs.append(1) or real_probs(*args, **kwargs))
    on = loss_and_grads(fused, idx, autocast)
    assert len(attention_probs) == plain.config.n_layer  # the kernels' explicit path ran in every layer
    off = loss_and_grads(plain, idx, autocast)
    assert len(attention_probs) == plain.config.n_layer  # and the plain network never calls into the kernels
    tolerance = dict(atol=3e-2, rtol=3e-2) if autocast else dict(atol=1e-5, rtol=1e-5)
    for a, b in zip(on, off):
        torch.testing.assert_close(a, b, **tolerance)


@pytest.mark.needs_kernels
@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16"])
def test_training_step_compiles_whole_through_the_custom_ops(architecture, autocast):
    """torch.compile(fullgraph=True) traces forward and backward through the C kernels' custom ops
    (no graph break), and the compiled step computes what the eager one does."""
    config = ARCHITECTURES[architecture]()
    config = dataclasses.replace(config, dropout=0.1)  # the dropout ops too
    torch.manual_seed(0)
    model = apply_kernels(GPT(config)).train()
    idx = torch.randint(0, config.vocab_size, (2, 32))
    seen: set[str] = set()

    def recording_eager(gm: torch.fx.GraphModule, example_inputs):
        seen.update(str(node.target) for node in gm.graph.nodes if node.op == "call_function")
        return gm.forward

    torch.manual_seed(1)
    eager = loss_and_grads(model, idx, autocast)
    for backend in ("eager", recording_eager):
        torch._dynamo.reset()
        compiled = torch.compile(model, fullgraph=True, backend=backend)
        torch.manual_seed(1)  # the same dropout seeds, drawn in the same order
        torch.testing.assert_close(loss_and_grads(model, idx, autocast, compiled), eager)
    from model.kernels.linear import fused_bias_linear_available

    expected = {"tinygpt.dropout_add.default", "tinygpt.attention_probs.default"}  # dropout: the explicit path
    if config.activation == "gelu":
        expected.add("tinygpt.gelu_tanh.default")
    if config.bias and fused_bias_linear_available():
        expected.add("tinygpt.linear.default")
    if config.norm == "layernorm" and autocast:
        expected.add("tinygpt.layer_norm_to_bf16.default")
    assert expected <= seen


@pytest.mark.needs_kernels
def test_meta_device_and_flop_counter_trace_through_the_custom_ops():
    from torch.profiler import profile
    from torch.utils.flop_counter import FlopCounterMode

    from model.nn.report import Report

    config = default_architecture(dropout=0.1)
    with torch.device("meta"):  # attention takes the fused path there, as on a GPU; the rest are custom ops
        model = apply_kernels(GPT(config)).train()
    idx = torch.randint(0, config.vocab_size, (2, 32), device="meta")
    with profile() as prof:
        _, loss = model(idx, idx)
        loss.backward()
    assert loss.device.type == "meta" and all(p.grad.device.type == "meta" for p in model.parameters())
    names = {event.key for event in prof.key_averages()}
    assert {"tinygpt::gelu_tanh", "tinygpt::dropout_add"} <= names

    torch.manual_seed(0)
    model = apply_kernels(GPT(config)).train()
    idx = torch.randint(0, config.vocab_size, (3, 32))
    with FlopCounterMode(display=False) as counter:
        logits, _ = model(idx)
        logits.sum().backward()
    B, T = idx.shape
    assert counter.get_total_flops() == Report(config).training_flops * B * T
    counted = {str(op) for op in counter.get_flop_counts()["Global"]}
    from model.kernels.linear import fused_bias_linear_available

    assert ("tinygpt.linear" in counted) == fused_bias_linear_available()


def test_the_switch_off_builds_nothing_and_training_and_sampling_work(kernels_off, monkeypatch, tmp_path,
                                                                        char_data_dir, capsys):
    from model.cli import sample_main, train_main
    from helpers import tiny_overrides

    def no_build():
        raise AssertionError("the kernel library was built or loaded with TINYGPT_KERNELS=0")

    monkeypatch.setattr(build, "_load", no_build)
    monkeypatch.setenv("TINYGPT_CACHE", str(tmp_path / "cache"))
    values = tiny_overrides(char_data_dir, tmp_path / "out", max_iters=4, eval_interval=4, dropout=0.1,
                            dtype="bfloat16")
    assert train_main([f"--{k}={v}" for k, v in values.items()] + ["--quiet"]) == 0
    assert sample_main([f"--out_dir={tmp_path / 'out'}", "--num_samples=1", "--max_new_tokens=5", "--quiet"]) == 0
    assert not (tmp_path / "cache").exists()


def test_the_training_config_key_switches_the_kernels_off(monkeypatch, tmp_path, char_data_dir):
    from model.training.trainer import Trainer
    from helpers import tiny_overrides

    def no_build():
        raise AssertionError("the kernel library was built or loaded with kernels=False")

    monkeypatch.setattr(build, "_load", no_build)
    values = tiny_overrides(char_data_dir, tmp_path / "out", max_iters=2, eval_interval=2, dropout=0.1, kernels=False)
    try:
        trainer = Trainer(*load_config(None, values), quiet=True)
        trainer.run()
        assert not build.enabled()
        assert all(type(m) not in FUSED.values() for m in trainer.model.modules())  # the network as nn/ wrote it
    finally:
        build.set_enabled(True)
    assert build.enabled() == (os.environ.get("TINYGPT_KERNELS") != "0")


@pytest.mark.needs_kernels
def test_the_trainer_and_the_sampler_apply_the_kernels(tmp_path, char_data_dir):
    from model.sampling.generate import prepare_for_sampling
    from model.training.trainer import Trainer
    from helpers import tiny_overrides

    trainer = Trainer(*load_config(None, tiny_overrides(char_data_dir, tmp_path / "out", dropout=0.1)), quiet=True)
    assert all(type(block) is KernelBlock for block in trainer.model.transformer.h)
    model = prepare_for_sampling(GPT(default_architecture()))
    assert all(type(block.attn) is KernelAttention for block in model.transformer.h)


def test_a_fresh_process_with_the_switch_off_builds_nothing(tmp_path):
    program = (
        "import torch\n"
        "from model import GPT, GPTConfig\n"
        "from model.sampling.generate import generate, prepare_for_sampling\n"
        "model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=20, dropout=0.1))\n"
        "idx = torch.randint(0, 20, (2, 16))\n"
        "with torch.autocast('cpu', dtype=torch.bfloat16):\n"
        "    model(idx, idx)[1].backward()\n"
        "prepare_for_sampling(model)\n"
        "assert len(list(generate(model, idx[:1, :3], 5))) == 5\n"
    )
    env = dict(os.environ, TINYGPT_KERNELS="0", TINYGPT_CACHE=str(tmp_path / "cache"), PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", program], env=env, cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "cache").exists()


def test_without_openmp_the_kernels_replace_only_single_threaded_ops(monkeypatch):
    class OneCoreBuild:
        def kernels_use_openmp(self) -> int:
            return 0

    monkeypatch.setattr(build, "library", lambda: OneCoreBuild())
    assert not build.replaces_threaded_ops()
    x = torch.randn(100, requires_grad=True)
    assert not made_by(ops.gelu(x), "gelu_tanh")  # PyTorch's multi-threaded GELU stays
    assert ops.kernel_covers(x, threaded=False)  # dropout's mask, one thread in PyTorch too, may use C


def fake_compiler(tmp_path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return str(path)


def test_a_failed_build_warns_once_with_its_log_and_is_not_retried(monkeypatch, tmp_path, capsys):
    cache = tmp_path / "cache"
    monkeypatch.setenv("TINYGPT_CACHE", str(cache))
    calls = tmp_path / "calls"
    broken = fake_compiler(tmp_path, "broken-cc", f'echo "$@" >> {calls}; echo "cc: error: no good" >&2; exit 1')
    assert build._build(broken) is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning:")
    log = next(cache.glob("*.log"))
    assert str(log) in err and "cc: error: no good" in log.read_text()
    assert not list(cache.glob("*.so"))  # nothing half-built is left behind
    tried = calls.read_text().count("-shared")
    assert tried == len(build.FLAG_SETS)
    assert build._build(broken) is None  # the marker: no second attempt with the same sources and compiler
    assert calls.read_text().count("-shared") == tried
    other = fake_compiler(tmp_path, "other-cc", f'echo "$@" >> {calls}; exit 1')
    assert build._build(other) is None  # another compiler tries anew
    assert calls.read_text().count("-shared") == 2 * tried
    monkeypatch.setattr(build, "SOURCES", build.SOURCES[:-1])  # so do other sources
    assert build._build(broken) is None
    assert calls.read_text().count("-shared") == 3 * tried


def test_a_compiler_that_hangs_times_out(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("TINYGPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(build, "COMPILE_TIMEOUT", 0.2)
    monkeypatch.setattr(build, "FLAG_SETS", build.FLAG_SETS[:1])
    hanging = fake_compiler(tmp_path, "slow-cc", 'case "$1" in --version) exit 0;; esac; sleep 5')
    assert build._build(hanging) is None
    log = next((tmp_path / "cache").glob("*.log"))
    assert "timed out" in log.read_text() and str(log) in capsys.readouterr().err


@pytest.mark.needs_kernels
def test_the_build_is_cached(monkeypatch, tmp_path):
    import shutil

    monkeypatch.setenv("TINYGPT_CACHE", str(tmp_path))
    assert build._build(str(tmp_path / "no-such-cc")) is None and list(tmp_path.iterdir()) == []
    compiler = build.find_compiler()
    lib = build._build(compiler)
    assert lib is not None and lib.parent == tmp_path
    mtime = lib.stat().st_mtime_ns
    assert build._build(compiler) == lib and lib.stat().st_mtime_ns == mtime
    assert shutil.which(compiler) or os.path.exists(compiler)


@pytest.mark.needs_kernels
def test_the_decode_structs_match_the_c_ones():
    import ctypes

    from model.kernels.decode import DecodeLayer, DecodeModel, c_layout, mirror_layout

    assert mirror_layout() == c_layout(build.library())

    class ModelMissingAField(ctypes.Structure):  # the check catches a mirror that drifted from decode.c
        _fields_ = DecodeModel._fields_[:3] + DecodeModel._fields_[4:]

    class LayerWithNarrowerPointers(ctypes.Structure):
        _fields_ = [(name, ctypes.c_int32) for name, _ in DecodeLayer._fields_]

    assert mirror_layout(model=ModelMissingAField) != c_layout(build.library())
    assert mirror_layout(layer=LayerWithNarrowerPointers) != c_layout(build.library())


@pytest.mark.needs_kernels
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_kernel_benchmark_prints_every_row(dtype, capsys):
    from model.bench import kernels as bench

    assert bench.main(["--batch_size=2", "--block_size=16", "--n_embd=32", "--n_head=2", "--repeats=1",
                       f"--dtype={dtype}"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line for line in lines if line.rstrip().endswith("x")]
    assert len(rows) == (4 if dtype == "bfloat16" else 3)
    assert all(float(row.split()[-1].rstrip("x")) > 0 for row in rows)
