import math

import pytest
import torch

from model import GPT
from model import GPTConfig
from model.errors import ConfigError
from model.nn.gpt import IGNORE_INDEX

from helpers import tiny_gpt




def test_logits_shape_and_loss_at_init_is_near_uniform():
    model = tiny_gpt()
    idx = torch.randint(50, (3, 16))
    logits, loss = model(idx, torch.randint(50, (3, 16)))
    assert logits.shape == (3, 16, 50)
    assert abs(loss.item() - math.log(50)) < 0.3


def test_causality_future_tokens_never_change_past_logits():
    model = tiny_gpt()
    idx = torch.randint(50, (2, 16))
    logits, _ = model(idx)
    for t in (0, 5, 14):
        changed = idx.clone()
        changed[:, t + 1 :] = torch.randint(50, changed[:, t + 1 :].shape)
        assert not torch.equal(changed, idx)
        other, _ = model(changed)
        torch.testing.assert_close(other[:, : t + 1], logits[:, : t + 1])
        assert not torch.allclose(other[:, t + 1 :], logits[:, t + 1 :])


def test_lm_head_is_tied_and_residual_projections_are_scaled():
    model = tiny_gpt(n_layer=8)
    assert model.lm_head.weight is model.transformer.wte.weight
    std = model.transformer.h[0].attn.c_proj.weight.std().item()
    assert abs(std - 0.02 / math.sqrt(16)) < 0.002
    assert abs(model.transformer.h[0].mlp.c_fc.weight.std().item() - 0.02) < 0.002


def test_untied_head_has_its_own_weights():
    model = tiny_gpt(tie_weights=False)
    assert model.lm_head.weight is not model.transformer.wte.weight
    assert model.num_params() == tiny_gpt().num_params() + 50 * 32


def test_ignore_index_targets_do_not_count():
    model = tiny_gpt()
    idx = torch.randint(50, (1, 16))
    targets = idx.clone()
    _, full = model(idx, targets)
    targets[:, 8:] = IGNORE_INDEX
    logits, partial = model(idx, targets)
    expected = torch.nn.functional.cross_entropy(logits[0, :8], idx[0, :8])
    torch.testing.assert_close(partial, expected)
    assert not torch.isclose(partial, full)


def test_attention_patterns_one_per_layer():
    model = tiny_gpt(n_layer=3)
    patterns = model.attention_patterns(torch.randint(50, (1, 10)))
    assert len(patterns) == 3 and patterns[0].shape == (1, 2, 10, 10)


def test_too_long_input_is_refused():
    with pytest.raises(ValueError, match="block_size"):
        tiny_gpt()(torch.zeros(1, 17, dtype=torch.long))


def test_bad_head_count_fails_clearly():
    with pytest.raises(ConfigError, match="not divisible by n_head"):
        GPT(GPTConfig(n_embd=32, n_head=5, vocab_size=10))


@pytest.mark.slow
def test_tiny_model_overfits_a_short_text():
    text = "To be, or not to be, that is the question. "
    chars = sorted(set(text))
    ids = torch.tensor([[chars.index(c) for c in text]])
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=64, vocab_size=len(chars))).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x, y = ids[:, :-1], ids[:, 1:]
    for _ in range(150):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05


@pytest.mark.parametrize("kernels", [False, pytest.param(True, marks=pytest.mark.needs_kernels)],
                         ids=["plain", "kernels"])
def test_training_block_drops_both_residual_branches_before_adding_them(kernels):
    from model.fused import KernelBlock, apply_kernels
    from model.kernels import ops

    model = apply_kernels(tiny_gpt(dropout=0.3)) if kernels else tiny_gpt(dropout=0.3)
    block = model.transformer.h[0].train()
    assert (type(block) is KernelBlock) == kernels  # x + dropout(h) in one C pass (ops.dropout_add)
    dropout = ops.dropout if kernels else torch.nn.functional.dropout
    x = torch.randn(2, 16, 32)
    torch.manual_seed(7)
    y = block(x)
    torch.manual_seed(7)  # the same draws, in the same order, by hand
    x1 = x + dropout(block.attn(block.ln_1(x)), 0.3)
    expected = x1 + dropout(block.mlp(block.ln_2(x1)), 0.3)
    torch.testing.assert_close(y, expected)
    torch.manual_seed(7)
    no_residual_dropout = x + block.attn(block.ln_1(x))
    assert not torch.allclose(x1, no_residual_dropout)
