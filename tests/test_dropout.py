"""Dropout from the C hash kernel (ops.dropout): the right fraction, the right scale, the same mask
forward and backward, repeatable under torch.manual_seed, PyTorch's dropout wherever the kernel
doesn't apply or is switched off; and the residual dropout-add built on it."""

from __future__ import annotations

import pytest
import torch

from model.kernels.modules import HashDropout
from model.kernels.ops import dropout, dropout_add


@pytest.mark.parametrize("dtype", [torch.float32, pytest.param(torch.bfloat16, marks=pytest.mark.needs_kernels)])
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_drops_the_right_fraction_and_scales_the_rest(dtype, p):
    x = torch.rand(1000, 1000, dtype=torch.float32).add_(0.5).to(dtype)
    y = dropout(x, p)
    kept = y != 0
    assert abs(kept.float().mean().item() - (1 - p)) < 0.005  # 1M draws: the std is 0.0005
    expected = (x.float() * (1 / (1 - p))).to(dtype)  # each kept element scaled in float32, rounded once
    assert torch.equal(y[kept], expected[kept])


@pytest.mark.needs_kernels
def test_neighbours_are_dropped_independently():
    kept = (dropout(torch.ones(2_000_000), 0.5) != 0).float()
    for shift in (1, 2, 64, 1024):
        corr = torch.corrcoef(torch.stack([kept[:-shift], kept[shift:]]))[0, 1].item()
        assert abs(corr) < 0.005, shift


@pytest.mark.needs_kernels
def test_backward_uses_the_forward_mask():
    x = torch.randn(300, 77, requires_grad=True)
    y = dropout(x, 0.3)
    y.backward(torch.full_like(y, 2.0))
    assert torch.equal(x.grad, (y != 0).float() * 2.0 / 0.7)


@pytest.mark.needs_kernels
def test_manual_seed_repeats_the_mask_and_calls_differ():
    x = torch.ones(10_000)
    torch.manual_seed(3)
    a, b = dropout(x, 0.2), dropout(x, 0.2)
    torch.manual_seed(3)
    assert torch.equal(dropout(x, 0.2), a)
    assert not torch.equal(a, b)


def test_eval_and_edge_probabilities():
    x = torch.randn(50, 50)
    module = HashDropout(0.4).eval()
    assert module(x) is x and dropout(x, 0.0) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))


def test_without_the_kernels_it_is_pytorchs_dropout(monkeypatch):
    monkeypatch.setenv("TINYGPT_KERNELS", "0")
    x = torch.ones(10_000)
    torch.manual_seed(0)
    expected = torch.nn.functional.dropout(x, 0.25)
    torch.manual_seed(0)
    assert torch.equal(dropout(x, 0.25), expected)


@pytest.mark.parametrize("branch_dtype", [torch.float32, pytest.param(torch.bfloat16, marks=pytest.mark.needs_kernels)])
def test_dropout_add_is_the_stream_plus_the_dropped_branch(branch_dtype):
    x = torch.randn(64, 96, requires_grad=True)
    h = torch.randn(64, 96, requires_grad=True)
    grad = torch.randn(64, 96)
    torch.manual_seed(5)
    y = dropout_add(x, h.to(branch_dtype), 0.3)
    grad_x, grad_h = torch.autograd.grad(y, (x, h), grad)
    torch.manual_seed(5)  # the same seed draws the same mask as dropout()
    dropped = dropout(h.to(branch_dtype), 0.3)
    kept = dropped != 0
    assert y.dtype == torch.float32 and 0.6 < kept.float().mean().item() < 0.8
    # the branch is scaled in float32 and added without rounding it to bfloat16 first
    expected = x + torch.where(kept, h.to(branch_dtype).float() * (1 / 0.7), 0.0)
    torch.testing.assert_close(y, expected, rtol=1e-6, atol=1e-6)
    assert torch.equal(grad_x, grad)  # the stream's gradient passes through untouched
    expected_grad_h = torch.where(kept, grad * (1 / 0.7), 0.0).to(branch_dtype).float()  # rounded once
    assert torch.equal(grad_h, expected_grad_h)


def test_dropout_add_in_eval_or_without_the_kernels_is_x_plus_dropout(monkeypatch):
    x, h = torch.randn(40, 40), torch.randn(40, 40)
    assert torch.equal(dropout_add(x, h, 0.5, training=False), x + h)
    assert torch.equal(dropout_add(x, h, 0.0), x + h)
    monkeypatch.setenv("TINYGPT_KERNELS", "0")
    torch.manual_seed(0)
    expected = x + torch.nn.functional.dropout(h, 0.25)
    torch.manual_seed(0)
    assert torch.equal(dropout_add(x, h, 0.25), expected)

