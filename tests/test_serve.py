"""The server (model/serving): every endpoint, streaming or not, the sampling controls, continuous
batching, disconnects, and every limit and bad input answered with a clear JSON error."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
import torch

pytest.importorskip("fastapi", reason="the serve extra (FastAPI, uvicorn) is not installed")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx")

from fastapi.testclient import TestClient  # noqa: E402

from model.checkpoint import load_model  # noqa: E402
from model.sampling.generate import generate_text  # noqa: E402
from serving_helpers import (  # noqa: E402
    PROMPT, LiveServer, ServeCommand, complete, expect_error, make_hf_folder, make_run, serve, wait_until,
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("serve") / "shakespeare")


@pytest.fixture(scope="module")
def model(run):
    m, tok, _ = load_model(run)
    return m.eval(), tok


@pytest.fixture
def client(run):
    app, _ = serve([run])
    with TestClient(app) as c:
        yield c


def events(lines) -> list:
    """The JSON events of a server-sent-event stream; checks it ends with [DONE]."""
    data = [line[len("data: "):] for line in lines if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return [json.loads(d) for d in data[:-1]]


def stream(client, **body) -> list:
    with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        return events(list(r.iter_lines()))


# -- the endpoints ---------------------------------------------------------------------------------


def test_models_health_and_page(client, model):
    m, tok = model
    data = client.get("/v1/models").json()["data"]
    assert [d["id"] for d in data] == ["shakespeare"]
    assert data[0]["object"] == "model"
    assert data[0]["tinygpt"]["n_layer"] == m.config.n_layer and data[0]["tinygpt"]["tokenizer"] == "char"
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["models"]["shakespeare"]["active"] == 0
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]  # it may fetch nothing from elsewhere
    assert "<script src" not in page.text and "https://" not in page.text and "http://" not in page.text


def test_greedy_completion_is_sample_py_text(client, model):
    m, tok = model
    body = complete(client, model="shakespeare", prompt=PROMPT, max_tokens=40, temperature=0)
    expected = "".join(text for _, text in generate_text(m, tok, [tok.encode(PROMPT)], 40, temperature=0))
    assert body["object"] == "text_completion" and body["model"] == "shakespeare"
    assert body["choices"][0]["text"] == expected and len(expected) == 40
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": len(PROMPT), "completion_tokens": 40, "total_tokens": len(PROMPT) + 40}


def test_streaming_sends_each_token_and_ends_with_done(client):
    chunks = stream(client, prompt=PROMPT, max_tokens=30, temperature=0, stream_options={"include_usage": True})
    texts = [c["choices"][0]["text"] for c in chunks if c["choices"]]
    assert len(texts) == 30  # one event per token
    assert chunks[-1]["usage"]["completion_tokens"] == 30 and chunks[-1]["choices"] == []
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"
    alone = complete(client, prompt=PROMPT, max_tokens=30, temperature=0)
    assert "".join(texts) == alone["choices"][0]["text"]


def test_seed_gives_the_same_text_and_n_gives_different_ones(client):
    body = dict(prompt=PROMPT, max_tokens=30, temperature=1.0, top_k=0)
    first = complete(client, **body, seed=7, n=3)["choices"]
    again = complete(client, **body, seed=7, n=3)["choices"]
    assert [c["text"] for c in first] == [c["text"] for c in again]
    assert [c["index"] for c in first] == [0, 1, 2]
    assert len({c["text"] for c in first}) == 3  # n texts, each with its own randomness
    assert complete(client, **body, seed=8)["choices"][0]["text"] != first[0]["text"]
    assert complete(client, **body, seed=7)["choices"][0]["text"] == first[0]["text"]  # text j uses seed + j
    streamed = stream(client, **body, seed=7, n=3)
    for index in range(3):
        assert "".join(c["choices"][0]["text"] for c in streamed if c["choices"][0]["index"] == index) == first[index]["text"]


def test_top_k_one_and_tiny_top_p_are_greedy(client):
    greedy = complete(client, prompt=PROMPT, max_tokens=20, temperature=0)["choices"][0]["text"]
    assert complete(client, prompt=PROMPT, max_tokens=20, temperature=1.5, top_k=1)["choices"][0]["text"] == greedy
    assert complete(client, prompt=PROMPT, max_tokens=20, temperature=1.5, top_p=1e-6)["choices"][0]["text"] == greedy


def test_stop_strings_cut_the_text(client):
    full = complete(client, prompt=PROMPT, max_tokens=60, temperature=0)["choices"][0]["text"]
    stop = full[25:28]
    cut = full[: full.index(stop)]
    choice = complete(client, prompt=PROMPT, max_tokens=60, temperature=0, stop=[stop, "never appears"])["choices"][0]
    assert (choice["text"], choice["finish_reason"]) == (cut, "stop")
    chunks = stream(client, prompt=PROMPT, max_tokens=60, temperature=0, stop=stop)
    assert "".join(c["choices"][0]["text"] for c in chunks) == cut
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_logprobs_are_the_models_log_softmax(client, model):
    m, tok = model
    choice = complete(client, prompt=PROMPT, max_tokens=15, temperature=0.9, seed=3, logprobs=4)["choices"][0]
    lp = choice["logprobs"]
    assert lp["tokens"] == list(choice["text"])  # characters: one token each
    ids = tok.encode(PROMPT + choice["text"])
    with torch.no_grad():
        logits, _ = m(torch.tensor([ids]))
    expected = torch.log_softmax(logits[0].float(), dim=-1)  # (T, vocab): row t predicts token t + 1
    P = len(PROMPT)
    for i, (token, logprob, top) in enumerate(zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"])):
        row = expected[P - 1 + i]
        assert logprob == pytest.approx(float(row[tok.encode(token)[0]]), abs=1e-4)
        values, best = torch.topk(row, 4)
        assert list(top) == [tok.decode([b]) for b in best.tolist()]
        assert list(top.values()) == pytest.approx(values.tolist(), abs=1e-4)
    assert lp["text_offset"] == list(range(len(choice["text"])))


def test_echo_with_logprobs_scores_the_prompt(client, model):
    m, tok = model
    choice = complete(client, prompt=PROMPT, max_tokens=5, temperature=0, echo=True, logprobs=2)["choices"][0]
    assert choice["text"].startswith(PROMPT) and len(choice["text"]) == len(PROMPT) + 5
    lp = choice["logprobs"]
    assert lp["tokens"][: len(PROMPT)] == list(PROMPT) and lp["token_logprobs"][0] is None
    with torch.no_grad():
        logits, _ = m(torch.tensor([tok.encode(PROMPT)]))
    expected = torch.log_softmax(logits[0].float(), dim=-1)
    for i in range(1, len(PROMPT)):
        assert lp["token_logprobs"][i] == pytest.approx(float(expected[i - 1, tok.encode(PROMPT[i])[0]]), abs=1e-4)
    zero = complete(client, prompt=PROMPT, max_tokens=0, echo=True)["choices"][0]
    assert (zero["text"], zero["finish_reason"]) == (PROMPT, "length")


def test_prompt_lists_and_token_ids(client, model):
    _, tok = model
    one = complete(client, prompt="To be", max_tokens=10, temperature=0)["choices"][0]["text"]
    two = complete(client, prompt="Not to be", max_tokens=10, temperature=0)["choices"][0]["text"]
    both = complete(client, prompt=["To be", "Not to be"], max_tokens=10, temperature=0, n=2)["choices"]
    assert [c["text"] for c in both] == [one, one, two, two]
    assert complete(client, prompt=tok.encode("To be"), max_tokens=10, temperature=0)["choices"][0]["text"] == one
    assert complete(client, prompt=[tok.encode("To be")], max_tokens=10, temperature=0)["choices"][0]["text"] == one


def test_a_text_in_a_busy_batch_equals_it_alone(run):
    app, served = serve([run], max_batch=8)
    engine = served[0].engine
    body = dict(prompt=PROMPT, max_tokens=50, temperature=0)
    with TestClient(app) as client:
        alone = complete(client, **body)["choices"][0]["text"]
        # others that arrived earlier and are mid-generation (one slides past block_size) when it joins
        threads = [threading.Thread(target=complete, args=(client,), kwargs=dict(prompt=p, max_tokens=400))
                   for p in ("A", "Some longer prompt than this one, much longer")]
        for t in threads:
            t.start()
        assert wait_until(lambda: engine.load()["active"] == 2)
        busy = complete(client, **body)["choices"][0]["text"]
        assert engine.peak >= 3  # it was decoded together with the other two
        # and in one request with prompts of other lengths (a padded batch from the start)
        batched = complete(client, **{**body, "prompt": ["x", PROMPT, "Longer than the prompt we compare"]})
        for t in threads:
            t.join()
    assert busy == alone
    assert batched["choices"][1]["text"] == alone


def test_attention_endpoint(client, model):
    m, tok = model
    body = client.post("/v1/attention", json={"prompt": PROMPT}).json()
    T = len(PROMPT)
    assert body["tokens"] == list(PROMPT) and body["token_ids"] == tok.encode(PROMPT) and body["offset"] == 0
    weights = torch.tensor(body["weights"])
    assert weights.shape == (m.config.n_layer, m.config.n_head, T, T)
    expected = torch.stack(m.attention_patterns(torch.tensor([tok.encode(PROMPT)])))[:, 0]  # (L, H, T, T)
    torch.testing.assert_close(weights, expected.float(), atol=1e-4, rtol=0)
    one = client.post("/v1/attention", json={"prompt": PROMPT, "layer": 1, "head": 0}).json()
    assert (one["layers"], one["heads"]) == ([1], [0])
    torch.testing.assert_close(torch.tensor(one["weights"])[0, 0], expected[1, 0], atol=1e-4, rtol=0)
    long = client.post("/v1/attention", json={"prompt": "ab" * 40, "layer": 0, "head": 0}).json()
    assert long["offset"] == 80 - m.config.block_size and len(long["tokens"]) == m.config.block_size


@pytest.mark.needs_gpt2
def test_hugging_face_folder(tmp_path):
    from model.huggingface import load_pretrained

    folder = make_hf_folder(tmp_path / "gpt2-tiny")
    app, _ = serve(init_from=[folder])
    m, tok = load_pretrained(folder)
    with TestClient(app) as client:
        assert client.get("/v1/models").json()["data"][0]["id"] == "gpt2-tiny"
        choice = complete(client, prompt="Hello world", max_tokens=12, temperature=0, logprobs=3)["choices"][0]
        expected = "".join(text for _, text in generate_text(m, tok, [tok.encode("Hello world")], 12, temperature=0))
        assert choice["text"] == expected
        assert len(choice["logprobs"]["tokens"]) == 12 and all(len(t) == 3 for t in choice["logprobs"]["top_logprobs"])
        assert client.post("/v1/attention", json={"prompt": "Hello world"}).json()["tokens"] == ["Hello", " world"]


def test_models_served_together_share_the_thread_that_loaded_them(tmp_path, run, model, monkeypatch):
    import shutil
    import threading

    from model.serving import models

    loaded_on = []
    load_source = models.load_source
    monkeypatch.setattr(models, "load_source",
                        lambda *args: loaded_on.append(threading.current_thread().name) or load_source(*args))
    twin = tmp_path / "twin"
    shutil.copytree(run, twin)
    app, served = serve([run, twin])
    thread = served[0].engine.thread
    assert served[1].engine.thread is thread  # one thread does all the tensor work
    assert loaded_on == [thread.thread.name] * 2 and thread.thread is not threading.current_thread()
    m, tok = model
    expected = "".join(text for _, text in generate_text(m, tok, [tok.encode(PROMPT)], 20, temperature=0))
    with TestClient(app) as client:
        ids = [d["id"] for d in client.get("/v1/models").json()["data"]]
        assert ids == [run.name, "twin"]
        for name in ids:
            choice = complete(client, model=name, prompt=PROMPT, max_tokens=20, temperature=0)["choices"][0]
            assert choice["text"] == expected


# -- several clients, disconnects ------------------------------------------------------------------


def test_a_client_that_disconnects_stops_its_generation(run):
    import httpx

    app, served = serve([run])
    engine = served[0].engine
    with LiveServer(app) as server:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            body = {"prompt": PROMPT, "max_tokens": 2000, "stream": True}
            with http.stream("POST", "/v1/completions", json=body) as r:
                lines = r.iter_lines()
                received = [line for line, _ in zip(lines, range(6))]
                assert any(line.startswith("data: ") for line in received)
            assert wait_until(lambda: engine.load()["active"] == 0, timeout=10)
            steps = engine.steps
            time.sleep(0.3)
            assert engine.steps == steps < 1900  # stopped long before max_tokens

            # a non-streaming request whose client goes away mid-generation
            payload = json.dumps({"prompt": PROMPT, "max_tokens": 2000}).encode()
            with socket.create_connection(("127.0.0.1", server.port)) as s:
                s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload))
                assert wait_until(lambda: engine.load()["active"] == 1)
            assert wait_until(lambda: engine.load()["active"] == 0, timeout=10)
            assert engine.steps < steps + 1900
            assert http.get("/healthz").json()["status"] == "ok"


def test_concurrent_streams_are_decoded_together(run):
    import httpx

    app, served = serve([run], max_batch=4)
    engine = served[0].engine
    results = {}

    def client(i):
        with httpx.Client(base_url=server.url, timeout=60) as http:
            with http.stream("POST", "/v1/completions", json={"prompt": PROMPT, "max_tokens": 300, "stream": True,
                                                              "seed": i}) as r:
                results[i] = events(list(r.iter_lines()))

    with LiveServer(app) as server:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(results) == [0, 1, 2, 3]
    assert all(sum(len(c["choices"][0]["text"]) for c in r) == 300 for r in results.values())
    assert engine.peak >= 2  # one forward pass served several clients
    assert engine.steps < 4 * 300


# -- limits and bad input --------------------------------------------------------------------------


def test_bad_json_and_wrong_types(client):
    post = lambda content: client.post("/v1/completions", content=content, headers={"content-type": "application/json"})
    expect_error(post("{\"prompt\": "), 400, "not valid JSON")
    expect_error(post("[1, 2]"), 422, "object")
    expect_error(post(json.dumps({"prompt": 5})), 422, "prompt")
    expect_error(post(json.dumps({"prompt": [1, "a"]})), 422, "prompt")
    expect_error(post(json.dumps({"temperature": "hot"})), 422, "temperature")
    expect_error(post(json.dumps({"max_tokens": 1.5})), 422, "max_tokens")
    expect_error(post(json.dumps({"n": True})), 422, "n")
    expect_error(post(json.dumps({"stream": "yes"})), 422, "stream")
    assert expect_error(post(json.dumps({"prompt": "x", "best_of": 2})), 422, "best_of")["param"] == "best_of"
    expect_error(client.post("/v1/completions"), 422, "body")
    expect_error(client.post("/v1/completions", content="prompt=hi",
                             headers={"content-type": "application/x-www-form-urlencoded"}), 422)
    expect_error(client.post("/v1/attention", json={}), 422, "prompt")


@pytest.mark.parametrize("body, status, words", [
    ({"temperature": 3}, 422, ["temperature"]),
    ({"temperature": -1}, 422, ["temperature"]),
    ({"top_p": 0}, 422, ["top_p"]),
    ({"top_k": -1}, 422, ["top_k"]),
    ({"max_tokens": -1}, 422, ["max_tokens"]),
    ({"seed": -1}, 422, ["seed"]),
    ({"n": 0}, 422, ["n"]),
    ({"max_tokens": 101}, 400, ["max_tokens", "limit of 100"]),
    ({"n": 4}, 400, ["n is 4", "limit of 3"]),
    ({"logprobs": 6}, 400, ["logprobs", "limit of 5"]),
    ({"prompt": "x" * 65}, 400, ["65 tokens", "limit of 64"]),
    ({"prompt": ["a"] * 5}, 400, ["at most 4 prompts"]),
    ({"prompt": ["a", "b", "c"], "n": 3}, 400, ["queues"]),
    ({"stop": ["a", "b", "c", "d", "e"]}, 400, ["at most 4 stop"]),
    ({"stop": ""}, 400, ["empty"]),
    ({"stop": "x" * 201}, 400, ["longer than 200"]),
    ({"prompt": "x" * 40, "echo": True, "logprobs": 1}, 400, ["block_size=32"]),
    ({"prompt": "é"}, 400, ["outside this character-level vocabulary"]),
    ({"prompt": ""}, 400, ["empty"]),
    ({"prompt": [1, 1000]}, 400, ["token id 1000"]),
    ({"model": "../../etc/passwd"}, 404, ["not served here", "shakespeare"]),
    ({"frequency_penalty": 0.5}, 400, ["not supported"]),
    ({"stream_options": {"include_usage": True}}, 400, ["stream: true"]),
])
def test_limits_and_bad_values(run, body, status, words):
    app, _ = serve([run], max_waiting=8, max_tokens=100, max_n=3, max_logprobs=5, max_prompt_tokens=64, max_prompts=4)
    with TestClient(app) as client:
        error = expect_error(client.post("/v1/completions", json={"prompt": "hi", **body}), status, *words)
    assert error["type"] == "invalid_request_error"


def test_body_size_paths_and_methods(run):
    app, _ = serve([run], max_body_bytes=1000)
    with TestClient(app) as client:
        expect_error(client.post("/v1/completions", json={"prompt": "x" * 2000}), 413, "larger than 1000 bytes")

        def chunked():  # no Content-Length: counted as it arrives
            yield b'{"prompt": "'
            for _ in range(20):
                yield b"x" * 100
            yield b'"}'
        expect_error(client.post("/v1/completions", content=chunked(), headers={"content-type": "application/json"}),
                     413, "larger than 1000 bytes")
        expect_error(client.get("/v1/nothing"), 404, "/v1/nothing")
        expect_error(client.get("/v1/completions"), 405, "GET")
        expect_error(client.post("/v1/attention", json={"prompt": "hi", "layer": 2}), 400, "layer must be below 2")
        expect_error(client.post("/v1/attention", json={"prompt": "hi", "head": 9}), 400, "head")
        expect_error(client.post("/v1/attention", json={"prompt": "hi", "file": "/etc/passwd"}), 422, "file")


def test_attention_size_cap(run):
    app, _ = serve([run], max_attention_values=500)
    with TestClient(app) as client:
        expect_error(client.post("/v1/attention", json={"prompt": "x" * 12}), 400, "choose a layer and a head")
        assert client.post("/v1/attention", json={"prompt": "x" * 12, "layer": 0, "head": 0}).status_code == 200


def test_api_key(run):
    app, _ = serve([run], api_key="s3cret")
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200 and client.get("/").status_code == 200
        assert expect_error(client.get("/v1/models"), 401, "API key")["type"] == "authentication_error"
        expect_error(client.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
        expect_error(client.post("/v1/completions", json={"prompt": "hi"}), 401)
        expect_error(client.post("/v1/attention", json={"prompt": "hi"}), 401)
        ok = client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 3},
                         headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200


def test_full_queue_gets_429(run):
    import httpx

    app, served = serve([run], max_batch=1, max_waiting=1, max_tokens=10**6)
    engine = served[0].engine
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        body = {"prompt": PROMPT, "max_tokens": 10**6, "stream": True}  # runs until its client leaves
        with http.stream("POST", "/v1/completions", json=body) as first:
            lines = first.iter_lines()  # kept: dropping the iterator would close the connection
            next(lines)  # generating: the batch is full
            with http.stream("POST", "/v1/completions", json=body) as second:  # waits for a place
                assert second.status_code == 200
                assert wait_until(lambda: engine.load()["waiting"] == 1)
                third = http.post("/v1/completions", json={**body, "stream": False})
                error = expect_error(third, 429, "busy")
                assert error["type"] == "rate_limit_error" and third.headers["retry-after"] == "1"
    assert wait_until(lambda: engine.load()["active"] == 0 and engine.load()["waiting"] == 0)


# -- the command line ------------------------------------------------------------------------------


def test_serve_command_errors_are_one_line(tmp_path, run, capsys):
    from model.cli import serve_main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert serve_main([f"--out_dir={run}", f"--port={port}"]) == 1
        assert capsys.readouterr().err.startswith(f"error: can't listen on 127.0.0.1:{port}")
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    assert serve_main([f"--out_dir={tmp_path / 'missing'}", f"--port={port}"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: checkpoint not found") and err.count("\n") == 1
    assert serve_main([f"--runs={tmp_path}", f"--port={port}"]) == 1
    assert "no training runs" in capsys.readouterr().err
    assert serve_main(["--max_batch=0"]) == 1
    assert "--max_batch must be at least 1" in capsys.readouterr().err


def test_sources_get_unique_ids(tmp_path):
    from model.serving.models import find_sources
    from model.sources import resolve_model

    a = make_run(tmp_path / "runs" / "alpha")
    make_run(tmp_path / "runs" / "beta")
    (tmp_path / "runs" / "not-a-run").mkdir()
    other = make_run(tmp_path / "elsewhere" / "alpha")
    named = [resolve_model(name) for name in (other, a / "ckpt.pt", "gpt2")]
    sources = find_sources(named, [str(tmp_path / "runs")])
    assert [s.id for s in sources] == ["alpha", "beta", "alpha-2", "alpha-3", "gpt2"]
    assert [s.origin.kind for s in sources] == ["run", "run", "run", "checkpoint", "hub"]


@pytest.mark.slow
def test_python_m_model_serve(run):
    import httpx

    with ServeCommand(f"--out_dir={run}") as server:
        reply = httpx.post(server.url + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 5}, timeout=60)
        assert reply.status_code == 200 and len(reply.json()["choices"][0]["text"]) == 5
    assert server.returncode == 0, server.err
    assert f"serving shakespeare at {server.url}/" in server.err and "Traceback" not in server.err
