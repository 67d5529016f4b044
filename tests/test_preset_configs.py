"""Every preset in configs/ loads, reports, and (when its shape allows) builds."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from model import GPT
from model.config import load_config
from model.errors import ConfigError
from model.nn.report import Report

PRESETS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.toml"))
CHAR_VOCAB = 65
"""Stands in for the vocabulary of presets that take it from their dataset (Tiny Shakespeare characters)."""


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_preset_loads_reports_and_builds_on_meta(path):
    model_config, _ = load_config(path)
    if model_config.vocab_size is None:
        model_config = dataclasses.replace(model_config, vocab_size=CHAR_VOCAB)
    report = Report(model_config, path.stem)
    assert path.stem in report.format()
    if model_config.n_embd % model_config.n_head:
        with pytest.raises(ConfigError):
            GPT(model_config)
        return
    with torch.device("meta"):  # shapes only: even gpt3-175b costs no memory
        model = GPT(model_config)
    assert model.num_params() == report.total


def test_there_are_gpt2_gpt3_and_cpu_presets():
    names = {p.stem for p in PRESETS}
    expected = {"gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "cpu-recipe", "baby"}
    expected |= {f"gpt3-{s}" for s in ("small", "medium", "large", "xl", "2.7b", "6.7b", "13b", "175b")}
    assert expected <= names


@pytest.mark.parametrize("name, shape", [("cpu-recipe", (4, 4, 128, 64)), ("baby", (6, 6, 384, 256))])
def test_cpu_presets_have_nanogpts_sizes(name, shape):
    config, _ = load_config(PRESETS[0].parent / f"{name}.toml")
    assert (config.n_layer, config.n_head, config.n_embd, config.block_size) == shape


def test_a_preset_scales_in_one_override():
    path = PRESETS[0].parent / "baby.toml"
    small = Report(load_config(path, ["--vocab_size=65"])[0])
    deeper = Report(load_config(path, ["--vocab_size=65", "--n_layer=12"])[0])
    assert deeper.total - small.total == 6 * sum(c.total for c in small.block)
