"""Bad input gets the status and body OLLAMA_API.md gives: never a 500, never a traceback."""

from __future__ import annotations

import hashlib
import json

import pytest

from tests.serve.conftest import MAX_BODY

CHAT = {"model": "fake-chat", "messages": [{"role": "user", "content": "x"}]}
GEN = {"model": "fake-chat", "prompt": "x"}


def ollama_error(r, status: int, contains: str = "") -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and isinstance(body["error"], str)
    assert contains in body["error"]
    assert "Traceback" not in r.text
    return body["error"]


def openai_error(r, status: int, kind: str) -> None:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["type"] == kind and err["param"] is None and err["code"] is None
    assert isinstance(err["message"], str) and "Traceback" not in r.text


@pytest.mark.parametrize(
    "path", ["/api/generate", "/api/chat", "/api/embed", "/api/show", "/api/create", "/api/copy"]
)
def test_malformed_json(http, path):
    r = http.post(path, content=b'{"model": ', headers={"content-type": "application/json"})
    ollama_error(r, 400, "invalid JSON")


@pytest.mark.parametrize(
    "path,body,contains",
    [
        ("/api/generate", {"prompt": "x"}, "model is required"),
        ("/api/chat", {"messages": []}, "model is required"),
        ("/api/embed", {"input": "x"}, "model is required"),
        ("/api/show", {}, "model is required"),
        ("/api/pull", {}, "model is required"),
        ("/api/generate", [1, 2], "JSON object"),
        ("/api/generate", {**GEN, "model": 5}, "model"),
        ("/api/generate", {**GEN, "stream": "yes"}, "stream"),
        ("/api/generate", {**GEN, "options": {"temperature": "hot"}}, "options.temperature"),
        ("/api/generate", {**GEN, "options": {"num_predict": 1.5}}, "options.num_predict"),
        ("/api/generate", {**GEN, "options": {"stop": "x"}}, "options.stop"),
        ("/api/generate", {**GEN, "options": {"seed": True}}, "options.seed"),
        ("/api/chat", {**CHAT, "messages": [{"content": "no role"}]}, "role"),
        ("/api/chat", {**CHAT, "messages": "hi"}, "messages"),
        ("/api/generate", {**GEN, "format": "xml"}, "invalid format"),
        ("/api/generate", {**GEN, "format": 3}, "format"),
        ("/api/chat", {**CHAT, "format": ["json"]}, "format"),
        ("/api/generate", {**GEN, "think": "very"}, "think"),
        ("/api/generate", {**GEN, "keep_alive": "forever"}, "keep_alive"),
        ("/api/generate", {**GEN, "keep_alive": True}, "keep_alive"),
        ("/api/generate", {**GEN, "keep_alive": [5]}, "keep_alive"),
        ("/api/embed", {"model": "fake-embed", "input": 5}, "input"),
        ("/api/embed", {"model": "fake-embed", "input": "x", "dimensions": 0}, "dimensions"),
        ("/api/copy", {"source": "fake-chat"}, "destination is required"),
        ("/api/create", {"model": "x"}, "neither 'from' or 'files'"),
        ("/api/create", {"model": "x", "files": {"a.gguf": "md5:abc"}}, "invalid digest"),
    ],
)
def test_invalid_bodies_are_400(http, path, body, contains):
    ollama_error(http.post(path, json=body), 400, contains)


def test_unknown_options_are_ignored(http, runtime):
    r = http.post(
        "/api/generate", json={**GEN, "stream": False, "options": {"mirostat": 2, "num_predict": 1}}
    )
    assert r.status_code == 200 and r.json()["eval_count"] == 1


def test_unknown_model_is_404_everywhere(http):
    for path, body in [
        ("/api/generate", {**GEN, "model": "x"}),
        ("/api/chat", {**CHAT, "model": "x"}),
        ("/api/embed", {"model": "x", "input": "a"}),
        ("/api/embeddings", {"model": "x", "prompt": "a"}),
        ("/api/show", {"model": "x"}),
        ("/api/push", {"model": "x"}),
        ("/api/copy", {"source": "x", "destination": "y"}),
        ("/api/create", {"model": "y", "from": "x"}),
        ("/api/generate", {"model": "x", "keep_alive": 0}),
    ]:
        assert ollama_error(http.post(path, json=body), 404) == "model 'x' not found"
    assert (
        ollama_error(http.request("DELETE", "/api/delete", json={"model": "x"}), 404)
        == "model 'x' not found"
    )


def test_empty_messages_and_prompt_load_the_model(http):
    r = http.post("/api/chat", json={"model": "fake-chat", "messages": []})
    assert r.status_code == 200 and r.json()["done_reason"] == "load"
    r = http.post("/api/generate", json={"model": "fake-chat", "keep_alive": "0"})
    assert r.json()["done_reason"] == "unload"


def test_huge_num_predict_does_not_hang(http):
    r = http.post(
        "/api/generate", json={**GEN, "stream": False, "options": {"num_predict": 10**15}}
    )
    assert r.status_code == 200 and r.json()["done_reason"] == "stop"


def test_capabilities(http):
    ollama_error(
        http.post("/api/chat", json={**CHAT, "model": "fake-tiny", "think": True}),
        400,
        "does not support thinking",
    )
    ollama_error(
        http.post("/api/generate", json={**GEN, "model": "fake-tiny", "images": ["aGk="]}),
        400,
        "does not support images",
    )
    ollama_error(
        http.post(
            "/api/chat", json={**CHAT, "model": "fake-tiny", "tools": [{"type": "function"}]}
        ),
        400,
        "does not support tools",
    )
    ollama_error(
        http.post("/api/generate", json={**GEN, "model": "fake-embed"}),
        400,
        "does not support generate",
    )
    assert (
        http.post(
            "/api/chat", json={**CHAT, "model": "fake-tiny", "think": False, "stream": False}
        ).status_code
        == 200
    )
    r = http.post("/api/generate", json={**GEN, "think": "high", "stream": False})
    assert r.status_code == 200 and r.json()["thinking"]


def test_oversized_bodies_are_413(http):
    big = b'{"model": "fake-chat", "prompt": "' + b"x" * (MAX_BODY + 10) + b'"}'
    ollama_error(http.post("/api/generate", content=big), 413, "too large")
    openai_error(http.post("/v1/chat/completions", content=big), 413, "invalid_request_error")

    def chunked():  # no content-length: counted as it arrives
        yield big[:1000]
        yield big[1000:]

    ollama_error(http.post("/api/generate", content=chunked()), 413, "too large")


def test_blob_digests(http, runtime):
    data = b"some blob bytes"
    good = "sha256:" + hashlib.sha256(data).hexdigest()
    assert http.head("/api/blobs/sha256:xyz").status_code == 400
    assert http.head("/api/blobs/" + good).status_code == 404
    ollama_error(http.post("/api/blobs/md5:abcd", content=data), 400, "invalid digest")
    ollama_error(http.post("/api/blobs/sha256:" + "0" * 64, content=data), 400, "digest mismatch")
    assert http.post("/api/blobs/" + good, content=data).status_code == 201
    assert http.post("/api/blobs/" + good, content=data).status_code == 200
    assert http.head("/api/blobs/" + good).status_code == 200
    big = b"y" * (MAX_BODY * 3)  # blobs are exempt from the JSON body limit
    digest = "sha256:" + hashlib.sha256(big).hexdigest()
    assert http.post("/api/blobs/" + digest, content=big).status_code == 201


def test_unknown_routes_and_methods(http):
    ollama_error(http.get("/api/nope"), 404)
    ollama_error(http.get("/api/generate"), 405)
    ollama_error(http.post("/api/tags"), 405)
    ollama_error(http.post("/api/delete", json={"model": "fake-chat"}), 405)
    openai_error(http.get("/v1/nope"), 404, "not_found_error")
    openai_error(http.get("/v1/chat/completions"), 405, "invalid_request_error")


def test_openai_bad_input(http):
    openai_error(http.post("/v1/chat/completions", content=b"{"), 400, "invalid_request_error")
    openai_error(
        http.post("/v1/chat/completions", json={"model": "fake-chat"}), 400, "invalid_request_error"
    )
    openai_error(
        http.post("/v1/chat/completions", json={"model": "fake-chat", "messages": []}),
        400,
        "invalid_request_error",
    )
    openai_error(
        http.post("/v1/chat/completions", json={**CHAT, "temperature": "hot"}),
        400,
        "invalid_request_error",
    )
    openai_error(
        http.post("/v1/chat/completions", json={**CHAT, "response_format": {"type": "xml"}}),
        400,
        "invalid_request_error",
    )
    openai_error(
        http.post("/v1/chat/completions", json={**CHAT, "model": "x"}), 404, "not_found_error"
    )
    openai_error(
        http.post("/v1/embeddings", json={"model": "fake-embed", "input": []}),
        400,
        "invalid_request_error",
    )
    openai_error(
        http.post(
            "/v1/embeddings", json={"model": "fake-embed", "input": "a", "encoding_format": "hex"}
        ),
        400,
        "invalid_request_error",
    )
    openai_error(
        http.post("/v1/completions", json={"model": "fake-chat", "prompt": ["a", "b"]}),
        400,
        "invalid_request_error",
    )


def test_error_after_stream_started_keeps_200(http, runtime):
    from omax.errors import EngineDead

    runtime.enqueue(tokens=("a", "b"), fail_after=1, error=EngineDead("actor died"))
    r = http.post("/api/chat", json=CHAT)
    assert r.status_code == 200
    lines = [json.loads(x) for x in r.text.splitlines()]
    assert lines[-1] == {"error": "actor died"}
    runtime.enqueue(tokens=("a", "b"), fail_after=1, error=RuntimeError("secret internals"))
    r = http.post("/v1/chat/completions", json={**CHAT, "stream": True})
    events = [e for e in r.text.split("\n\n") if e]
    assert json.loads(events[-1][6:])["error"]["message"] == "internal server error"
    assert "secret" not in r.text


def test_unexpected_exception_is_a_clean_500(http, runtime):
    runtime.enqueue(tokens=("a",), fail_after=0, error=RuntimeError("secret internals"))
    r = http.post("/api/generate", json={**GEN, "stream": False})
    ollama_error(r, 500, "internal server error")
    assert "secret" not in r.text
