"""MODEL names a model the same four ways in every command (model/sources.py): a training run folder,
a checkpoint file, a Hugging Face GPT-2 folder and a hub name. The four here hold one tiny model's
weights, so every command must give the same output for each; the hub is a stand-in that hands out
the local folder, so nothing is downloaded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import ROOT
from model import huggingface
from model.checkpoint import load_model
from model.cli import eval_main, hf_main, sample_main, serve_main, visualize_main
from model import sources
from model.errors import TinyGPTError
from model.sources import resolve_model
from serving_helpers import free_port, make_run


HUB_NAME = "someone/tiny-gpt"
KINDS = ["run", "checkpoint", "hf_folder", "hub"]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    """One tiny character-level model as each kind of MODEL."""
    root = tmp_path_factory.mktemp("models")
    run = make_run(root / "run")
    model, tok, _ = load_model(run)
    huggingface.save_pretrained(model, root / "exported", tok)
    return {"run": str(run), "checkpoint": str(run / "ckpt.pt"), "hf_folder": str(root / "exported"), "hub": HUB_NAME}


@pytest.fixture
def hub(models, monkeypatch):
    """The hub, as a download of HUB_NAME that is the exported folder; any other name is unknown."""
    def download(name: str) -> Path:
        if name != HUB_NAME:
            raise TinyGPTError(f"no {name} on this stand-in hub")
        return Path(models["hf_folder"])

    monkeypatch.setattr(sources, "download", download)


@pytest.fixture
def devices(monkeypatch) -> list[str]:
    """The --device values the commands ask for, in order."""
    import model.device

    asked, resolve = [], model.device.resolve_device
    monkeypatch.setattr(model.device, "resolve_device", lambda name="auto": asked.append(name) or resolve(name))
    return asked


def output_of(capsys, main, argv: list[str]) -> str:
    assert main(argv) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def test_the_resolver_tells_the_four_kinds_apart(models):
    assert {kind: resolve_model(name).kind for kind, name in models.items()} == {kind: kind for kind in KINDS}
    assert [resolve_model(name).name for name in models.values()] == ["run", "run", "exported", HUB_NAME]
    assert resolve_model("gpt2").kind == "hub" and resolve_model("openai-community/gpt2").kind == "hub"


@pytest.mark.parametrize("name, hub, message", [
    ("missing-run/ckpt.pt", True, "checkpoint not found: missing-run/ckpt.pt"),  # a checkpoint's name: no hub id
    ("./missing", True, "checkpoint not found"),  # a path, not a hub id
    ("gpt2", False, "checkpoint not found: gpt2"),  # --out_dir and --checkpoint never go to the hub
    ("empty", True, "no checkpoint in empty: it holds neither a checkpoint (best.pt, ckpt.pt) nor a Hugging Face model"),
    ("config-only", True, "no checkpoint in config-only"),  # a run's config.json before its first checkpoint
])
def test_the_resolver_refuses_what_is_no_model_in_one_line(tmp_path, monkeypatch, name, hub, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "config-only").mkdir()
    (tmp_path / "config-only" / "config.json").write_text("{}")
    with pytest.raises(TinyGPTError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve_model(name, hub)


def test_sample_takes_each_kind_and_nanogpts_flags(capsys, models, hub, devices):
    common = ["--start=ROMEO:", "--num_samples=1", "--max_new_tokens=24", "--temperature=0", "--quiet"]
    texts = {kind: output_of(capsys, sample_main, [name, *common]) for kind, name in models.items()}
    flagged = [output_of(capsys, sample_main, [flag, *common]) for flag in (
        f"--out_dir={models['run']}", f"--checkpoint={models['checkpoint']}", f"--init_from={models['hf_folder']}",
        f"--init_from={HUB_NAME}")]
    flagged.append(output_of(capsys, sample_main, ["--init_from=resume", f"--out_dir={models['run']}", *common]))
    assert texts["run"].startswith("ROMEO:") and len(texts["run"]) > len("ROMEO:") + 20
    assert list(texts.values()) == [texts["run"]] * 4 and flagged == [texts["run"]] * 5
    assert devices == ["auto"] * 9
    assert sample_main([models["run"], f"--out_dir={models['run']}"]) == 1
    assert "name the model once" in capsys.readouterr().err


def test_eval_takes_each_kind(capsys, models, hub, devices, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("ROMEO: But soft, what light through yonder window breaks?\n" * 3)
    scores = {kind: json.loads(output_of(capsys, eval_main, [name, f"--text={text}", "--json", "--quiet"]))
              for kind, name in models.items()}
    assert scores["run"]["tokens"] > 100
    assert list(scores.values()) == [scores["run"]] * 4
    assert devices == ["auto"] * 4


def test_visualize_takes_each_kind(capsys, models, hub, devices, tmp_path):
    weights = {}
    for kind, name in models.items():
        out = output_of(capsys, visualize_main, [name, "--start=ROMEO:", f"--out={tmp_path / kind}.png",
                                                 f"--save={tmp_path / kind}.npy"])
        assert "2 layer(s) x 2 head(s), 6 tokens" in out
        weights[kind] = np.load(tmp_path / f"{kind}.npy")
    for kind in KINDS:
        np.testing.assert_array_equal(weights[kind], weights["run"])
    assert output_of(capsys, visualize_main, [f"--checkpoint={models['checkpoint']}", f"--out={tmp_path / 'f'}.png",
                                              "--start=ROMEO:"]).startswith("wrote")
    assert devices == ["auto"] * 5


def test_export_takes_each_kind(capsys, models, hub, tmp_path):
    from safetensors.torch import load_file

    exported = {}
    for kind, name in models.items():
        output_of(capsys, hf_main, [name, str(tmp_path / kind)])
        exported[kind] = load_file(tmp_path / kind / "model.safetensors")
    for kind in KINDS:
        assert exported[kind].keys() == exported["run"].keys()
        for key, tensor in exported["run"].items():
            torch.testing.assert_close(exported[kind][key], tensor, rtol=0, atol=0)


def test_serve_takes_each_kind_and_several_at_once(capsys, models, hub, devices, monkeypatch):
    import uvicorn
    from fastapi.testclient import TestClient

    apps = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: apps.append(app))
    first, *others = models.values()
    assert serve_main([first, "--quiet", *others, f"--out_dir={models['run']}", f"--port={free_port()}"]) == 0
    assert devices == ["auto"]
    with TestClient(apps[0], base_url="http://127.0.0.1") as client:  # the loopback host names it answers to
        ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
        assert ids == ["run", "run-2", "exported", HUB_NAME, "run-3"]
        texts = {client.post("/v1/completions", json={"model": name, "prompt": "ROMEO:", "max_tokens": 16,
                                                      "temperature": 0}).json()["choices"][0]["text"] for name in ids}
    assert len(texts) == 1 and len(texts.pop()) == 16  # the same weights, whichever way they were named


def test_train_init_from_takes_a_run_folder_and_a_checkpoint_file(trained_once, tmp_path):
    from helpers import flags, tiny_overrides
    from model.cli import train_main

    start, _, _ = load_model(trained_once)
    for name in (trained_once, trained_once / "ckpt.pt"):
        out = tmp_path / Path(name).name
        values = tiny_overrides(trained_once.parent / "data", out, init_from=name, max_iters=0, eval_iters=1)
        assert train_main(flags(values) + ["--quiet"]) == 0
        finetuned, _, _ = load_model(out / "ckpt.pt")
        for (key, ours), theirs in zip(finetuned.state_dict().items(), start.state_dict().values()):
            torch.testing.assert_close(ours, theirs, rtol=0, atol=0, msg=key)


def test_auto_precision_is_the_checkpoints_own(models, tmp_path, monkeypatch):
    """'auto' keeps the precision the checkpoint stores (float32 for GPT-2's and tinygpt's, also on a
    CPU where training's auto picks bfloat16); a checkpoint stored in bfloat16 runs in bfloat16."""
    import model.device
    from model.checkpoint import save_checkpoint
    from model.device import resolve_inference_dtype
    from model.sources import load_any_model

    monkeypatch.setattr(model.device, "cpu_has_native_bf16", lambda cpuinfo=None: True)
    for name in (models["run"], models["hf_folder"]):
        loaded, _ = load_any_model(name)
        assert resolve_inference_dtype("auto", loaded) == torch.float32
        assert resolve_inference_dtype("bfloat16", loaded) == torch.bfloat16
    ckpt = torch.load(Path(models["checkpoint"]), weights_only=True)
    ckpt["model"] = {key: value.to(torch.bfloat16) for key, value in ckpt["model"].items()}
    save_checkpoint(tmp_path / "bf16.pt", ckpt)
    loaded, _ = load_any_model(tmp_path / "bf16.pt")
    assert resolve_inference_dtype("auto", loaded) == torch.bfloat16


@pytest.mark.slow
def test_python_dash_m_model_attention_is_visualize(models, tmp_path):
    help_text = subprocess.run([sys.executable, "-m", "model.attention", "--help"], cwd=ROOT, capture_output=True,
                               text=True, timeout=120)
    assert help_text.returncode == 0, help_text.stderr
    assert "MODEL" in help_text.stdout and "--layer" in help_text.stdout and "attention" in help_text.stdout
    drawn = subprocess.run([sys.executable, "-m", "model.attention", models["run"], "--start=ROMEO:",
                            f"--out={tmp_path / 'att.png'}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert drawn.returncode == 0, drawn.stderr
    assert (tmp_path / "att.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
