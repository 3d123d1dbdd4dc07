"""The end-to-end path: official clients -> omax serve -> Dask actor -> zarr replica."""

import httpx
import pytest

from tests.e2e.conftest import DEMO

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_root_and_version(server):
    r = httpx.get(server + "/")
    assert r.status_code == 200 and r.text == "Ollama is running"
    assert httpx.head(server + "/").status_code == 200
    v = httpx.get(server + "/api/version").json()
    assert isinstance(v["version"], str) and v["version"]


def test_demo_model_is_listed(server, monkeypatch):
    import ollama

    monkeypatch.setenv("OLLAMA_HOST", server)
    models = ollama.Client().list().models
    names = [m.model for m in models]
    assert DEMO in names
    demo = models[names.index(DEMO)]
    assert demo.digest and demo.size > 50_000_000
    assert demo.details.format == "gguf" and demo.details.quantization_level == "Q4_1"


def test_chat_through_the_official_client(server, monkeypatch):
    import ollama

    monkeypatch.setenv("OLLAMA_HOST", server)
    client = ollama.Client(timeout=300)
    reply = client.chat(
        model=DEMO,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        options={"temperature": 0, "num_predict": 24},
    )
    assert reply.done and reply.done_reason in ("stop", "length")
    assert "Paris" in reply.message.content
    assert reply.eval_count and reply.eval_count <= 24
    assert reply.prompt_eval_count and reply.prompt_eval_count > 5
    assert reply.total_duration and reply.total_duration > reply.eval_duration > 0

    pieces = list(
        client.chat(
            model=DEMO,
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            options={"temperature": 0, "num_predict": 24},
            stream=True,
        )
    )
    assert len(pieces) > 3 and pieces[-1].done
    assert "".join(p.message.content for p in pieces) == reply.message.content


def test_generate_and_ps(server, monkeypatch):
    import ollama

    monkeypatch.setenv("OLLAMA_HOST", server)
    client = ollama.Client(timeout=300)
    out = client.generate(
        model=DEMO, prompt="Count: one, two,", options={"num_predict": 8, "seed": 1}
    )
    assert out.done and out.response and out.context
    loaded = {m.model: m for m in client.ps().models}
    assert DEMO in loaded
    assert loaded[DEMO].expires_at is not None and loaded[DEMO].context_length > 0


def test_openai_chat(server):
    import openai

    client = openai.OpenAI(base_url=server + "/v1", api_key="unused")
    completion = client.chat.completions.create(
        model=DEMO,
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=12,
        temperature=0,
    )
    assert completion.choices[0].message.content
    assert completion.usage.completion_tokens <= 12


def test_unknown_model_is_404(server):
    r = httpx.post(server + "/api/chat", json={"model": "nope:1", "messages": []})
    assert r.status_code == 404
    assert r.json() == {"error": "model 'nope:1' not found"}


def test_openai_streaming_completions_and_models(server):
    import openai

    client = openai.OpenAI(base_url=server + "/v1", api_key="unused")
    stream = client.chat.completions.create(
        model=DEMO,
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens <= 8
    completion = client.completions.create(model=DEMO, prompt="One, two,", max_tokens=4)
    assert completion.choices[0].text
    ids = [m.id for m in client.models.list().data]
    assert DEMO in ids
    assert client.models.retrieve(DEMO).id == DEMO


def test_structured_output_with_the_real_model(server, monkeypatch):
    import json

    import ollama

    monkeypatch.setenv("OLLAMA_HOST", server)
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"],
    }
    reply = ollama.Client(timeout=300).chat(
        model=DEMO,
        messages=[
            {"role": "user", "content": "Give the capital of France and its population as JSON."}
        ],
        format=schema,
        options={"temperature": 0, "num_predict": 64},
    )
    data = json.loads(reply.message.content)
    assert isinstance(data["city"], str) and isinstance(data["population"], int)


def test_generate_streams_with_the_official_client(server, monkeypatch):
    import ollama

    monkeypatch.setenv("OLLAMA_HOST", server)
    parts = list(
        ollama.Client(timeout=300).generate(
            model=DEMO, prompt="Hello", stream=True, options={"num_predict": 6}
        )
    )
    assert parts[-1].done and parts[-1].context and parts[-1].eval_count <= 6
    assert all(not p.done for p in parts[:-1])


def test_seeded_request_same_alone_and_among_16_concurrent(server):
    """Through HTTP and the embedded cluster on the default quant: a seeded chat gives
    the same answer alone and while 15 other requests share its batch."""
    import concurrent.futures

    import ollama

    client = ollama.Client(host=server, timeout=300)

    def chat(i: int, seed: int) -> str:
        reply = client.chat(
            model=DEMO,
            messages=[{"role": "user", "content": f"Invent a short story about creature {i}."}],
            options={"temperature": 0.9, "seed": seed, "num_predict": 24, "top_p": 0.95},
        )
        return reply.message.content

    alone = chat(0, 7)
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(chat, i, 7 if i == 0 else -1) for i in range(16)]
        batched = futures[0].result()
        assert all(f.result() for f in futures)
    assert alone and batched == alone
