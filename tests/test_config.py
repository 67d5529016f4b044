import argparse
import dataclasses

import pytest

from model.config import (DTYPES, GPTConfig, TrainConfig, describe_keys, from_dict, load_config, parse_bool,
                          split_config_args, to_dict)
from model.errors import ConfigError

NANOGPT_KEYS = """batch_size block_size n_layer n_head n_embd dropout bias learning_rate max_iters weight_decay
beta1 beta2 grad_clip decay_lr warmup_iters lr_decay_iters min_lr eval_interval log_interval eval_iters eval_only
always_save_checkpoint init_from out_dir wandb_log wandb_project wandb_run_name dataset
gradient_accumulation_steps device dtype compile seed""".split()

NANOGPT_CPU_FLAGS = (
    "--device=cpu --compile=False --eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12 "
    "--n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0"
).split()


def test_every_nanogpt_key_exists():
    model_config, train_config = load_config()
    merged = to_dict(model_config, train_config)
    assert set(NANOGPT_KEYS) <= set(merged)


def test_nanogpt_cpu_flags_apply_on_top_of_the_shakespeare_config():
    model_config, train_config = load_config("configs/shakespeare_char.toml", NANOGPT_CPU_FLAGS)
    assert (model_config.n_layer, model_config.n_head, model_config.n_embd, model_config.block_size) == (4, 4, 128, 64)
    assert model_config.dropout == 0.0
    assert train_config.compile is False and train_config.device == "cpu"
    assert train_config.eval_iters == 20 and train_config.max_iters == 2000
    # keys the flags don't touch come from the file
    assert train_config.out_dir == "out-shakespeare-char" and train_config.eval_interval == 250


def test_file_values_override_defaults(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('n_layer = 3\nlearning_rate = 3e-4\ndataset = "x"\nbias = false\n')
    model_config, train_config = load_config(path)
    assert model_config.n_layer == 3 and model_config.bias is False
    assert train_config.learning_rate == 3e-4 and train_config.dataset == "x"
    assert train_config.batch_size == TrainConfig().batch_size


def test_int_is_accepted_for_float_and_none_for_optional():
    model_config, train_config = load_config(None, ["--learning_rate=1", "--vocab_size=None"])
    assert train_config.learning_rate == 1.0 and isinstance(train_config.learning_rate, float)
    assert model_config.vocab_size is None


@pytest.mark.parametrize(
    "args, message",
    [
        (["--lerning_rate=1e-3"], "unknown config key 'lerning_rate' (did you mean 'learning_rate'?)"),
        (["--max_iters=abc"], "config key 'max_iters' expects int, got 'abc'"),
        (["--compile=maybe"], "config key 'compile' expects bool"),
        (["--n_layer=1.5"], "config key 'n_layer' expects int"),
        (["--n_layer=0"], "n_layer must be a positive integer"),
        (["--dropout=1.5"], "dropout must be in [0, 1)"),
        (["--dtype=float8"], "dtype must be one of"),
        (["--device=tpu"], "device must be one of"),
        (["max_iters=3"], "expected --key=value"),
    ],
)
def test_bad_overrides_fail_with_one_clear_message(args, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, args)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_key_message_lists_valid_keys():
    with pytest.raises(ConfigError, match="valid keys: n_layer, n_head"):
        load_config(None, ["--nonsense=1"])


def test_wrong_type_in_toml(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('max_iters = "many"\n')
    with pytest.raises(ConfigError, match="config key 'max_iters' expects int, got 'many'"):
        load_config(path)


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("n_layer = = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_head_divisibility_is_checked_when_building():
    config = GPTConfig(n_embd=100, n_head=3, vocab_size=10)  # a report can still describe it
    with pytest.raises(ConfigError, match="n_embd=100 is not divisible by n_head=3"):
        config.check_buildable()


def test_dict_round_trip():
    model_config, train_config = load_config(None, ["--n_layer=7", "--seed=3"])
    assert from_dict(to_dict(model_config, train_config)) == (model_config, train_config)


def test_the_given_keys_survive_replace_and_are_neither_saved_nor_a_key(capsys):
    model_config, train_config = load_config(None, ["--n_layer=7", "--seed=3", "--dropout=0.1"])
    assert model_config.given == {"n_layer", "dropout"} and train_config.given == {"seed"}
    assert dataclasses.replace(model_config, vocab_size=65).given == {"n_layer", "dropout"}
    assert dataclasses.replace(train_config, learning_rate=0.5).given == {"seed"}
    assert GPTConfig().given is None  # built in code: nothing recorded
    assert "given" not in to_dict(model_config, train_config) and "given" not in describe_keys()
    assert model_config == GPTConfig(n_layer=7, dropout=0.1)  # what was given is no part of the value
    with pytest.raises(ConfigError, match="unknown config key 'given'"):
        load_config(None, ["--given=n_layer"])


def test_help_lists_every_key_with_its_docstring():
    text = describe_keys()
    for key in NANOGPT_KEYS:
        assert f"--{key}=" in text
    assert "Peak learning rate." in text


@pytest.mark.parametrize("args, switches, expected", [
    (["configs/x.toml", "--quiet", "--n_layer=2"], ("--quiet",), ("configs/x.toml", ["--n_layer=2"], {"--quiet"})),
    (["--n_layer=2", "--json"], ("--json",), (None, ["--n_layer=2"], {"--json"})),
    ([], (), (None, [], set())),
    (["configs/x.toml", "stray"], (), ("configs/x.toml", ["stray"], set())),
])
def test_split_config_args(args, switches, expected):
    assert split_config_args(args, switches) == expected


def test_one_boolean_parser_for_flags_and_config_values():
    for text, value in (("True", True), ("yes", True), ("1", True), ("FALSE", False), ("no", False), ("0", False)):
        assert parse_bool(text) is value
        assert load_config(None, [f"--compile={text}"])[1].compile is value
    with pytest.raises(argparse.ArgumentTypeError, match="expected True or False, got 'maybe'"):
        parse_bool("maybe")
    with pytest.raises(ConfigError, match="'compile' expects bool"):
        load_config(None, ["--compile=maybe"])


def test_one_table_of_dtypes_for_the_config_and_the_device():
    import torch

    from model.device import resolve_dtype

    for name in DTYPES:
        assert resolve_dtype(TrainConfig(dtype=name).dtype, "cpu") == getattr(torch, name)
    with pytest.raises(ConfigError, match="dtype must be one of auto, float32, bfloat16, float16; got 'float64'"):
        TrainConfig(dtype="float64")
