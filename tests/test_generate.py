"""KV-cached, batched and streamed sampling: exactness against recomputing, and the sampling controls."""

from __future__ import annotations

import pytest
import torch

from helpers import CHARS, peaky_gpt
from model.checkpoint import model_state, save_checkpoint
from model.cli import sample_main
from model.sampling.generate import StopAtString, generate, generate_text, left_pad, prepare_for_sampling, sample_next
from model.nn.gpt import GPT, positions
from model.data.tokenizer import CharTokenizer
from model.kernels import build



def greedy(model: GPT, prompts, n: int, use_cache: bool = True) -> list[list[int]]:
    steps = list(generate(model, prompts, n, temperature=0.0, use_cache=use_cache))
    return torch.stack(steps, dim=1).tolist()


@pytest.mark.parametrize(
    "shape",
    [
        dict(n_layer=1, n_head=1, n_embd=16, block_size=8),
        dict(n_layer=2, n_head=2, n_embd=32, block_size=16),
        dict(n_layer=3, n_head=4, n_embd=32, block_size=12, tie_weights=False, mlp_ratio=2),
        dict(n_layer=2, n_head=2, n_embd=32, block_size=10, pos_embedding="rope", norm="rmsnorm", qk_norm=True,
             activation="relu2", bias=False),
    ],
)
@pytest.mark.parametrize("prompt_len", [1, 5, 30])  # 30 is longer than every block_size here
def test_greedy_with_cache_equals_without(shape, prompt_len):
    model = peaky_gpt(**shape)
    prompt = torch.randint(0, len(CHARS), (1, prompt_len), generator=torch.Generator().manual_seed(prompt_len))
    n = 2 * shape["block_size"] + 3  # runs well past block_size, where the context slides
    with_cache = greedy(model, prompt, n)
    assert with_cache == greedy(model, prompt, n, use_cache=False)
    assert len(set(with_cache[0])) > 1  # the model doesn't just repeat one token


def test_cached_logits_match_full_forward():
    model = peaky_gpt()
    idx = torch.randint(0, len(CHARS), (2, 12))
    caches = model.make_caches()
    with torch.no_grad():
        model.next_logits(idx[:, :5], caches=caches)
        for t in range(5, 12):
            cached = model.next_logits(idx[:, t : t + 1], caches=caches)
            full, _ = model(idx[:, : t + 1])
            torch.testing.assert_close(cached, full[:, -1], rtol=1e-5, atol=1e-5)
    assert caches[0].length == 12


@pytest.mark.parametrize("pos_embedding", ["learned", "rope"])
def test_batch_of_different_lengths_equals_one_at_a_time(pos_embedding):
    model = peaky_gpt(block_size=16, pos_embedding=pos_embedding)
    prompts = [[3], [5, 8, 13, 21, 34, 2, 1], list(range(20, 45))]  # the last is longer than block_size
    batched = greedy(model, prompts, 24)
    alone = [greedy(model, [p], 24)[0] for p in prompts]
    assert batched == alone
    assert greedy(model, prompts, 24, use_cache=False) == alone


def test_left_padding_positions_and_no_nan():
    ids, pad = left_pad([[7, 8, 9], [4]])
    assert ids.tolist() == [[7, 8, 9], [0, 0, 4]]
    assert pad.tolist() == [[False, False, False], [True, True, False]]
    assert positions(0, 3, pad, ids.device).tolist() == [[0, 1, 2], [0, 0, 0]]
    assert positions(3, 1, torch.cat([pad, torch.zeros(2, 1, dtype=torch.bool)], 1), ids.device).tolist() == [[3], [1]]
    model = peaky_gpt()
    with torch.no_grad():
        logits, _ = model(ids, key_padding_mask=pad)
    assert torch.isfinite(logits).all()  # padding queries see themselves, so no NaN leaks


def test_sample_next_controls():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert sample_next(logits, temperature=0).tolist() == [0]
    g = torch.Generator().manual_seed(0)
    top2 = {sample_next(logits, 1.0, top_k=2, generator=g).item() for _ in range(300)}
    assert top2 == {0, 1}
    nucleus = {sample_next(logits, 1.0, top_p=0.8, generator=g).item() for _ in range(300)}
    assert nucleus == {0, 1}  # 0.5 + 0.3 reaches 0.8: tokens 2 and 3 are outside the nucleus
    everything = {sample_next(logits, 1.0, generator=g).item() for _ in range(300)}
    assert everything == {0, 1, 2, 3}


def test_stop_string_held_back_across_pieces():
    s = StopAtString(["END", "\n\n"])
    out = [s.push("ab"), s.push("cE"), s.push("N"), s.push("xy E"), s.push("ND tail"), s.push("more")]
    assert out == ["ab", "c", "", "ENxy ", "", ""]
    assert s.stopped and s.flush() == ""
    s = StopAtString(["END"])
    assert s.push("xEN") == "x" and s.flush() == "EN"  # never completed: the held-back text comes out


def test_generate_text_stops_at_first_stop_string_and_is_reproducible():
    model = peaky_gpt()
    tok = CharTokenizer(CHARS)
    prompt = [tok.encode("To be")]

    def text(**kw) -> str:
        return "".join(piece for _, piece in generate_text(model, tok, prompt, 40, **kw))

    full = text(temperature=0.0)
    stop = full[10:12]
    assert text(temperature=0.0, stop=[stop]) == full[: full.index(stop)]
    assert text(temperature=1.0, seed=7) == text(temperature=1.0, seed=7)
    assert len({text(temperature=1.0, seed=s) for s in range(4)}) > 1


@pytest.mark.parametrize("c_decode", [pytest.param(True, marks=pytest.mark.needs_kernels), False])
def test_prepare_for_sampling_keeps_outputs(c_decode):
    model = peaky_gpt()
    idx = torch.randint(0, len(CHARS), (2, 10))
    with torch.no_grad():
        before, _ = model(idx)
        prepare_for_sampling(model, c_decode=c_decode)
        after, _ = model(idx)
    in_c = c_decode and build.replaces_threaded_ops()
    assert model.lm_head.weight.is_contiguous() == in_c  # row-major for the kernels, else column-major
    assert model.lm_head.weight is model.transformer.wte.weight
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


@pytest.fixture
def char_checkpoint(tmp_path):
    model = peaky_gpt()
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model_state(model, model.config, CharTokenizer(CHARS).to_meta()))
    return path, model


def test_sample_cli_streams_greedy_text_with_stop(char_checkpoint, capsys):
    path, model = char_checkpoint
    tok = CharTokenizer(CHARS)
    full = "".join(p for _, p in generate_text(model, tok, [tok.encode("Ab")], 30, temperature=0.0))
    stop = full[8:10]
    args = [f"--checkpoint={path}", "--start=Ab", "--num_samples=1", "--max_new_tokens=30", "--temperature=0"]
    assert sample_main(args + [f"--stop={stop}"]) == 0
    assert capsys.readouterr().out == "Ab" + full[: full.index(stop)] + "\n---------------\n"


@pytest.mark.parametrize("flag", ["--c_decode=False", "--compile=False"])
def test_sample_cli_c_decode_switch_and_its_deprecated_name(char_checkpoint, capsys, monkeypatch, flag):
    from model.sampling import generate as sampling

    prepared = []
    real = sampling.prepare_for_sampling
    monkeypatch.setattr(sampling, "prepare_for_sampling", lambda *a, **kw: prepared.append(kw) or real(*a, **kw))
    path, _ = char_checkpoint
    assert sample_main([f"--checkpoint={path}", "--num_samples=1", "--max_new_tokens=3", flag]) == 0
    assert prepared == [dict(c_decode=False)]
    err = capsys.readouterr().err
    assert err == ("" if flag.startswith("--c_decode") else
                   "warning: sample.py --compile is deprecated and will be removed; use --c_decode\n")


def test_sample_cli_batch_and_prompt_file(char_checkpoint, tmp_path, capsys):
    path, _ = char_checkpoint
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text("ROMEO:", encoding="utf-8")
    assert sample_main([f"--checkpoint={path}", f"--start=FILE:{prompt_file}", "--num_samples=3",
                        "--max_new_tokens=20", "--seed=3"]) == 0
    samples = capsys.readouterr().out.split("\n---------------\n")
    assert len(samples) == 4 and samples[-1] == ""
    assert all(s.startswith("ROMEO:") and len(s) == len("ROMEO:") + 20 for s in samples[:3])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--temperature=-1"], "--temperature"),
        (["--top_p=1.5"], "--top_p"),
        (["--init_from=./no/such/folder"], "no/such/folder"),
        (["--start=FILE:/no/such/prompt.txt"], "prompt file not found"),
    ],
)
def test_sample_cli_bad_input_is_one_line(char_checkpoint, capsys, args, message):
    path, _ = char_checkpoint
    assert sample_main([f"--checkpoint={path}", "--max_new_tokens=2"] + args) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and err.count("\n") == 1


@pytest.mark.needs_kernels
def test_rowdot_decoding_matches_and_keeps_parameters():
    from model.kernels.decode import ROWDOT_MAX_ROWS, RowDotLinear, use_rowdot

    model = peaky_gpt(block_size=16)
    prompts = [[3, 1, 4], [1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 2, 3, 8, 4]]  # the second is past block_size
    expected = [greedy(model, [p], 20)[0] for p in prompts]
    names = set(model.state_dict())
    assert use_rowdot(model)
    assert isinstance(model.lm_head, RowDotLinear) and isinstance(model.transformer.h[0].mlp.c_fc, RowDotLinear)
    assert model.lm_head.weight is model.transformer.wte.weight and set(model.state_dict()) == names
    assert [greedy(model, [p], 20)[0] for p in prompts] == expected
    assert greedy(model, prompts, 20) == expected  # a batch of rows
    layer = model.transformer.h[0].attn.c_attn
    for shape in [(1, 1, 32), (3, 1, 32), (2, ROWDOT_MAX_ROWS + 1, 32)]:  # the last one takes F.linear
        x = torch.randn(shape)
        torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (67, 100), (5, 1000)])
@pytest.mark.parametrize("rows", [1, 2, 5, 8, 11])
@pytest.mark.parametrize("bias", [True, False])
def test_rowdot_kernel_equals_float32_product(dtype, shape, rows, bias):
    from model.kernels.build import library
    from model.kernels.decode import rowdot

    out, inp = shape
    weight = torch.randn(out, inp).to(dtype)
    b = torch.randn(out).to(dtype) if bias else None
    x = torch.randn(rows, inp)
    expected = torch.nn.functional.linear(x.double(), weight.double(), None if b is None else b.double())
    y = rowdot(weight, x, b, library())
    assert y.dtype == torch.float32 and y.shape == (rows, out)
    torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-5 * inp**0.5)


def test_sampling_without_row_dot_kernels_uses_column_major_weights(monkeypatch):
    monkeypatch.setenv("TINYGPT_KERNELS", "0")
    model = peaky_gpt(block_size=16)
    expected = greedy(model, [[3, 1, 4]], 10)
    prepare_for_sampling(model)
    assert type(model.lm_head) is torch.nn.Linear and not model.lm_head.weight.is_contiguous()
    assert greedy(model, [[3, 1, 4]], 10) == expected


FAST_SHAPES = [
    dict(n_layer=1, n_head=1, n_embd=16, block_size=8),
    dict(n_layer=2, n_head=4, n_embd=32, block_size=12, tie_weights=False, mlp_ratio=2, bias=False),
    dict(n_layer=2, n_head=2, n_embd=32, block_size=10, pos_embedding="rope", norm="rmsnorm", qk_norm=True,
         activation="relu2", bias=False),
]


@pytest.mark.needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", FAST_SHAPES)
def test_c_decode_step_matches_pytorch_step(shape, dtype):
    import copy

    reference = peaky_gpt(**shape)
    with torch.no_grad():
        for p in reference.parameters():  # norms and biases away from 1 and 0, so each one counts
            if p.dim() == 1:
                p.normal_(std=0.5)
    model = prepare_for_sampling(copy.deepcopy(reference), dtype)
    reference.to(dtype)
    assert model.fast_decoder is not None  # the kernels are built here: the C step must be in use
    prompt = torch.randint(0, len(CHARS), (1, 3), generator=torch.Generator().manual_seed(1))
    ours, theirs = model.make_caches(), reference.make_caches()
    tolerance = 1e-4 if dtype == torch.float32 else 0.1  # bf16: PyTorch rounds every intermediate
    with torch.inference_mode():
        model.next_logits(prompt, None, ours), reference.next_logits(prompt, None, theirs)
        for token in torch.randint(0, len(CHARS), (shape["block_size"] - 3,)).tolist():
            assert model.fast_decoder.usable(ours)
            got = model.fast_decoder.step(token, ours)
            expected = reference.next_logits(torch.tensor([[token]]), None, theirs).float()
            scale = expected.abs().max().item()
            torch.testing.assert_close(got, expected, rtol=0, atol=tolerance * scale)
        assert ours[0].length == theirs[0].length == shape["block_size"]
        assert not model.fast_decoder.usable(ours)  # full: generate re-prefills through PyTorch


@pytest.mark.needs_kernels
@pytest.mark.parametrize("shape", FAST_SHAPES)
def test_generate_through_c_decode_step_equals_no_cache(shape, monkeypatch):
    from model.kernels.decode import FastDecoder

    model = peaky_gpt(**shape)
    prompt = [[3, 1, 4]]
    expected = greedy(model, prompt, 2 * shape["block_size"] + 3, use_cache=False)  # past block_size too
    prepare_for_sampling(model)
    steps = []
    real_step = FastDecoder.step
    monkeypatch.setattr(FastDecoder, "step", lambda self, *a: steps.append(1) or real_step(self, *a))
    assert greedy(model, prompt, len(expected[0])) == expected
    assert len(steps) >= shape["block_size"] - 3  # up to the first slide, every token came from C
    steps.clear()
    two_rows = [[3, 1, 4], [1, 5]]
    assert greedy(model, two_rows, 5) == [greedy(model, [p], 5, use_cache=False)[0] for p in two_rows]
    assert steps == []  # a batch (and decoding without a cache) stays on the PyTorch path


@pytest.mark.needs_kernels
def test_c_decode_step_is_dropped_when_the_model_changes():
    model = prepare_for_sampling(peaky_gpt())
    assert model.fast_decoder.matches(model)
    model.to(torch.float64)  # new tensors: the C side's addresses are stale
    assert not model.fast_decoder.matches(model)
    expected = greedy(peaky_gpt().to(torch.float64), [[3, 1, 4]], 8, use_cache=False)
    assert greedy(model, [[3, 1, 4]], 8) == expected


def test_c_decode_step_refuses_what_it_does_not_implement(monkeypatch):
    import dataclasses

    from model.config import GPTConfig
    from model.errors import TinyGPTError
    from model.kernels import decode
    from model.kernels.decode import FastDecoder

    assert FastDecoder.refusal(peaky_gpt(pos_embedding="rope", norm="rmsnorm", activation="relu2", qk_norm=True,
                                         bias=False, tie_weights=False, mlp_ratio=2)) is None
    assert FastDecoder.refusal(peaky_gpt().half()) == "torch.float16 weights"
    with pytest.raises(TinyGPTError, match="does not implement torch.float16 weights"):
        FastDecoder.attach(peaky_gpt().half(), None)
    # an option value, or a whole option, that GPTConfig may gain and decode.c doesn't know
    monkeypatch.setitem(decode.IMPLEMENTED, "norm", ("layernorm",))
    assert FastDecoder.refusal(peaky_gpt(norm="rmsnorm")) == "norm='rmsnorm'"

    @dataclasses.dataclass
    class ConfigWithAnotherOption(GPTConfig):
        parallel_residual: bool = False

    model = peaky_gpt()
    model.config = ConfigWithAnotherOption(**dataclasses.asdict(model.config))
    assert FastDecoder.refusal(model) == "the architecture option parallel_residual"


@pytest.mark.needs_kernels
def test_sampling_a_model_the_c_step_refuses_says_so_in_one_line_and_decodes_in_pytorch(monkeypatch, capsys):
    from model.kernels import decode

    monkeypatch.setitem(decode.IMPLEMENTED, "activation", ("gelu",))
    expected = greedy(peaky_gpt(activation="relu2"), [[3, 1, 4]], 8, use_cache=False)
    model = prepare_for_sampling(peaky_gpt(activation="relu2"))
    err = capsys.readouterr().err
    assert err == "note: the C decoder (model/kernels/decode.c) does not implement activation='relu2'; decoding in PyTorch\n"
    assert getattr(model, "fast_decoder", None) is None
    assert greedy(model, [[3, 1, 4]], 8) == expected


@pytest.mark.needs_kernels
def test_a_prepared_model_copies_and_pickles():
    import copy
    import io

    model = prepare_for_sampling(peaky_gpt())
    expected = greedy(model, [[3, 1, 4]], 12)
    duplicate = copy.deepcopy(model)
    assert duplicate.fast_decoder is None  # its weights live elsewhere: no stale addresses
    assert greedy(duplicate, [[3, 1, 4]], 12) == expected
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)  # our own object, in memory
    assert loaded.fast_decoder is None and greedy(loaded, [[3, 1, 4]], 12) == expected
    assert greedy(prepare_for_sampling(duplicate), [[3, 1, 4]], 12) == expected
