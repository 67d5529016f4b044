import pytest
import torch
import torch.nn as nn

from model.nn.attention import MultiHeadAttention

E, H = 32, 4


def pair(bias: bool = True):
    """Our module and torch's, holding the same weights."""
    torch.manual_seed(0)
    ours = MultiHeadAttention(E, H, bias=bias).eval()
    ref = nn.MultiheadAttention(E, H, bias=bias, batch_first=True).eval()
    with torch.no_grad():
        ref.in_proj_weight.copy_(ours.c_attn.weight)
        ref.out_proj.weight.copy_(ours.c_proj.weight)
        if bias:
            ref.in_proj_bias.copy_(ours.c_attn.bias)
            ref.out_proj.bias.copy_(ours.c_proj.bias)
    return ours, ref


def causal_mask_for_torch(T: int) -> torch.Tensor:
    return torch.ones(T, T, dtype=torch.bool).triu(1)  # True = not allowed, torch's convention


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("need_weights", [False, True])
def test_self_attention_matches_torch_multihead_attention(bias, need_weights):
    ours, ref = pair(bias)
    x = torch.randn(3, 10, E)
    expected, _ = ref(x, x, x, attn_mask=causal_mask_for_torch(10), need_weights=False)
    got = ours(x, weights_out=[] if need_weights else None)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("need_weights", [False, True])
def test_cross_attention_matches_torch(need_weights):
    ours, ref = pair()
    x, context = torch.randn(2, 5, E), torch.randn(2, 9, E)
    expected, expected_att = ref(x, context, context, need_weights=True, average_attn_weights=False)
    weights = [] if need_weights else None
    got = ours(x, context=context, weights_out=weights)
    if need_weights:
        (att,) = weights
        torch.testing.assert_close(att, expected_att, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("need_weights", [False, True])
def test_key_padding_mask_matches_torch(causal, need_weights):
    ours, ref = pair()
    x = torch.randn(2, 6, E)
    pad = torch.zeros(2, 6, dtype=torch.bool)
    pad[0, 4:] = True  # right padding: every query still has an unmasked key
    pad[1, 5] = True
    expected, _ = ref(x, x, x, key_padding_mask=pad, attn_mask=causal_mask_for_torch(6) if causal else None,
                      need_weights=False)
    got = ours(x, key_padding_mask=pad, causal=causal, weights_out=[] if need_weights else None)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_explicit_and_fused_paths_agree_and_pattern_is_causal():
    ours, _ = pair()
    x = torch.randn(2, 12, E)
    fused = ours(x)
    weights = []
    explicit = ours(x, weights_out=weights)
    (att,) = weights
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)
    assert att.shape == (2, H, 12, 12)
    torch.testing.assert_close(att.sum(-1), torch.ones(2, H, 12))
    above = torch.ones(12, 12, dtype=torch.bool).triu(1)
    assert (att[..., above] == 0).all()
    assert (att[..., ~above] > 0).all()


def test_queries_later_than_keys_see_the_right_prefix():
    """With S > T keys (as when earlier tokens are cached), query i sits at position S - T + i."""
    ours, _ = pair()
    x = torch.randn(1, 8, E)
    full = ours(x)
    q, k, v = ours.project_qkv(x)
    y = ours.attend(q[:, :, -3:], k, v, None, causal=True)
    y = ours.c_proj(y.transpose(1, 2).reshape(1, 3, E))
    torch.testing.assert_close(y, full[:, -3:], atol=1e-5, rtol=1e-5)


def test_rejects_width_not_divisible_by_heads():
    with pytest.raises(ValueError, match="not divisible"):
        MultiHeadAttention(30, 4)


@pytest.mark.needs_kernels
def test_bf16_training_with_the_kernels_takes_the_explicit_path_and_matches_the_fused_kernel(monkeypatch):
    import copy

    from model.fused import KernelAttention, apply_kernels
    from model.kernels import ops

    torch.manual_seed(0)
    q = torch.zeros(1, 1, 16, 8, dtype=torch.bfloat16, requires_grad=True)
    assert ops.explicit_is_faster(q, 16, 0.0) and ops.explicit_is_faster(q, 512, 0.1)
    assert not ops.explicit_is_faster(q, 512, 0.0) and not ops.explicit_is_faster(q.float(), 16, 0.0)
    assert not ops.explicit_is_faster(q.detach(), 16, 0.0)  # inference keeps the fused kernel
    plain = MultiHeadAttention(32, 4).bfloat16()
    fused = apply_kernels(copy.deepcopy(plain))
    assert type(fused) is KernelAttention
    x = torch.randn(3, 16, 32, dtype=torch.bfloat16, requires_grad=True)

    def output_and_grad(mha):
        x.grad = None
        y = mha(x)
        y.float().square().sum().backward()
        return y, x.grad.float()

    calls = []
    real_probs = ops.attention_probs
    monkeypatch.setattr(ops, "attention_probs", lambda *args, **kwargs: calls.append(1) or real_probs(*args, **kwargs))
    explicit = output_and_grad(fused)
    assert calls == [1]  # scale, mask, softmax and dropout in the C kernel
    sdpa = output_and_grad(plain)
    assert calls == [1]  # the plain module: PyTorch's fused kernel
    for a, b in zip(explicit, sdpa):
        torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-2)
