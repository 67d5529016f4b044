"""POST /v1/chat/completions (model/serving/api.py): OpenAI's chat shape, streamed or not, n, stop
strings, seeds, logprobs, the end-of-turn token, the history cut to fit the context, the same engine
and batch as completions, and every bad input answered with a clear JSON error."""

from __future__ import annotations

import json
import threading

import pytest
import torch

pytest.importorskip("fastapi", reason="the serve extra (FastAPI, uvicorn) is not installed")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx")

from fastapi.testclient import TestClient  # noqa: E402

from model.checkpoint import load_model  # noqa: E402
from model.data.chat import fit_history, prompt_ids, render  # noqa: E402
from serving_helpers import complete, expect_error, make_run, serve, wait_until  # noqa: E402

HELLO = [{"role": "user", "content": "Hello there"}]


def make_brief_run(out_dir):
    """make_run's chat model, but one that often ends its turn: its final norm's bias leans towards
    the end-of-turn token's (tied) embedding, adding 3.5 to that token's logit."""
    from model.checkpoint import model_state, save_checkpoint

    make_run(out_dir, chat=True)
    m, tok, _ = load_model(out_dir)
    with torch.no_grad():
        end = m.transformer.wte.weight[tok.end_id]
        m.transformer.ln_f.bias += 3.5 * end / end.norm() ** 2
    save_checkpoint(out_dir / "ckpt.pt", model_state(m, m.config, tok.to_meta()))
    return out_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-chat")
    return make_run(root / "chatty", chat=True), make_run(root / "plain"), make_brief_run(root / "brief")


@pytest.fixture(scope="module")
def tok(runs):
    return load_model(runs[0])[1]


@pytest.fixture
def client(runs):
    app, _ = serve(list(runs))
    with TestClient(app) as c:
        yield c


def chat(client, **body) -> dict:
    """A chat completion that must succeed: its JSON reply."""
    r = client.post("/v1/chat/completions", json={"messages": HELLO, **body})
    assert r.status_code == 200, r.text
    return r.json()


def chat_stream(client, **body) -> list[dict]:
    """The JSON chunks of a streamed chat completion; checks the stream's shape and its [DONE]."""
    with client.stream("POST", "/v1/chat/completions", json={"messages": HELLO, **body, "stream": True}) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        data = [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return [json.loads(d) for d in data[:-1]]


def streamed_contents(chunks: list[dict], n: int) -> list[str]:
    """Each choice's content put together from its deltas; checks each opens with the role alone."""
    contents = [""] * n
    opened = set()
    for chunk in chunks:
        assert chunk["object"] == "chat.completion.chunk" and chunk["id"].startswith("chatcmpl-")
        for choice in chunk["choices"]:
            i = choice["index"]
            if i not in opened:
                assert choice["delta"] == {"role": "assistant", "content": ""}
                opened.add(i)
            else:
                assert "role" not in choice["delta"]
                contents[i] += choice["delta"].get("content", "")
    assert opened == set(range(n))
    return contents


def test_models_say_which_can_chat(client):
    data = {d["id"]: d["tinygpt"] for d in client.get("/v1/models").json()["data"]}
    assert data["chatty"]["chat"] is True and data["plain"]["chat"] is False
    assert data["chatty"]["tokenizer"] == "char"  # the base tokenizer's kind


def test_reply_is_a_completion_of_the_chat_template(client, tok):
    """The reply is what /v1/completions writes after prompt_ids, up to the end-of-turn token, which
    ends it (finish_reason "stop") and is left out."""
    ids = prompt_ids(tok, HELLO)
    stops = 0
    for seed in range(3):
        body = dict(model="brief", max_tokens=24, temperature=1.0, seed=seed, n=4)
        reply = chat(client, **body)
        assert reply["object"] == "chat.completion" and reply["model"] == "brief"
        texts = complete(client, prompt=ids, **body)["choices"]
        assert reply["usage"]["prompt_tokens"] == len(ids)
        generated = 0
        for choice, text in zip(reply["choices"], texts):
            message, full = choice["message"], text["text"]
            assert message["role"] == "assistant" and "<|end|>" not in message["content"]
            if choice["finish_reason"] == "stop":
                stops += 1
                assert full.startswith(message["content"] + "<|end|>")
                generated += len(tok.encode(message["content"])) + 1  # the end token counts
            else:
                assert choice["finish_reason"] == "length" and message["content"] == full
                generated += 24
        assert reply["usage"]["completion_tokens"] == generated
    assert 0 < stops < 12  # some replies end their turn, some run to max_tokens


def test_greedy_stream_equals_the_reply_and_ends_with_done(client):
    chunks = chat_stream(client, max_tokens=20, temperature=0, stream_options={"include_usage": True})
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 20
    content_chunks = [c for c in chunks[1:-1]]
    assert len(content_chunks) == 20  # one chunk per token after the role's
    assert content_chunks[-1]["choices"][0]["finish_reason"] == "length"
    whole = chat(client, max_tokens=20, temperature=0)["choices"][0]
    assert streamed_contents(chunks, 1) == [whole["message"]["content"]]
    assert len(whole["message"]["content"]) == 20 and whole["finish_reason"] == "length"


def test_seed_repeats_n_differs_and_streams_alike(client):
    body = dict(max_tokens=20, temperature=1.0, seed=3, n=3)
    first = [c["message"]["content"] for c in chat(client, **body)["choices"]]
    assert [c["message"]["content"] for c in chat(client, **body)["choices"]] == first
    assert len(set(first)) == 3
    assert chat(client, **{**body, "n": 1})["choices"][0]["message"]["content"] == first[0]  # choice j: seed + j
    assert chat(client, **{**body, "seed": 4})["choices"][0]["message"]["content"] != first[0]
    assert streamed_contents(chat_stream(client, **body), 3) == first


def test_stop_strings_cut_the_reply(client):
    full = chat(client, max_tokens=30, temperature=0)["choices"][0]["message"]["content"]
    stop = full[12:15]
    choice = chat(client, max_tokens=30, temperature=0, stop=stop)["choices"][0]
    assert (choice["message"]["content"], choice["finish_reason"]) == (full[: full.index(stop)], "stop")
    streamed = chat_stream(client, max_tokens=30, temperature=0, stop=[stop])
    assert streamed_contents(streamed, 1) == [full[: full.index(stop)]]
    assert streamed[-1]["choices"][0]["finish_reason"] == "stop"


def test_logprobs_in_openai_chat_shape(client, runs, tok):
    reply = chat(client, max_tokens=12, temperature=0, logprobs=True, top_logprobs=3)["choices"][0]
    content = reply["logprobs"]["content"]
    assert "".join(entry["token"] for entry in content) == reply["message"]["content"]
    m, _, _ = load_model(runs[0])
    ids = prompt_ids(tok, HELLO)
    with torch.no_grad():
        logits, _ = m.eval()(torch.tensor([ids + tok.encode(reply["message"]["content"])]))
    expected = torch.log_softmax(logits[0, len(ids) - 1: -1].float(), dim=-1)
    for i, entry in enumerate(content):
        token_id = tok.encode(entry["token"])[0]
        assert entry["logprob"] == pytest.approx(expected[i, token_id].item(), abs=1e-4)
        assert entry["bytes"] == list(entry["token"].encode())
        assert len(entry["top_logprobs"]) == 3 and entry["top_logprobs"][0]["token"] == entry["token"]  # greedy
        assert set(entry["top_logprobs"][0]) == {"token", "logprob", "bytes"}
    assert chat(client, max_tokens=5)["choices"][0]["logprobs"] is None
    plain = chat(client, max_tokens=5, temperature=0, logprobs=True)["choices"][0]["logprobs"]["content"]
    # greedy again, so the same first tokens as above (a sampled reply may end at once, at <|end|>)
    assert [entry["token"] for entry in plain] == [entry["token"] for entry in content[:5]]
    assert len(plain) == 5 and all(entry["top_logprobs"] == [] for entry in plain)
    streamed = chat_stream(client, max_tokens=5, temperature=0, logprobs=True, top_logprobs=2)
    tokens = [e["token"] for c in streamed[1:] for e in c["choices"][0]["logprobs"]["content"]]
    assert "".join(tokens) == chat(client, max_tokens=5, temperature=0)["choices"][0]["message"]["content"]


def test_a_long_history_loses_its_oldest_turns_but_not_the_system(client, tok):
    messages = [{"role": "system", "content": "Be brief."}]
    for word in ("one", "two", "three", "four", "five", "six"):
        messages += [{"role": "user", "content": f"Question {word}?"}, {"role": "assistant", "content": "Yes."}]
    messages.append({"role": "user", "content": "Last one?"})
    reply = chat(client, messages=messages, max_tokens=8, temperature=0)
    kept = fit_history(tok, messages, 32 - 8)  # block_size 32 leaves 24 tokens for the conversation
    assert kept[0] == messages[0] and kept[-1] == messages[-1] and len(kept) < len(messages)
    assert reply["usage"]["prompt_tokens"] == len(prompt_ids(tok, kept)) <= 24
    # asking for more than the context holds still keeps half of it for the conversation
    long = chat(client, messages=messages, temperature=0)
    assert long["usage"]["prompt_tokens"] == len(prompt_ids(tok, fit_history(tok, messages, 16)))
    assert long["usage"]["completion_tokens"] <= 32
    # the last message may be the assistant's: a new assistant turn follows it
    assert chat(client, messages=messages[:-1], max_tokens=3)["usage"]["prompt_tokens"] > 0


def test_chat_and_completions_share_the_batch(runs):
    app, served = serve([runs[0]], max_batch=8)
    engine = served[0].engine
    with TestClient(app) as client:
        alone = chat(client, max_tokens=20, temperature=0)["choices"][0]["message"]["content"]
        others = [threading.Thread(target=complete, args=(client,), kwargs=dict(prompt="A", max_tokens=300)),
                  threading.Thread(target=chat, args=(client,), kwargs=dict(max_tokens=300, temperature=2.0, seed=1))]
        for t in others:
            t.start()
        assert wait_until(lambda: engine.load()["active"] >= 1)
        busy = chat(client, max_tokens=20, temperature=0)["choices"][0]["message"]["content"]
        for t in others:
            t.join()
    assert busy == alone
    assert engine.peak >= 2


def test_attention_over_a_conversation(client, tok):
    messages = HELLO + [{"role": "assistant", "content": "Hi"}]
    body = client.post("/v1/attention", json={"model": "chatty", "messages": messages, "layer": 0, "head": 1}).json()
    assert body["token_ids"] == render(tok, messages)[0]
    assert body["tokens"][0] == "<|user|>" and body["tokens"][-1] == "<|end|>"
    by_ids = client.post("/v1/attention", json={"model": "chatty", "prompt": body["token_ids"], "layer": 0, "head": 1})
    assert by_ids.json()["weights"] == body["weights"]
    expect_error(client.post("/v1/attention", json={"model": "chatty", "messages": messages, "prompt": "x"}), 422,
                 "not both")
    expect_error(client.post("/v1/attention", json={"model": "chatty"}), 422, "'prompt' is required", "'messages'")
    expect_error(client.post("/v1/attention", json={"model": "chatty", "messages": [{"role": "user"}]}), 422,
                 "message 0 (user) has empty")
    expect_error(client.post("/v1/attention", json={"model": "plain", "messages": messages}), 400, "no chat template")


def test_a_model_without_a_chat_template_gets_a_clear_400(client):
    error = expect_error(client.post("/v1/chat/completions", json={"model": "plain", "messages": HELLO}), 400,
                         "model 'plain' has no chat template", "docs/chat.md")
    assert (error["param"], error["code"]) == ("model", "model_not_chat")
    expect_error(client.post("/v1/chat/completions", json={"model": "nobody", "messages": HELLO}), 404, "not served")


@pytest.mark.parametrize("messages, status, words", [
    (None, 422, ["messages"]),
    ([], 422, ["non-empty list"]),
    ("Hello", 422, ["non-empty list"]),
    ([{"role": "bot", "content": "Hi"}], 422, ["unknown role 'bot'"]),
    ([{"role": "user", "content": ""}], 422, ["message 0 (user) has empty"]),
    ([{"role": "user", "content": ["parts"]}], 422, ["non-text content"]),
    (["Hello"], 422, ["message 0 must be an object"]),
    ([{"role": "user", "content": "caf\u00e9"}], 400, ["outside this character-level vocabulary"]),
])
def test_bad_messages_get_a_clear_error(client, messages, status, words):
    body = {"model": "chatty", "max_tokens": 3} if messages is None else {"messages": messages, "max_tokens": 3}
    error = expect_error(client.post("/v1/chat/completions", json=body), status, *words)
    assert error["param"] == "messages"


@pytest.mark.parametrize("body, status, param, words", [
    ({"max_tokens": 5000}, 400, "max_tokens", ["more than the limit of 2048"]),
    ({"n": 9}, 400, "n", ["more than the limit of 8"]),
    ({"logprobs": True, "top_logprobs": 21}, 400, "top_logprobs", ["more than the limit of 20"]),
    ({"top_logprobs": 2}, 400, "top_logprobs", ["needs logprobs: true"]),
    ({"logprobs": 3}, 422, "logprobs", ["logprobs"]),
    ({"temperature": 3}, 422, "temperature", ["temperature"]),
    ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop", ["at most 4 stop strings"]),
    ({"stream_options": {"include_usage": True}}, 400, "stream_options", ["needs stream: true"]),
    ({"tools": []}, 422, "tools", ["unknown or unsupported parameter 'tools'"]),
    ({"presence_penalty": 0.5}, 400, "frequency_penalty", ["not supported"]),
])
def test_bad_fields_get_the_completions_errors(client, body, status, param, words):
    error = expect_error(client.post("/v1/chat/completions", json={"messages": HELLO, **body}), status, *words)
    assert error["param"] == param


def test_conversations_are_bounded(runs):
    app, _ = serve([runs[0]], max_prompt_tokens=40, max_messages=3)
    with TestClient(app) as client:
        error = expect_error(client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "a" * 40}]}),
                             400, "more than the limit of 40")
        assert error["code"] == "context_length_exceeded"
        expect_error(client.post("/v1/chat/completions", json={"messages": HELLO * 4}), 400, "at most 3 messages")
        assert chat(client, messages=HELLO * 3, max_tokens=2, temperature=0)["usage"]["completion_tokens"] == 2
        invalid = client.post("/v1/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"})
        expect_error(invalid, 400, "not valid JSON")


@pytest.fixture(scope="module")
def property_client(runs):
    """The chat model served with tight limits (cheap requests), and the errors the server logs."""
    from serving_helpers import server_errors

    app, _ = serve([runs[0]], max_batch=4, max_waiting=16, max_tokens=16, max_n=2, max_prompt_tokens=64,
                   max_messages=8)
    with server_errors() as errors, TestClient(app, raise_server_exceptions=False) as client:
        yield client, errors


@pytest.mark.slow
def test_random_conversations_never_get_a_500(property_client):
    """Random messages (known and unknown roles, text in and out of the vocabulary, wrong types) and
    sampling fields: a 200 or a JSON 4xx, never a 500, a broken stream or an error in the log."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    client, errors = property_client
    text = st.text(alphabet="Helo, wrd!?\n\u00e9<|>", max_size=12)
    message = st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant", "tool", ""]),
                                     "content": text | st.none() | st.integers()})
    fields = {"max_tokens": st.none() | st.integers(0, 20), "temperature": st.floats(0, 2), "n": st.integers(1, 3),
              "stop": st.none() | text | st.lists(text, max_size=5), "seed": st.none() | st.integers(0, 9),
              "logprobs": st.booleans(), "top_logprobs": st.none() | st.integers(0, 25), "stream": st.booleans(),
              "top_p": st.floats(0.01, 1), "top_k": st.none() | st.integers(0, 5)}
    body = st.fixed_dictionaries({"messages": st.lists(message, max_size=10) | text}, optional=fields)

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(body=body)
    def check(body):
        errors.clear()
        with client.stream("POST", "/v1/chat/completions", json=body) as r:
            reply = r.read().decode()
        assert r.status_code < 500, reply
        if r.status_code >= 400:
            assert set(json.loads(reply)["error"]) == {"message", "type", "param", "code"}
        elif body.get("stream"):
            assert 'data: {"error"' not in reply and reply.endswith("data: [DONE]\n\n"), reply
        else:
            assert all(c["message"]["role"] == "assistant" for c in json.loads(reply)["choices"])
        assert not errors, errors

    check()
