"""Property tests (hypothesis): the override parser and both tokenizers' encode/decode round trips."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model.config import ONE_DASH_FLAG, ConfigError, GPTConfig, TrainConfig, coerce, load_config, parse_overrides, valid_keys
from model.errors import TinyGPTError
from model.data.tokenizer import CharTokenizer, StreamDecoder, TiktokenTokenizer, from_meta

settings.register_profile("tinygpt", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("tinygpt")

KEYS = sorted(valid_keys())
identifiers = st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True)


# -- the override parser --------------------------------------------------------------------------
@given(st.dictionaries(identifiers, st.text(), max_size=5))
def test_any_key_value_pairs_parse_back(pairs):
    args = [f"--{key}={value}" for key, value in pairs.items()]
    assert parse_overrides(args) == pairs


@given(st.text().filter(lambda a: (not a.startswith("--") or "=" not in a) and not ONE_DASH_FLAG.fullmatch(a)))
def test_anything_not_shaped_like_a_flag_is_a_config_error(arg):
    """(A flag with one dash, '-max_iters=5', gets its own message: tests/test_cli_messages.py.)"""
    with pytest.raises(ConfigError, match="expected --key=value"):
        parse_overrides([arg])


@given(st.integers(min_value=-(10**30), max_value=10**30))
def test_ints_round_trip_through_text(n):
    assert coerce("n", str(n), int) == n
    assert coerce("n", f"{n:_}", int) == n  # 1_000_000 is allowed, as in Python and TOML


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_floats_round_trip_through_text(x):
    assert coerce("x", repr(x), float) == x
    assert coerce("x", x, float) == x


@given(st.sampled_from(["nan", "inf", "-inf", "NaN", "Infinity"]), st.sampled_from(["learning_rate", "dropout", "grad_clip"]))
def test_non_finite_floats_are_refused(text, key):
    with pytest.raises(ConfigError, match="finite"):
        load_config(None, [f"--{key}={text}"])


@given(st.booleans(), st.sampled_from([str, str.lower, str.upper]))
def test_bools_round_trip_through_text(b, case):
    assert coerce("b", case(str(b)), bool) is b


@given(st.sampled_from(KEYS), st.text())
def test_any_value_for_any_key_gives_a_config_or_a_config_error(key, value):
    """Never another exception (which would reach the user as a traceback), never a NaN setting."""
    try:
        model_config, train_config = load_config(None, [f"--{key}={value}"])
    except ConfigError:
        return
    assert isinstance(model_config, GPTConfig) and isinstance(train_config, TrainConfig)
    for v in (*vars(model_config).values(), *vars(train_config).values()):
        assert not (isinstance(v, float) and not math.isfinite(v))


@given(st.integers(min_value=1, max_value=10**6), st.floats(min_value=0.0, max_value=0.999, allow_nan=False),
       st.booleans())
def test_typed_overrides_land_in_the_config(n_layer, dropout, compile_):
    model_config, train_config = load_config(None, [f"--n_layer={n_layer}", f"--dropout={dropout!r}",
                                                    f"--compile={compile_}"])
    assert (model_config.n_layer, model_config.dropout, train_config.compile) == (n_layer, dropout, compile_)


# -- tokenizers -----------------------------------------------------------------------------------
@given(st.text(min_size=1), st.data())
def test_char_tokenizer_round_trips_any_text_of_its_alphabet(corpus, data):
    tok = CharTokenizer.from_text(corpus)
    text = data.draw(st.text(alphabet=sorted(set(corpus))))
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text
    assert from_meta(tok.to_meta()).encode(text) == ids


@given(st.text(min_size=1), st.text(min_size=1))
def test_char_tokenizer_refuses_characters_it_has_never_seen(corpus, extra):
    tok = CharTokenizer.from_text(corpus)
    if set(extra) <= set(corpus):
        assert tok.decode(tok.encode(extra)) == extra
    else:
        with pytest.raises(TinyGPTError, match="outside this character-level vocabulary"):
            tok.encode(extra)


@pytest.fixture(scope="module")
def gpt2() -> TiktokenTokenizer:
    try:
        return TiktokenTokenizer("gpt2")
    except TinyGPTError as e:  # no tiktoken cache on this machine
        pytest.skip(str(e))


@pytest.mark.needs_gpt2
@given(text=st.text())
def test_gpt2_round_trips_any_text(gpt2, text):
    ids = gpt2.encode(text)
    assert all(0 <= i < gpt2.vocab_size for i in ids)
    assert gpt2.decode(ids) == text


@pytest.mark.needs_gpt2
@given(text=st.text(), data=st.data())
def test_gpt2_streamed_in_any_chunks_gives_the_same_text(gpt2, text, data):
    """Tokens can split a multi-byte character; streaming must hold the bytes back, never garble them."""
    ids = gpt2.encode(text)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(ids)), max_size=8)))
    stream = StreamDecoder(gpt2)
    pieces = [stream.push(ids[a:b]) for a, b in zip([0, *cuts], [*cuts, len(ids)])]
    assert "".join(pieces) + stream.flush() == text
