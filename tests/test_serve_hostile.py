"""The server against hostile and unlucky clients (issue 28): padded vocabularies, a request that
fails must fail alone, slow clients and too many connections, foreign Host names, text offsets with
stop strings, and random JSON bodies against every endpoint."""

from __future__ import annotations

import json
import logging
import select
import socket
import threading
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("fastapi", reason="the serve extra (FastAPI, uvicorn) is not installed")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx")

from fastapi.testclient import TestClient  # noqa: E402

from helpers import CHARS  # noqa: E402
from model.checkpoint import load_model  # noqa: E402
from model.sampling.generate import generate_text  # noqa: E402
from serving_helpers import (  # noqa: E402
    PROMPT, LiveServer, ServeCommand, complete, expect_error, make_run, serve, server_errors, wait_until,
)



@pytest.fixture
def run(tmp_path):
    """A tiny character-level run (make_run's)."""
    return make_run(tmp_path / "shakespeare")


# -- 1. a vocabulary padded beyond the tokenizer's ---------------------------------------------------


@pytest.fixture(scope="module")
def padded_run(tmp_path_factory):
    """A model with 64 vocabulary rows more than its tokenizer has tokens: random weights give those
    ids as much probability as real ones, so nearly every text would draw one."""
    return make_run(tmp_path_factory.mktemp("padded") / "padded", vocab_size=len(CHARS) + 64)


@pytest.mark.parametrize("logprobs", [None, 20])
def test_a_padded_vocabulary_never_yields_an_id_the_tokenizer_lacks(padded_run, logprobs):
    m, tok, _ = load_model(padded_run)
    assert m.config.vocab_size > tok.vocab_size
    app, _ = serve([padded_run])
    body = dict(prompt=PROMPT, max_tokens=24, temperature=1.0, n=4, logprobs=logprobs)
    with TestClient(app) as client:
        for seed in range(3):
            for choice in complete(client, **body, seed=seed)["choices"]:
                assert len(choice["text"]) == 24 and set(choice["text"]) <= set(CHARS)
                if logprobs is not None:
                    lp = choice["logprobs"]
                    assert lp["tokens"] == list(choice["text"])
                    assert all(len(top) == 20 and set(top) <= set(CHARS) for top in lp["top_logprobs"])
        echo = complete(client, prompt=PROMPT, max_tokens=1, echo=True, logprobs=logprobs or 0)["choices"][0]
        assert all(top is None or set(top) <= set(CHARS) for top in echo["logprobs"]["top_logprobs"])
        # greedy text is sample.py's, which cuts the logits in the same place
        greedy = complete(client, prompt=PROMPT, max_tokens=16, temperature=0, logprobs=logprobs)["choices"][0]
    assert greedy["text"] == "".join(text for _, text in generate_text(m, tok, [tok.encode(PROMPT)], 16, temperature=0))
    if logprobs is not None:  # log-probabilities over the tokenizer's ids: a log-softmax of their logits only
        with torch.no_grad():
            logits, _ = m(torch.tensor([tok.encode(PROMPT + greedy["text"])]))
        expected = torch.log_softmax(logits[0, len(PROMPT) - 1 : -1, : tok.vocab_size], dim=-1)  # (16, vocab)
        chosen = expected.gather(1, torch.tensor(tok.encode(greedy["text"]))[:, None])[:, 0]
        assert greedy["logprobs"]["token_logprobs"] == pytest.approx(chosen.tolist(), abs=1e-4)


# -- 2. one request can never fail another -----------------------------------------------------------


def test_logprobs_beyond_the_models_vocabulary_is_a_400(tmp_path):
    small = make_run(tmp_path / "small", chars="\n abc")
    app, _ = serve([small])
    with TestClient(app) as client:
        error = expect_error(client.post("/v1/completions", json={"prompt": "ab", "logprobs": 6}), 400,
                             "logprobs is 6", "vocabulary of 5 tokens")
        assert error["param"] == "logprobs"
        lp = complete(client, prompt="ab", max_tokens=3, logprobs=5)["choices"][0]["logprobs"]
        assert [len(top) for top in lp["top_logprobs"]] == [5, 5, 5]


@pytest.mark.slow
def test_a_failing_request_fails_alone(run, monkeypatch):
    """Requests whose prefill, whose batched step, or whose sampling raises each end with an error,
    while a stream decoded in the same batch goes on with exactly the text it gets alone."""
    import httpx

    from model.serving import engine as engine_module

    m, tok, _ = load_model(run)
    others = tok.encode(PROMPT)
    poison = tok.encode("!")[0]  # a token the others' text never holds: fed to the model, it raises
    poisoned_step = "R"  # whose first greedy token is the poison
    assert "".join(t for _, t in generate_text(m, tok, [tok.encode(poisoned_step)], 1, temperature=0)) == "!"

    app, served = serve([run], max_batch=4, max_tokens=2000)
    engine, model = served[0].engine, served[0].model
    next_logits, top_logprobs, failed_with = model.next_logits, engine_module.top_logprobs, []

    def next_logits_failing_on_poison(ids, *args, **kwargs):
        if (ids[:, -1] == poison).any():
            failed_with.append(len(engine.active))
            raise RuntimeError("poisoned")
        return next_logits(ids, *args, **kwargs)

    def top_logprobs_failing_for_3(tok, logits, k):
        if k == 3:
            raise RuntimeError("poisoned")
        return top_logprobs(tok, logits, k)

    # every forward pass through next_logits, none through the C decoding step
    monkeypatch.setattr(model, "fast_decoder", None, raising=False)
    monkeypatch.setattr(engine.batch, "fast", None)
    monkeypatch.setattr(model, "next_logits", next_logits_failing_on_poison)
    monkeypatch.setattr(engine_module, "top_logprobs", top_logprobs_failing_for_3)
    received = []
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        with http.stream("POST", "/v1/completions",
                         json={"prompt": PROMPT, "max_tokens": 2000, "temperature": 0, "stream": True}) as stream:
            lines = stream.iter_lines()
            assert wait_until(lambda: engine.load()["active"] == 1)
            for body in ({"prompt": poisoned_step, "temperature": 0, "max_tokens": 5},  # fails in a step
                         {"prompt": "ab!", "max_tokens": 5},  # fails in its prefill
                         {"prompt": "ab", "max_tokens": 5, "logprobs": 3}):  # fails sampling
                expect_error(http.post("/v1/completions", json=body), 500, "internal error while generating")
            wanted = min(2000, engine.steps + 20)  # tokens well after the failures
            for line in lines:
                if line.startswith("data: "):
                    event = json.loads(line[len("data: "):])
                    assert "error" not in event, event
                    received.append(event["choices"][0]["text"])
                if len(received) == wanted:
                    break
        assert http.get("/healthz").json()["status"] == "ok"
    assert max(failed_with) == 2  # a step of the stream and the poisoned text together raised
    text = "".join(received)
    assert text == "".join(t for _, t in generate_text(m, tok, [others], len(received), temperature=0))
    assert "!" not in text


# -- 3. slow clients, too many connections -----------------------------------------------------------


def closed_within(sockets: list[socket.socket], trickle: dict[socket.socket, bytes], timeout: float) -> dict:
    """Send each trickling socket one more byte of its bytes every 0.05 s until the server closes it;
    returns each socket's time.monotonic() at its close and what it received (None: still open at
    `timeout`)."""
    start, result, pending = time.monotonic(), {}, set(sockets)
    received = {s: b"" for s in sockets}
    while pending and time.monotonic() - start < timeout:
        readable, _, _ = select.select(list(pending), [], [], 0.05)
        for s in readable:
            try:
                data = s.recv(4096)
            except ConnectionResetError:
                data = b""
            received[s] += data
            if not data:
                result[s] = (time.monotonic(), received[s])
                pending.discard(s)
        for s in pending & set(trickle):
            if trickle[s]:
                try:
                    s.send(trickle[s][:1])
                except OSError:
                    continue
                trickle[s] = trickle[s][1:]
    return {s: result.get(s) for s in sockets}


@pytest.mark.slow
def test_slow_clients_are_closed_within_the_timeouts(run):
    import httpx

    app, _ = serve([run])
    with LiveServer(app, header_timeout=0.5, body_timeout=0.5) as server:
        opened = {}

        def connect(first: bytes = b"") -> socket.socket:
            s = socket.create_connection(("127.0.0.1", server.port))
            opened[s] = time.monotonic()
            s.sendall(first)
            return s

        head = b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        idle = [connect() for _ in range(3)]
        headers = [connect(b"GET /healthz HTTP/1.1\r\n") for _ in range(3)]
        bodies = [connect(head + b"Content-Length: 1000\r\n\r\n{") for _ in range(3)]
        trickle = {s: b"X-Slow: " + b"a" * 1000 for s in headers} | {s: b'"prompt"' * 100 for s in bodies}
        with httpx.Client(base_url=server.url, timeout=10) as http:
            answered = []

            def check_health():
                for _ in range(5):
                    answered.append(http.get("/healthz").status_code)
                    time.sleep(0.1)

            checker = threading.Thread(target=check_health)
            checker.start()
            closed = closed_within(idle + headers + bodies, trickle, timeout=8)
            checker.join()
            assert answered == [200] * 5  # the server answered others meanwhile
            for s, outcome in closed.items():
                assert outcome is not None, "a slow client was never closed"
                at, reply = outcome
                assert 0.45 < at - opened[s] < 4, at - opened[s]
                if s in idle:
                    assert reply == b""  # nothing asked, nothing answered
                else:
                    assert reply.startswith(b"HTTP/1.1 408"), reply
                    message = json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]["message"]
                    assert message.startswith(f"the request's {'headers' if s in headers else 'body'} did not arrive")
                s.close()
            # a streamed reply that takes longer than both timeouts is never cut
            with http.stream("POST", "/v1/completions", json={"prompt": PROMPT, "max_tokens": 300, "stream": True}) as r:
                chunks = [line for line in r.iter_lines() if line.startswith("data: ")]
            assert chunks[-1] == "data: [DONE]" and len(chunks) == 301
            # keep-alive: a second request on one connection has its own header deadline
            assert http.get("/healthz").status_code == 200
            time.sleep(0.3)
            assert http.get("/healthz").status_code == 200


@pytest.mark.slow
def test_connections_past_the_limit_get_503_at_once(run):
    import httpx

    app, _ = serve([run])
    with LiveServer(app, max_connections=3, header_timeout=1.0) as server:
        held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(3)]
        with socket.create_connection(("127.0.0.1", server.port)) as extra:
            extra.settimeout(5)
            reply = b""
            while chunk := extra.recv(4096):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 503"), reply
        assert "3 connections open" in json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]["message"]
        for s in held:
            s.close()
        assert wait_until(lambda: httpx.get(server.url + "/healthz").status_code == 200, timeout=10)


# -- 4. Host names ------------------------------------------------------------------------------------


def test_a_loopback_server_answers_only_to_loopback_host_names(run):
    from model.serving.connections import default_allowed_hosts, parse_allowed_hosts

    assert default_allowed_hosts("0.0.0.0") is None and default_allowed_hosts("192.168.1.5") is None
    assert default_allowed_hosts("127.0.0.1") == default_allowed_hosts("::1") == default_allowed_hosts("localhost")
    assert parse_allowed_hosts("*") is None and parse_allowed_hosts("Example.org, [::1]") == ["example.org", "::1"]
    app, _ = serve([run], allowed_hosts=default_allowed_hosts("127.0.0.1"))
    with TestClient(app) as client:
        for host in ("localhost", "localhost:8000", "127.0.0.1:1234", "[::1]:8000", "[::1]", "LocalHost:80"):
            assert client.get("/healthz", headers={"Host": host}).status_code == 200, host
        for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example", "localhost.", "localhost@evil",
                     "evil@localhost", "[::1", "localhost:port", "127.0.0.2", ""):
            for method, path in (("GET", "/"), ("GET", "/v1/models"), ("POST", "/v1/completions")):
                r = client.request(method, path, headers={"Host": host}, json={"prompt": "hi"})
                error = expect_error(r, 400, "does not answer to the host name")
                assert error["code"] == "invalid_host"
    app, _ = serve([run], allowed_hosts=parse_allowed_hosts("tinygpt.example"))
    with TestClient(app) as client:
        assert client.get("/healthz", headers={"Host": "tinygpt.example:8000"}).status_code == 200
        expect_error(client.get("/healthz", headers={"Host": "localhost"}), 400, "tinygpt.example")


def test_serve_command_refuses_bad_connection_flags(capsys):
    from model.cli import serve_main

    for flag, message in (("--header_timeout=0", "--header_timeout must be a positive number of seconds"),
                          ("--body_timeout=nan", "--body_timeout must be a positive number of seconds"),
                          ("--max_connections=0", "--max_connections must be at least 1")):
        assert serve_main([flag]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1


@pytest.mark.slow
def test_python_m_model_serve_guards_its_connections(run):
    """The command line applies both: loopback Host names only by default, and the header timeout."""
    import httpx

    with ServeCommand(f"--out_dir={run}", "--header_timeout=1", "--quiet") as server:
        assert httpx.get(server.url + "/healthz", headers={"Host": f"localhost:{server.port}"}).status_code == 200
        error = expect_error(httpx.get(server.url + "/v1/models", headers={"Host": "rebound.example"}), 400,
                             "rebound.example")
        assert error["code"] == "invalid_host"
        with socket.create_connection(("127.0.0.1", server.port)) as slow:
            slow.sendall(b"GET /healthz HTTP/1.1\r\n")
            slow.settimeout(10)
            started = time.monotonic()
            assert slow.recv(4096).startswith(b"HTTP/1.1 408") and time.monotonic() - started < 5
    assert server.returncode == 0 and "Traceback" not in server.err, server.err


# -- 5. text offsets with stop strings -----------------------------------------------------------------


def test_text_offsets_count_text_held_back_by_a_stop_string(run):
    app, _ = serve([run])
    with TestClient(app) as client:
        full = complete(client, prompt=PROMPT, max_tokens=5, temperature=0)["choices"][0]["text"]
        body = dict(prompt=PROMPT, max_tokens=5, temperature=0, logprobs=1, stop=[full[1:4] + "~"])  # held, never met
        choice = complete(client, **body)["choices"][0]
        assert choice["text"] == full and choice["logprobs"]["text_offset"] == [0, 1, 2, 3, 4]
        echoed = complete(client, **body, echo=True)["choices"][0]["logprobs"]["text_offset"]
        assert echoed == list(range(len(PROMPT) + 5))
        with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
            events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
        assert [o for e in events for o in e["choices"][0]["logprobs"]["text_offset"]] == [0, 1, 2, 3, 4]


# -- random JSON bodies against every endpoint ------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
edge_values = st.sampled_from([0, 1, -1, 2, 3, 5, 20, 21, 64, 2**31, 2**63, 2**64, 0.5, 1.0, 1e308, -0.0, "", "hi",
                               "é", [], [0], [[0]], [-1], [124], [125], [10**9], ["a", "b"], True, False, None, {}])
texts = st.text(alphabet=CHARS, max_size=40)
ids = st.integers(0, len(CHARS) - 1)  # the tokenizer's (the model has 64 more)
valid = {  # values inside each field's bounds, so that many requests get as far as generating
    "prompt": texts.filter(bool) | st.lists(ids, min_size=1, max_size=40) | st.lists(texts, min_size=1, max_size=2)
    | st.lists(st.lists(ids, min_size=1, max_size=8), min_size=1, max_size=2),
    "model": st.just("padded"),
    "max_tokens": st.none() | st.integers(0, 16),
    "temperature": st.floats(0, 2),
    "top_p": st.floats(0, 1, exclude_min=True),
    "top_k": st.none() | st.integers(0, 200),
    "n": st.integers(1, 2),
    "logprobs": st.none() | st.integers(0, 20),
    "stop": st.none() | texts | st.lists(texts, max_size=4),
    "seed": st.none() | st.integers(0, 2**63 - 1),
    "stream_options": st.none() | st.fixed_dictionaries({"include_usage": st.booleans()}),
    "layer": st.none() | st.integers(0, 1),
    "head": st.none() | st.integers(0, 1),
    "frequency_penalty": st.just(0),
    "presence_penalty": st.just(0),
    "user": st.none() | texts,
}
any_value = edge_values | json_values


@pytest.fixture(scope="module")
def property_server(padded_run):
    """A server (in process) of the padded-vocabulary model with tight limits, so each request is
    cheap, and a handler that keeps every error its log records."""
    app, _ = serve([padded_run], max_batch=4, max_waiting=16, max_tokens=16, max_n=2, max_prompts=2,
                   max_prompt_tokens=48, max_attention_tokens=32)
    with server_errors() as errors, TestClient(app, raise_server_exceptions=False) as client:
        endpoints = []  # (method, path, its JSON body's fields)
        for route in app.routes:
            body = getattr(route, "body_field", None)
            fields = sorted(getattr(body.field_info.annotation, "model_fields", {})) if body is not None else []
            endpoints += [(method, route.path, fields) for method in sorted(getattr(route, "methods", ()))]
        yield client, endpoints, errors


@pytest.mark.slow
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_bodies_never_get_a_500(property_server, data):
    """Any JSON to any endpoint (the app's routes, so new ones are included): a 200 or a JSON 4xx,
    never a 500, never a stream that fails midway, never an error in the server's log, and the
    server answers /healthz after each. Bounded by max_examples and the server's tight limits."""
    client, endpoints, errors = property_server
    errors.clear()
    with_body = [endpoint for endpoint in endpoints if endpoint[2]]
    method, path, fields = data.draw(st.sampled_from(endpoints + 3 * with_body), label="endpoint")
    every_field = sorted({name for _, _, names in endpoints for name in names})
    field_values = {name: valid.get(name, st.booleans()) for name in fields}  # the rest are flags
    without_prompt = {name: values for name, values in field_values.items() if name != "prompt"}
    body = data.draw(st.one_of(
        json_values,
        st.dictionaries(st.sampled_from(every_field), any_value, max_size=6),
        st.fixed_dictionaries({}, optional={name: values | any_value for name, values in field_values.items()}),
        *[st.fixed_dictionaries({"prompt": valid["prompt"]}, optional=without_prompt)] * 3,
    ), label="body")
    raw = json.dumps(body)
    if data.draw(st.booleans(), label="stream") and isinstance(body, dict):
        raw = json.dumps({**body, "stream": True})
    with client.stream(method, path, content=raw, headers={"content-type": "application/json"}) as r:
        text = r.read().decode()
    assert r.status_code < 500, text
    if r.status_code >= 400:
        assert set(json.loads(text)["error"]) == {"message", "type", "param", "code"}
    if r.headers["content-type"].startswith("text/event-stream"):  # no stream that fails midway
        assert 'data: {"error"' not in text and text.endswith("data: [DONE]\n\n"), text
    assert not errors, [logging.Formatter().format(e) for e in errors]
    assert client.get("/healthz").json()["status"] == "ok"
