"""The official ``ollama`` client against a real server over FakeRuntime."""

from __future__ import annotations

import hashlib

import ollama
import pytest

from omax.engine.request import ToolCall
from tests.fake_runtime import DEFAULT_SCRIPT


@pytest.fixture
def client(served) -> ollama.Client:
    return ollama.Client(host=served.url)


def test_generate_streaming(client, runtime):
    parts = list(client.generate(model="fake-chat", prompt="hi there", stream=True))
    assert "".join(p.response for p in parts) == "".join(DEFAULT_SCRIPT)
    assert [p.done for p in parts].count(True) == 1
    last = parts[-1]
    assert last.done and last.done_reason == "stop"
    assert last.eval_count == len(DEFAULT_SCRIPT) and last.total_duration > 0
    assert last.context


def test_generate_not_streaming_honours_num_predict(client, runtime):
    r = client.generate(
        model="fake-chat", prompt="hi", options={"num_predict": 2, "temperature": 0}
    )
    assert r.response == "Hello from"
    assert r.done_reason == "length" and r.eval_count == 2
    assert runtime.requests[-1].options.temperature == 0.0


def test_generate_stop_sequence(client):
    r = client.generate(model="fake-chat", prompt="hi", options={"stop": [" the"]})
    assert r.response == "Hello from"


def test_chat_streaming_and_not(client):
    messages = [{"role": "user", "content": "hello"}]
    parts = list(client.chat(model="fake-chat", messages=messages, stream=True))
    assert "".join(p.message.content for p in parts) == "".join(DEFAULT_SCRIPT)
    assert parts[-1].done_reason == "stop" and parts[-1].eval_count == len(DEFAULT_SCRIPT)
    whole = client.chat(model="fake-chat", messages=messages)
    assert whole.message.role == "assistant"
    assert whole.message.content == "".join(DEFAULT_SCRIPT)


def test_chat_think_and_tools(client, runtime):
    runtime.enqueue(
        tokens=("ok",), thinking=("hmm",), tool_calls=(ToolCall("add", {"a": 1, "b": 2}),)
    )
    tools = [
        {
            "type": "function",
            "function": {
                "name": "add",
                "description": "add",
                "parameters": {"type": "object", "properties": {}},
            },
        }
    ]
    r = client.chat(
        model="fake-chat", messages=[{"role": "user", "content": "1+2"}], tools=tools, think=True
    )
    assert r.message.thinking == "hmm"
    assert r.message.content == "ok"
    assert r.message.tool_calls[0].function.name == "add"
    assert r.message.tool_calls[0].function.arguments == {"a": 1, "b": 2}
    assert runtime.requests[-1].think is True and runtime.requests[-1].tools


def test_chat_structured_output_and_keep_alive(client, runtime):
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    client.chat(
        model="fake-chat",
        messages=[{"role": "user", "content": "x"}],
        format=schema,
        keep_alive="1h30m",
    )
    req = runtime.requests[-1]
    assert req.format == schema and req.keep_alive == 5400.0


def test_load_and_unload(client, runtime):
    r = client.generate(model="fake-tiny", keep_alive=-1)
    assert r.done and r.done_reason == "load"
    assert "fake-tiny:latest" in [m.model for m in client.ps().models]
    r = client.chat(model="fake-tiny", messages=[], keep_alive=0)
    assert r.done_reason == "unload"
    assert "fake-tiny:latest" not in [m.model for m in client.ps().models]


def test_unknown_model(client):
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model="nope", messages=[{"role": "user", "content": "x"}])
    assert err.value.status_code == 404 and err.value.error == "model 'nope' not found"
    with pytest.raises(ollama.ResponseError) as err:
        list(client.generate(model="nope", prompt="x", stream=True))
    assert err.value.status_code == 404


def test_error_after_stream_started_is_a_line(client, runtime):
    from omax.errors import EngineDead

    runtime.enqueue(tokens=("a", "b", "c"), fail_after=2, error=EngineDead("worker died"))
    got = []
    with pytest.raises(ollama.ResponseError) as err:
        for part in client.generate(model="fake-chat", prompt="x", stream=True):
            got.append(part.response)
    assert got == ["a", "b"]
    assert err.value.error == "worker died"


def test_embed_and_embeddings(client):
    r = client.embed(model="fake-embed", input=["a b", "c"])
    assert len(r.embeddings) == 2
    assert abs(sum(v * v for v in r.embeddings[0]) - 1.0) < 1e-6
    r = client.embed(model="fake-embed", input="a", dimensions=4)
    assert len(r.embeddings[0]) == 4
    assert abs(sum(v * v for v in r.embeddings[0]) - 1.0) < 1e-6
    legacy = client.embeddings(model="fake-embed", prompt="a")
    assert len(legacy.embedding) == 16
    with pytest.raises(ollama.ResponseError) as err:
        client.embed(model="fake-chat", input="a")
    assert err.value.status_code == 400


def test_list_show_ps(client):
    names = [m.model for m in client.list().models]
    assert {"fake-chat:latest", "fake-embed:latest"} <= set(names)
    info = client.show("fake-chat")
    assert info.modelinfo["general.architecture"] == "llama"
    assert "thinking" in info.capabilities and info.details.family == "llama"
    assert info.modelfile and info.template and info.modified_at
    client.generate(model="fake-chat", keep_alive="5m")
    loaded = {m.model: m for m in client.ps().models}
    assert loaded["fake-chat:latest"].context_length == 4096


def test_pull_streaming_and_not(client):
    statuses = [p.status for p in client.pull("fake-pulled", stream=True)]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    assert "verifying sha256 digest" in statuses and "writing manifest" in statuses
    assert client.pull("fake-pulled2").status == "success"
    with pytest.raises(ollama.ResponseError) as err:
        client.pull("not-a-model")
    assert err.value.status_code == 404


def test_push(client):
    statuses = [p.status for p in client.push("fake-chat", stream=True)]
    assert statuses[0] == "retrieving manifest" and statuses[-1] == "success"


def test_create_from_blobs_copy_delete(client, runtime, tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"\x00weights" * 1000)
    config = tmp_path / "config.json"
    config.write_text("{}")
    files = {p.name: client.create_blob(p) for p in (weights, config)}
    assert (
        files["model.safetensors"] == "sha256:" + hashlib.sha256(weights.read_bytes()).hexdigest()
    )
    assert files["model.safetensors"] in runtime.blobs
    client.create_blob(config)  # already present: 200
    statuses = [p.status for p in client.create(model="my-sentence", files=files, stream=True)]
    assert statuses[-1] == "success"
    assert client.show("my-sentence").capabilities == ["embedding"]
    assert client.create(model="my-chat", from_="fake-chat", system="be brief").status == "success"
    assert client.show("my-chat").modelinfo is not None
    assert client.copy("my-chat", "my-chat-copy").status == "success"
    assert client.delete("my-chat-copy").status == "success"
    with pytest.raises(ollama.ResponseError) as err:
        client.delete("my-chat-copy")
    assert err.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as err:
        client.copy("missing-model", "x")
    assert err.value.status_code == 404


def test_async_client_streams(served):
    import asyncio

    async def main():
        client = ollama.AsyncClient(host=served.url)
        parts = [
            p
            async for p in await client.chat(
                model="fake-chat", messages=[{"role": "user", "content": "x"}], stream=True
            )
        ]
        return "".join(p.message.content for p in parts)

    assert asyncio.run(main()) == "".join(DEFAULT_SCRIPT)


def test_images_reach_a_vision_model(client, runtime):
    client.chat(
        model="fake-chat",
        messages=[{"role": "user", "content": "see", "images": [b"\x89PNG fake"]}],
    )
    assert runtime.requests[-1].messages[0].images
    with pytest.raises(ollama.ResponseError) as err:
        client.generate(model="fake-tiny", prompt="see", images=[b"\x89PNG fake"])
    assert err.value.status_code == 400 and "images" in err.value.error
