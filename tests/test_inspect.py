"""python -m model.inspect and model/evaluation/inspect.py: each view checked against the model's own
computation (attention patterns, block outputs, logits, losses, the report's counts), bad input, the
synthetic corpus, and an induction head that forms in a model trained here."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from helpers import CHARS, peaky_gpt
from model.data.tokenizer import CharTokenizer
from model.evaluation import inspect as analyses
from model.nn.gpt import IGNORE_INDEX
from model.tools.inspect import main

TOK = CharTokenizer(CHARS)
TEXT = "ROMEO:\nBut soft, what light"
ARCHITECTURES = {
    "learned": dict(),
    "rope": dict(pos_embedding="rope", norm="rmsnorm", qk_norm=True, bias=False, tie_weights=False, activation="relu2"),
}


@pytest.fixture(params=list(ARCHITECTURES))
def model(request):
    return peaky_gpt(seed=1, n_layer=3, n_head=4, n_embd=32, block_size=32, **ARCHITECTURES[request.param])


def ids_of(text: str = TEXT) -> list[int]:
    return TOK.encode(text)


@pytest.mark.parametrize("layer,head,position", [(0, 0, -1), (1, 3, 5), (2, 2, 0)])
def test_step_weights_are_the_models_attention_pattern(model, layer, head, position):
    ids = ids_of()
    r = analyses.attention_step(model, TOK, ids, layer, head, position)
    pattern = model.attention_patterns(torch.tensor([ids]))[layer][0, head, position % len(ids)]
    torch.testing.assert_close(torch.tensor(r["weights"]), pattern, rtol=0, atol=1e-6)
    p = r["position"]
    assert r["mask"] == [j <= p for j in range(len(ids))]
    assert all(w == 0 for w, keep in zip(r["weights"], r["mask"]) if not keep)
    torch.testing.assert_close(torch.tensor(r["scaled"]), torch.tensor(r["scores"]) * r["scale"])
    assert r["tokens"] == list(TEXT)


def test_summed_contributions_are_the_attention_blocks_output(model):
    ids, layer, position = ids_of(), 1, 9
    outputs = []
    attn = model.transformer.h[layer].attn
    handle = attn.register_forward_hook(lambda module, args, output: outputs.append(output))
    with torch.no_grad():
        model(torch.tensor([ids]))
    handle.remove()
    total = torch.zeros(model.config.n_embd)
    for head in range(model.config.n_head):
        r = analyses.attention_step(model, TOK, ids, layer, head, position)
        contributions = torch.tensor(r["contributions"])  # (T, C)
        torch.testing.assert_close(contributions.sum(0), torch.tensor(r["output"]))
        torch.testing.assert_close(contributions.norm(dim=-1), torch.tensor(r["contribution_sizes"]))
        total += contributions.sum(0)
    if attn.c_proj.bias is not None:
        total += attn.c_proj.bias.detach()
    torch.testing.assert_close(total, outputs[0][0, position], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.tensor(r["block_output"]), outputs[0][0, position], rtol=1e-5, atol=1e-5)


def test_lens_last_row_is_the_models_own_output_exactly(model):
    ids = ids_of()
    r = analyses.logit_lens(model, TOK, ids, top_k=3)
    assert len(r["layers"]) == model.config.n_layer + 1 and r["layers"][0]["layer"] == "embeddings"
    with torch.no_grad():
        logits, _ = model(torch.tensor([ids]))
        stream, lens_logits = analyses.residual_stream(model, torch.tensor([ids]))
        assert torch.equal(analyses.unembed(model, stream[-1]), logits)
    probs = logits[0].softmax(-1)
    top_p, top_ids = probs.topk(3, dim=-1)
    last = r["layers"][-1]
    assert [[t["p"] for t in row] for row in last["top"]] == top_p.tolist()
    assert [[t["token"] for t in row] for row in last["top"]] == [[CHARS[i] for i in row] for row in top_ids.tolist()]
    assert last["p_final"] == top_p[:, 0].tolist()
    assert r["predicted"] == [CHARS[i] for i in logits[0].argmax(-1).tolist()]
    for layer in r["layers"]:
        assert len(layer["top"]) == len(ids) and all(len(row) == 3 for row in layer["top"])


def test_head_scores_of_known_patterns():
    T = 6
    identity = torch.eye(T)[None]
    previous = torch.zeros(1, T, T)
    previous[0, 0, 0] = 1
    previous[0, torch.arange(1, T), torch.arange(T - 1)] = 1
    first = torch.zeros(1, T, T)
    first[0, :, 0] = 1
    scores = analyses.pattern_scores(torch.cat([identity, previous, first]))
    assert scores["self"].tolist() == pytest.approx([1.0, 1 / T, 1 / T])
    assert scores["previous_token"].tolist() == pytest.approx([0.0, 1.0, 1 / (T - 1)])
    assert scores["first_token"].tolist() == pytest.approx([1 / T, 2 / T, 1.0])
    torch.testing.assert_close(scores["mean_distance"], torch.tensor([0.0, (T - 1) / T, sum(range(T)) / T]))
    # a repeated sequence of 3 (repeat from position 3): an induction head looks at i - 3 + 1
    induction = torch.zeros(1, T, T)
    induction[0, torch.arange(3, T), torch.arange(1, T - 2)] = 1
    assert analyses.induction_scores(torch.cat([induction, identity]), 3).tolist() == [1.0, 0.0]


def test_heads_lists_every_head_ranked(model):
    r = analyses.head_scores(model, TOK, ids_of(), sort="previous_token")
    c = model.config
    assert sorted((h["layer"], h["head"]) for h in r["heads"]) == [(l, h) for l in range(c.n_layer) for h in range(c.n_head)]
    assert [h["previous_token"] for h in r["heads"]] == sorted((h["previous_token"] for h in r["heads"]), reverse=True)
    assert set(r["heads"][0]) == {"layer", "head", *analyses.HEAD_SCORES}
    assert r["patterns"].shape == (c.n_layer, c.n_head, len(TEXT), len(TEXT))
    probe, start = analyses.induction_probe(model, TOK)
    assert probe[start:] == probe[:start] and len(set(probe[:start])) == start and len(probe) <= c.block_size


def windows(model, text: str = TEXT * 3):
    from model.data.dataset import eval_windows
    import numpy as np

    return eval_windows(np.array(TOK.encode(text), dtype=np.int64), model.config.block_size)


def test_ablating_no_head_gives_the_baseline_exactly(model):
    x, y = windows(model)
    r = analyses.ablate(model, x, y)
    with torch.no_grad():
        logits, _ = model(x)
    count = int((y != IGNORE_INDEX).sum())
    assert r["baseline_loss"] == analyses.summed_cross_entropy(logits, y) / count
    stream, _ = analyses.residual_stream(model, x)
    for layer in range(model.config.n_layer):
        untouched, = analyses.losses_with_heads_replaced(model, stream[layer], y, layer, [None])
        assert untouched / count == r["baseline_loss"]
    assert len(r["heads"]) == model.config.n_layer * model.config.n_head


@pytest.mark.parametrize("mode", analyses.ABLATION_MODES)
def test_zeroing_a_head_is_zeroing_its_slice_of_the_output_projections_input(model, mode):
    x, y = windows(model)
    r = analyses.ablate(model, x, y, mode=mode)
    layer, head = 1, 2
    slice_ = analyses.head_slice(model, head)
    # the same ablation another way: the head's columns of W_O set to zero, and for the mean, its mean
    # output times those columns added to W_O's bias instead
    edited = copy.deepcopy(model)
    c_proj = edited.transformer.h[layer].attn.c_proj
    with torch.no_grad():
        if mode == "mean":
            inputs = []
            handle = model.transformer.h[layer].attn.c_proj.register_forward_pre_hook(lambda m, a: inputs.append(a[0]))
            model(x)
            handle.remove()
            mean = analyses.head_means(inputs[0], y)[slice_]
            shift = c_proj.weight[:, slice_] @ mean
            c_proj.bias = torch.nn.Parameter(shift if c_proj.bias is None else c_proj.bias + shift)
        c_proj.weight[:, slice_] = 0
        logits, _ = edited(x)
    expected = analyses.summed_cross_entropy(logits, y) / int((y != IGNORE_INDEX).sum())
    loss = next(h["loss"] for h in r["heads"] if (h["layer"], h["head"]) == (layer, head))
    assert loss == pytest.approx(expected, rel=1e-5)
    assert loss != r["baseline_loss"]


def test_params_match_the_reports_per_head_counts(model):
    from model.nn.report import Report

    report = {c.name: c for c in Report(model.config).block}
    c = model.config
    r = analyses.head_parameters(model, layer=2)
    assert len(r["heads"]) == c.n_head
    for name in ("W_Q", "W_K", "W_V", "W_O"):
        weights, biases = report[name].per_head
        for h in r["heads"]:
            assert (h[name]["weights"], h[name]["biases"]) == (weights, biases) == tuple(h[name]["report"].values())
        shared = r["shared"]["W_O bias"] if name == "W_O" else 0
        assert sum(h[name]["weights"] + h[name]["biases"] for h in r["heads"]) + shared == report[name].total
    assert r["heads"][0]["W_V"]["shape"] == [c.n_embd, c.n_embd // c.n_head]
    assert r["heads"][0]["W_O"]["shape"] == [c.n_embd // c.n_head, c.n_embd]


def test_nearest_tokens_by_cosine_and_by_dot_product(model):
    table = model.transformer.wte.weight.detach()
    with torch.no_grad():
        table[TOK.encode("b")[0]] = 5 * table[TOK.encode("a")[0]]  # same direction, five times as long
    r = analyses.nearest_tokens(model, TOK, TOK.encode("a")[0], k=5)
    assert r["cosine"][0]["token"] == "b" and r["cosine"][0]["value"] == pytest.approx(1.0, abs=1e-5)
    assert "a" not in [n["token"] for n in r["cosine"] + r["dot"]]
    dots = (table @ table[TOK.encode("a")[0]]).tolist()
    assert [n["value"] for n in r["dot"]] == sorted((d for i, d in enumerate(dots) if CHARS[i] != "a"), reverse=True)[:5]


def test_embedding_map_and_residual_trajectory(model):
    m = analyses.embedding_map(model, TOK, n=1000)
    assert len(m["x"]) == len(m["y"]) == len(CHARS) and 0 < sum(m["explained"]) <= 1 + 1e-6
    some = analyses.embedding_map(model, TOK, n=10)
    assert some["token_ids"] == list(range(10))
    t = analyses.residual_trajectory(model, TOK, ids_of(), position=-1)
    assert len(t["layers"]) == model.config.n_layer + 1
    if "wpe" not in model.transformer:  # rotary: after the embeddings the stream is the token's embedding itself
        assert t["layers"][0]["cos_input"] == pytest.approx(1.0, abs=1e-5)


# -- the command ------------------------------------------------------------------------------

@pytest.fixture
def run(tmp_path) -> Path:
    from serving_helpers import make_run

    return make_run(tmp_path / "run", block_size=32)


@pytest.mark.parametrize("view,keys", [
    ("step", {"tokens", "scores", "scaled", "weights", "contributions"}),
    ("lens", {"tokens", "layers"}),
    ("heads", {"heads"}),
    ("ablate", {"baseline_loss", "heads"}),
    ("embeddings", {"neighbours", "map", "trajectory"}),
    ("params", {"heads", "layer"}),
])
def test_every_view_prints_one_json_object_and_draws_a_png(run, tmp_path, capsys, view, keys):
    png = tmp_path / f"{view}.png"
    assert main([view, str(run), f"--start={TEXT}", "--json", f"--out={png}", "--layer=1", "--head=1"]) == 0
    out = capsys.readouterr().out
    record = json.loads(out)
    assert keys <= set(record)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if view == "heads":
        assert set(record["heads"][0]) == {"layer", "head", "previous_token", "induction", "first_token", "self",
                                           "mean_distance"}
    if view == "ablate":
        assert set(record["heads"][0]) == {"layer", "head", "loss"}
    assert main([view, str(run), f"--start={TEXT}"]) == 0  # and a table
    assert capsys.readouterr().out.strip()


@pytest.mark.parametrize("args,message", [
    (["step", "--layer=2"], "layer must be between 0 and 1"),
    (["step", "--head=-1"], "head must be between 0 and 1"),
    (["step", "--position=27"], "position must be between -27 and 26"),
    (["params", "--layer=9"], "layer must be between 0 and 1"),
    (["lens", "--start="], "the text is empty"),
    (["lens", "--start=" + "a" * 40], "longer than the model's context of 32"),
    (["lens", "--start=caf\u00e9"], "outside this character-level vocabulary"),
    (["embeddings", "--token=ab"], "'ab' is 2 tokens"),
    (["embeddings", "--token=\u00e9"], "outside this character-level vocabulary"),
    (["ablate", "--start=a"], "no token to predict"),
    (["lens", "--out=x.docx"], "cannot tell which picture format"),
])
def test_bad_input_is_one_line_on_stderr(run, capsys, args, message):
    argv = [args[0], str(run), *args[1:]]
    if not any(a.startswith("--start") for a in args):
        argv.append(f"--start={TEXT}")
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err


def test_a_long_text_is_cut_as_asked(run, capsys):
    text = "abcdefghij" * 4
    assert main(["lens", str(run), f"--start={text}", "--cut=last", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["tokens"] == list(text[-32:]) and record["offset"] == 8
    assert main(["lens", str(run), f"--start={text}", "--cut=first", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] == list(text[:32])


def test_without_a_text_a_view_reads_the_runs_validation_split(trained, capsys):
    from model.data.dataset import TokenDataset

    config = json.loads((trained / "config.json").read_text())
    dataset = TokenDataset(Path(config["data_dir"]) / config["dataset"])
    assert main(["lens", str(trained), "--json"]) == 0
    tokens = json.loads(capsys.readouterr().out)["tokens"]
    assert tokens == [dataset.tokenizer().decode([int(t)]) for t in dataset.splits["val"].arrays[0][:32]]
    assert main(["ablate", str(trained), "--tokens=100", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] == 100


@pytest.mark.needs_gpt2
def test_views_on_a_hugging_face_gpt2_folder(tmp_path, capsys):
    from serving_helpers import make_hf_folder

    folder = make_hf_folder(tmp_path / "hf")
    for view in ("step", "lens", "heads", "embeddings"):
        assert main([view, str(folder), "--start=Hello world, hello", "--token= world", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)
    assert main(["embeddings", str(folder), "--start=Hi", "--token=Hello world"]) == 1
    assert "is 2 tokens" in capsys.readouterr().err


def test_views_on_an_own_bpe_model():
    from model.config import GPTConfig
    from model.data.tokenizer import BPETokenizer
    from model.nn.gpt import GPT

    tok = BPETokenizer.train("the cat sat on the mat, the dog sat on the log. " * 20, vocab_size=270)
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=32, vocab_size=tok.vocab_size)).eval()
    ids = analyses.encode_text(tok, "the cat sat on the log")
    assert "".join(analyses.logit_lens(model, tok, ids)["tokens"]) == "the cat sat on the log"
    probe, start = analyses.induction_probe(model, tok)
    assert probe[0] == tok.eot_token and tok.eot_token not in probe[1:]
    assert analyses.nearest_tokens(model, tok, analyses.single_token(tok, "the"))["token"] == "the"


# -- the synthetic corpus and an induction head ------------------------------------------------

def test_repeats_corpus_lines_are_a_sequence_twice(tmp_path):
    from model.cli import prepare_main
    from model.data.synthetic import REPEATS_LENGTHS, repeats_text

    text = repeats_text(lines=200)
    assert text == repeats_text(lines=200)  # seeded
    for line in text.splitlines():
        half = len(line) // 2
        assert line[:half] == line[half:] and len(set(line[:half])) == half
        assert REPEATS_LENGTHS[0] <= half <= REPEATS_LENGTHS[1]
    assert prepare_main(["--dataset=rep", f"--data_dir={tmp_path}", "--synthetic=repeats", "--quiet"]) == 0
    meta = json.loads((tmp_path / "rep" / "meta.json").read_text())
    assert meta["vocab_size"] == 27 and meta["source"] == "synthetic:repeats"
    assert prepare_main(["--dataset=rep2", f"--data_dir={tmp_path}", "--synthetic=repeats", "--input=x.txt"]) == 1


def repeated_halves(tok, lines: list[str], block_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One row per line of the repeats corpus: inputs x, and targets y_repeat for the tokens of the
    repeat that an induction head can predict (all but its first) and y_first for those of the first
    copy (all but its first), IGNORE_INDEX elsewhere."""
    x = torch.zeros(len(lines), block_size, dtype=torch.long)
    y_repeat = torch.full((len(lines), block_size), IGNORE_INDEX)
    y_first = y_repeat.clone()
    for row, line in enumerate(lines):
        ids, half = tok.encode(line + "\n"), len(line) // 2
        x[row, : len(ids) - 1] = torch.tensor(ids[:-1])
        for target in range(1, len(ids)):
            if half + 1 <= target <= 2 * half - 1:
                y_repeat[row, target - 1] = ids[target]
            elif target <= half - 1:
                y_first[row, target - 1] = ids[target]
    return x, y_repeat, y_first


@pytest.mark.slow
def test_an_induction_head_forms_is_ranked_first_and_matters_on_the_repeat(tmp_path):
    from model.checkpoint import load_model
    from model.cli import prepare_main, train_main
    from model.data.synthetic import repeats_text

    assert prepare_main(["--dataset=repeats", f"--data_dir={tmp_path}", "--synthetic=repeats", "--quiet"]) == 0
    values = INDUCTION_RUN | dict(data_dir=tmp_path, out_dir=tmp_path / "out")
    assert train_main([f"--{k}={v}" for k, v in values.items()] + ["--quiet"]) == 0
    model, tok, _ = load_model(tmp_path / "out")
    probe, _ = analyses.induction_probe(model, tok)
    ranked = analyses.head_scores(model, tok, probe)["heads"]
    best = (ranked[0]["layer"], ranked[0]["head"])
    assert ranked[0]["induction"] > 0.9 and best[0] == 1 and ranked[1]["induction"] < 0.6, ranked

    # on lines of the validation split: zeroing the induction head costs the repeat (which it
    # predicts) much and the first copy (which nothing can predict) nothing; no other head's cost is
    # as specific to the repeat (a layer-0 head that feeds it may cost the repeat more, and then costs
    # the first copy too)
    x, y_repeat, y_first = repeated_halves(tok, repeats_text().splitlines()[-64:], model.config.block_size)
    on_repeat, on_first = analyses.ablate(model, x, y_repeat), analyses.ablate(model, x, y_first)
    rise = {(h["layer"], h["head"]): h["loss"] - on_repeat["baseline_loss"] for h in on_repeat["heads"]}
    rise_first = {(h["layer"], h["head"]): h["loss"] - on_first["baseline_loss"] for h in on_first["heads"]}
    assert on_repeat["baseline_loss"] < 1.0 < 3.0 < on_first["baseline_loss"]  # the repeat is learned
    assert rise[best] > 2.0 and abs(rise_first[best]) < 0.2, (rise, rise_first)
    assert max(rise, key=lambda k: rise[k] - rise_first[k]) == best, (rise, rise_first)
    assert max((k for k in rise if k[0] == best[0]), key=rise.get) == best


INDUCTION_RUN = dict(
    dataset="repeats", device="cpu", dtype="float32", compile=False, n_layer=2, n_head=2, n_embd=32, block_size=24,
    pos_embedding="rope", dropout=0.0, batch_size=32, max_iters=700, lr_decay_iters=700, warmup_iters=10,
    optimizer="muon", muon_lr=0.03, learning_rate=3e-3, eval_interval=10_000, eval_iters=1, log_interval=100,
)
"""A 2-layer model on the repeats corpus whose induction head forms (seed 1337, the default)."""


# -- the server's endpoints ---------------------------------------------------------------------

@pytest.fixture
def client(run):
    pytest.importorskip("fastapi", reason="the serve extra (FastAPI, uvicorn) is not installed")
    from fastapi.testclient import TestClient
    from serving_helpers import serve

    app, served = serve([run], max_ablate_tokens=40)
    with TestClient(app) as c:
        c.served = served[0]
        yield c


def test_endpoints_answer_with_the_views_keys(client):
    m = client.served
    ids = TOK.encode(TEXT)
    r = client.post("/v1/inspect/step", json={"prompt": TEXT, "layer": 1, "head": 0, "position": 3})
    assert r.status_code == 200
    expected = analyses.attention_step(m.model, TOK, ids, 1, 0, 3)
    assert r.json()["weights"] == pytest.approx(expected["weights"], abs=1e-5)
    lens = client.post("/v1/inspect/lens", json={"prompt": TEXT, "top_k": 2}).json()
    assert [row[0]["token"] for row in lens["layers"][-1]["top"]] == analyses.logit_lens(m.model, TOK, ids)["predicted"]
    heads = client.post("/v1/inspect/heads", json={"prompt": TEXT}).json()
    assert len(heads["heads"]) == 4 and len(heads["patterns"][1][1]) == len(ids)
    params = client.post("/v1/inspect/params", json={"layer": 1}).json()
    assert params["heads"][0]["W_Q"]["weights"] == 32 * 16
    near = client.post("/v1/inspect/embeddings", json={"token": "e", "prompt": TEXT, "k": 3, "map_tokens": 20}).json()
    assert len(near["neighbours"]["cosine"]) == 3 and len(near["map"]["x"]) == 20 and near["trajectory"]["layers"]
    ablated = client.post("/v1/inspect/ablate", json={"prompt": TEXT * 3}).json()
    assert ablated["tokens"] == 40 and ablated["offset"] == 3 * len(TEXT) - 41 and len(ablated["heads"]) == 4


def test_ablate_streams_its_progress(client):
    with client.stream("POST", "/v1/inspect/ablate", json={"prompt": TEXT, "stream": True, "mode": "mean"}) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    assert [e["progress"]["done"] for e in events[:-1]] == [1, 2]
    assert events[-1]["result"]["mode"] == "mean" and len(events[-1]["result"]["heads"]) == 4


@pytest.mark.parametrize("path,body,message", [
    ("step", {"prompt": TEXT, "layer": 2}, "layer must be between 0 and 1"),
    ("step", {"prompt": TEXT, "head": 5}, "head must be between 0 and 1"),
    ("step", {"prompt": TEXT, "position": 99}, "position must be between"),
    ("lens", {"prompt": ""}, "the prompt is empty"),
    ("lens", {"prompt": "caf\u00e9"}, "outside this character-level vocabulary"),
    ("lens", {"prompt": [999]}, "outside the vocabulary"),
    ("heads", {"prompt": TEXT, "sort": "best"}, "sort must be one of"),
    ("ablate", {"prompt": "a"}, "no token to predict"),
    ("ablate", {"prompt": TEXT, "mode": "random"}, "mode must be one of"),
    ("embeddings", {"token": "ab"}, "'ab' is 2 tokens"),
    ("embeddings", {}, "give a 'token'"),
    ("params", {"layer": 7}, "layer must be between 0 and 1"),
])
def test_endpoints_refuse_bad_input_with_a_400(client, path, body, message):
    r = client.post(f"/v1/inspect/{path}", json=body)
    assert r.status_code == 400 and message in r.json()["error"]["message"], r.text


def test_endpoints_pick_models_by_id_only(client):
    r = client.post("/v1/inspect/params", json={"model": "/etc/passwd"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
