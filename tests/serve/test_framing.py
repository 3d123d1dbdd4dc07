"""Wire details checked with raw httpx: framing, content types, metrics, disconnects."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.fake_runtime import DEFAULT_SCRIPT


def test_root_and_version(http):
    r = http.get("/")
    assert r.status_code == 200 and r.text == "Ollama is running"
    assert r.headers["content-type"].startswith("text/plain")
    assert http.head("/").status_code == 200
    assert "version" in http.get("/api/version").json()
    assert http.head("/api/version").status_code == 200
    assert http.head("/api/tags").status_code == 200


@pytest.mark.parametrize("path", ["/api/generate", "/api/chat"])
def test_ndjson_stream_is_default_and_has_no_blank_lines(http, path):
    body = (
        {"model": "fake-chat", "prompt": "hi"}
        if path.endswith("generate")
        else {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}]}
    )
    r = http.post(path, json=body)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/x-ndjson"
    assert r.text.endswith("\n") and "\n\n" not in r.text
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert len(lines) == len(DEFAULT_SCRIPT) + 1
    assert all(not line["done"] for line in lines[:-1])
    last = lines[-1]
    assert last["done"] and last["done_reason"] == "stop"
    for key in (
        "total_duration",
        "load_duration",
        "prompt_eval_count",
        "prompt_eval_duration",
        "eval_count",
        "eval_duration",
    ):
        assert isinstance(last[key], int)
    assert ("context" in last) == path.endswith("generate")
    assert last["created_at"].endswith("Z")


def test_stream_false_is_one_json_object(http):
    r = http.post("/api/generate", json={"model": "fake-chat", "prompt": "hi", "stream": False})
    assert r.headers["content-type"] == "application/json"
    assert r.json()["response"] == "".join(DEFAULT_SCRIPT)


def test_sse_framing(http):
    body = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    r = http.post("/v1/chat/completions", json=body)
    assert r.headers["content-type"].startswith("text/event-stream")
    events = r.text.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    for event in events[:-2]:
        assert event.startswith("data: ")
        assert json.loads(event[6:])["object"] == "chat.completion.chunk"
    r = http.post("/v1/completions", json={"model": "fake-chat", "prompt": "x"})
    assert r.headers["content-type"] == "application/json"  # stream defaults to false


def test_progress_stream_false_answers_last_object(http):
    r = http.post("/api/pull", json={"model": "fake-x", "stream": False})
    assert r.json() == {"status": "success"}
    r = http.post("/api/pull", json={"name": "fake-x"})
    assert r.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(x) for x in r.text.splitlines()]
    pulling = [x for x in lines if x["status"].startswith("pulling ") and "digest" in x]
    assert pulling and {"total", "completed"} <= set(pulling[0])


def test_copy_delete_bodies(http):
    r = http.post("/api/copy", json={"source": "fake-tiny", "destination": "tiny-copy"})
    assert r.status_code == 200 and r.content == b""
    r = http.request("DELETE", "/api/delete", json={"model": "tiny-copy"})
    assert r.status_code == 200 and r.content == b""


def test_show_legacy_name(http):
    r = http.post("/api/show", json={"name": "fake-chat"})
    body = r.json()
    for key in (
        "model_info",
        "modelfile",
        "parameters",
        "template",
        "details",
        "capabilities",
        "modified_at",
    ):
        assert key in body


def test_cluster(http):
    assert "workers" in http.get("/api/cluster").json()


def _wait(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize(
    "path,body",
    [
        ("/api/generate", {"model": "fake-chat", "prompt": "x"}),
        ("/api/chat", {"model": "fake-chat", "messages": [{"role": "user", "content": "x"}]}),
        (
            "/v1/chat/completions",
            {"model": "fake-chat", "messages": [{"role": "user", "content": "x"}], "stream": True},
        ),
    ],
)
def test_client_disconnect_cancels_generation(served, runtime, path, body):
    runtime.enqueue(tokens=tuple(f"t{i} " for i in range(500)), delay=0.02)
    before = len(runtime.requests)
    with (
        httpx.Client(base_url=served.url, timeout=10) as client,
        client.stream("POST", path, json=body) as r,
    ):
        lines = r.iter_lines()
        assert next(lines)
        rid = runtime.requests[before].request_id
    assert _wait(lambda: rid in runtime.cancelled), "generation was not cancelled"
    assert rid not in runtime.completed


def test_metrics(http):
    http.post("/api/generate", json={"model": "fake-chat", "prompt": "hi", "stream": False})
    text = http.get("/metrics").text
    assert 'omax_http_requests_total{method="POST",route="/api/generate",status="200"}' in text
    assert 'omax_generation_tokens_total{model="fake-chat"}' in text
    assert "omax_time_to_first_token_seconds_bucket" in text


def test_openapi_describes_routes(http):
    doc = http.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    for path in (
        "/api/generate",
        "/api/chat",
        "/api/blobs/{digest}",
        "/v1/chat/completions",
        "/v1/models/{model}",
    ):
        assert path in doc["paths"]
    assert "GenerateBody" in doc["components"]["schemas"]
    assert "from" in doc["components"]["schemas"]["CreateBody"]["properties"]


def test_concurrent_streams_do_not_mix(served):
    import asyncio

    async def one(client: httpx.AsyncClient, i: int) -> tuple[int, str]:
        body = {"model": "fake-chat", "prompt": f"p{i}", "options": {"num_predict": i % 6 + 1}}
        text = ""
        async with client.stream("POST", "/api/generate", json=body) as r:
            async for line in r.aiter_lines():
                text += json.loads(line)["response"]
        return i, text

    async def main():
        async with httpx.AsyncClient(base_url=served.url, timeout=10) as client:
            return await asyncio.gather(*(one(client, i) for i in range(32)))

    for i, text in asyncio.run(main()):
        assert text == "".join(DEFAULT_SCRIPT[: i % 6 + 1])
