"""The official ``openai`` client against a real server over FakeRuntime."""

from __future__ import annotations

import json

import openai
import pytest

from omax.engine.request import ToolCall
from tests.fake_runtime import DEFAULT_SCRIPT

TEXT = "".join(DEFAULT_SCRIPT)


@pytest.fixture
def client(served) -> openai.OpenAI:
    return openai.OpenAI(base_url=served.url + "/v1", api_key="x", max_retries=0)


def test_chat_completion(client, runtime):
    r = client.chat.completions.create(
        model="fake-chat", messages=[{"role": "user", "content": "hi"}]
    )
    assert r.object == "chat.completion"
    assert r.choices[0].message.content == TEXT
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == len(DEFAULT_SCRIPT)
    assert r.usage.prompt_tokens_details.cached_tokens == 0  # the fake has no prefix cache
    opts = runtime.requests[-1].options
    assert opts.temperature == 1.0 and opts.top_p == 1.0


def test_chat_completion_max_tokens_and_format(client, runtime):
    r = client.chat.completions.create(
        model="fake-chat",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=2,
        temperature=0.2,
        response_format={"type": "json_object"},
    )
    assert r.choices[0].finish_reason == "length"
    req = runtime.requests[-1]
    assert req.options.num_predict == 2 and req.options.temperature == 0.2 and req.format == "json"
    schema = {"type": "object", "properties": {"x": {"type": "integer"}}}
    client.chat.completions.create(
        model="fake-chat",
        messages=[{"role": "user", "content": "hi"}],
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
    )
    assert runtime.requests[-1].format == schema


def test_chat_completion_streaming_with_usage(client):
    stream = client.chat.completions.create(
        model="fake-chat",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == TEXT
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == len(DEFAULT_SCRIPT)


def test_tool_calls_have_string_arguments(client, runtime):
    runtime.enqueue(tokens=(), tool_calls=(ToolCall("add", {"a": 1}),))
    r = client.chat.completions.create(
        model="fake-chat",
        messages=[
            {"role": "user", "content": "add"},
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "add", "arguments": '{"a": 2}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "3"},
        ],
        tools=[{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}],
    )
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls"
    assert json.loads(call.function.arguments) == {"a": 1}
    msgs = runtime.requests[-1].messages
    assert msgs[1].tool_calls[0].arguments == {"a": 2}
    assert msgs[2].tool_name == "add"


def test_completions(client):
    r = client.completions.create(model="fake-chat", prompt="once upon")
    assert r.choices[0].text == TEXT and r.object == "text_completion"
    chunks = list(
        client.completions.create(model="fake-chat", prompt="x", stream=True, max_tokens=3)
    )
    assert "".join(c.choices[0].text for c in chunks) == "Hello from the"
    assert chunks[-1].choices[0].finish_reason == "length"


def test_embeddings_float_and_base64(client):
    r = client.embeddings.create(model="fake-embed", input=["a", "b"], encoding_format="float")
    assert len(r.data) == 2 and len(r.data[0].embedding) == 16
    r64 = client.embeddings.create(model="fake-embed", input="a")  # the client asks for base64
    assert r64.data[0].embedding == pytest.approx(r.data[0].embedding, abs=1e-6)
    r = client.embeddings.create(
        model="fake-embed", input="a", dimensions=3, encoding_format="float"
    )
    assert len(r.data[0].embedding) == 3


def test_models(client):
    ids = [m.id for m in client.models.list().data]
    assert "fake-chat:latest" in ids
    m = client.models.retrieve("fake-chat")
    assert m.id == "fake-chat" and m.owned_by == "library"


def test_errors(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert err.value.body["message"] == "model 'nope' not found"
    assert err.value.body["type"] == "not_found_error"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="fake-chat", messages=[])
    assert err.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")
