"""The CPU training kernels against PyTorch, forward and backward, float32 and bfloat16: GELU
(model/kernels/activation.c), attention's fused scale, causal mask, softmax and dropout
(model/kernels/softmax.c), LayerNorm to bf16 (model/kernels/layernorm.c) and the linear layer with the
bias inside oneDNN's product; PyTorch's own ops wherever they don't apply; the kernel benchmark."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model.kernels import build as rowdot
from model.nn.attention import MultiHeadAttention
from model.nn.layers import gelu_tanh
from model.kernels.attention_probs import attention_weights, kernel_applies

needs_kernels = pytest.mark.skipif(rowdot.kernels() is None, reason="no C compiler")
TOLERANCE = {torch.float32: dict(atol=2e-6, rtol=2e-6), torch.bfloat16: dict(atol=1e-2, rtol=1e-2)}


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gelu_matches_pytorch_forward_and_backward(dtype):
    x = torch.cat([torch.randn(100_000) * 3, torch.tensor([0.0, 1e-4, -1e-4, -12.0, 12.0, -100.0, 100.0, 3e38])])
    x = x.to(dtype).requires_grad_()
    reference = x.detach().double().requires_grad_()
    y = gelu_tanh(x)
    expected = F.gelu(reference, approximate="tanh")
    grad = torch.randn_like(expected)
    y.backward(grad.to(dtype))
    expected.backward(grad)
    assert y.dtype == dtype and y.shape == x.shape
    torch.testing.assert_close(y.double(), expected, **TOLERANCE[dtype])
    torch.testing.assert_close(x.grad.double(), reference.grad, **TOLERANCE[dtype])
    with torch.no_grad():  # inference: forward only, the same values
        assert torch.equal(gelu_tanh(x), y)


def test_gelu_falls_back_to_pytorch(monkeypatch):
    x = torch.randn(1000, dtype=torch.float64)  # no float64 kernel
    assert torch.equal(gelu_tanh(x), F.gelu(x, approximate="tanh"))
    monkeypatch.setattr(rowdot, "kernels", lambda: None)
    x = torch.randn(1000)
    assert torch.equal(gelu_tanh(x), F.gelu(x, approximate="tanh"))


def reference_weights(scores, scale, causal):
    T, S = scores.shape[-2:]
    visible = torch.ones(T, S, dtype=torch.bool).tril(S - T) if causal else torch.ones(T, S, dtype=torch.bool)
    return F.softmax((scores * scale).masked_fill(~visible, float("-inf")), dim=-1), visible


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("T,S,causal", [(70, 70, True), (5, 41, True), (1, 9, True), (33, 33, False), (3, 40, False)])
def test_attention_weights_match_masked_softmax(dtype, T, S, causal):
    scores = (torch.randn(2, 3, T, S) * 5).to(dtype).requires_grad_()
    reference = scores.detach().double().requires_grad_()
    att = attention_weights(scores, 0.3, causal, 0.0)
    expected, visible = reference_weights(reference, 0.3, causal)
    grad = torch.randn_like(expected)
    att.backward(grad.to(dtype))
    expected.backward(grad)
    torch.testing.assert_close(att.double(), expected, **TOLERANCE[dtype])
    torch.testing.assert_close(scores.grad.double(), reference.grad, **TOLERANCE[dtype])
    assert (att[..., ~visible] == 0).all() and (scores.grad[..., ~visible] == 0).all()


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_dropout_drops_weights_and_their_gradient(dtype):
    p = 0.3
    scores = torch.randn(4, 2, 64, 64).to(dtype).requires_grad_()
    reference = scores.detach().double().requires_grad_()
    dropped = attention_weights(scores, 0.125, True, p)
    att, visible = reference_weights(reference, 0.125, True)
    kept = dropped != 0  # softmax weights of visible keys are > 0, so zeros are the dropped ones
    assert abs(kept[..., visible].float().mean().item() - (1 - p)) < 0.02
    assert not kept[..., ~visible].any()
    torch.testing.assert_close(dropped.double(), att * kept / (1 - p), **TOLERANCE[dtype])
    grad = torch.randn_like(att)
    dropped.backward(grad.to(dtype))
    (att * kept / (1 - p)).backward(grad)  # the same mask, so the same gradient
    torch.testing.assert_close(scores.grad.double(), reference.grad, **TOLERANCE[dtype])


@needs_kernels
def test_attention_dropout_repeats_under_manual_seed():
    scores = torch.randn(2, 2, 32, 32)
    torch.manual_seed(5)
    a, b = attention_weights(scores, 1.0, True, 0.5), attention_weights(scores, 1.0, True, 0.5)
    torch.manual_seed(5)
    assert torch.equal(attention_weights(scores, 1.0, True, 0.5), a) and not torch.equal(a, b)


def test_attention_kernel_declines_what_it_doesnt_cover(monkeypatch):
    scores = torch.randn(1, 1, 8, 8)
    assert not kernel_applies(scores.double(), 0.0) and not kernel_applies(scores.half(), 0.0)
    assert not kernel_applies(torch.randn(1, 1, 8, 4), 0.0)  # fewer keys than queries
    with pytest.raises(ValueError, match="can't take"):
        attention_weights(scores.half(), 1.0, True, 0.0)
    monkeypatch.setattr(rowdot, "kernels", lambda: None)
    assert not kernel_applies(scores, 0.0)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_training_attention_agrees_with_and_without_the_kernel(monkeypatch, dtype):
    """The explicit training path through the C kernel equals the same path in PyTorch ops."""
    from model.nn import attention

    torch.manual_seed(0)
    mha = MultiHeadAttention(32, 4).to(dtype)
    x = torch.randn(3, 20, 32, dtype=dtype, requires_grad=True)
    monkeypatch.setattr(attention, "explicit_is_faster", lambda *args: True)

    def output_and_grads():
        x.grad = None
        mha.zero_grad()
        y = mha(x)
        y.float().square().sum().backward()
        return [y.float(), x.grad.float(), mha.c_attn.weight.grad.float()]

    with_kernel = output_and_grads()
    monkeypatch.setattr(attention, "kernel_applies", lambda *args: False)
    without = output_and_grads()
    for a, b in zip(with_kernel, without):
        torch.testing.assert_close(a, b, **({} if dtype == torch.float32 else dict(atol=3e-2, rtol=3e-2)))


@pytest.mark.parametrize("autocast", [False, True])
def test_linear_with_the_bias_fused_matches_nn_linear(autocast):
    from model.nn.layers import Linear, _fused_bias_linear_available

    torch.manual_seed(0)
    ours, reference = Linear(24, 40), torch.nn.Linear(24, 40)
    reference.load_state_dict(ours.state_dict())
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
    if _fused_bias_linear_available():  # the fused path ran: its own autograd node
        assert type(ours(x).grad_fn).__name__ == "_FusedBiasLinearBackward"


@needs_kernels
@pytest.mark.parametrize("bias", [True, False])
def test_layernorm_to_bf16_matches_pytorch_under_autocast(bias):
    from model.nn.layers import LayerNorm

    torch.manual_seed(0)
    ours, reference = LayerNorm(48, bias=bias), torch.nn.LayerNorm(48, bias=bias)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
        if bias:
            ours.bias.uniform_(-1, 1)
    reference.load_state_dict(ours.state_dict())
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
        assert type(ours(x).grad_fn).__name__ == "_LayerNormToBf16Backward"
    assert torch.equal(ours(x), reference(x))  # without autocast: PyTorch's own
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-5, rtol=1e-5)  # dx: float32 throughout


@needs_kernels
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_kernel_benchmark_prints_every_row(dtype, capsys):
    from model.bench import kernels as bench

    assert bench.main(["--batch_size=2", "--block_size=16", "--n_embd=32", "--n_head=2", "--repeats=1",
                       f"--dtype={dtype}"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line for line in lines if line.rstrip().endswith("x")]
    assert len(rows) == (4 if dtype == "bfloat16" else 3)
    assert all(float(row.split()[-1].rstrip("x")) > 0 for row in rows)
