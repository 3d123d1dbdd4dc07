"""Bounded work at the front door: caps on one request, raw mode, Host and Origin.

Over a real uvicorn server (the app over ``FakeRuntime``, whose model streams
scripted tokens): a capped request is a 400 in its API's error shape before the
runtime sees it; one just under every cap is served.
"""

from __future__ import annotations

import httpx
import pytest

from omax.serve.app import build_app
from omax.serve.bounds import Bounds
from omax.serve.origins import host_allowed, origin_allowed
from tests.fake_runtime import FakeRuntime
from tests.serve.conftest import _start

SMALL = Bounds(
    stop=3, stop_length=10, messages=4, tools=2, images=1, context=8, template_length=50, inputs=3
)


@pytest.fixture(scope="module")
def capped():
    runtime = FakeRuntime()
    server, thread, url = _start(build_app(runtime, bounds=SMALL))
    with httpx.Client(base_url=url, timeout=10) as client:
        yield client
    server.should_exit = True
    thread.join(timeout=5)


def msgs(n: int) -> list[dict]:
    return [{"role": "user", "content": f"m{i}"} for i in range(n)]


def tool(i: int) -> dict:
    return {"type": "function", "function": {"name": f"f{i}", "parameters": {"type": "object"}}}


OVER = [
    (
        "/api/generate",
        {"prompt": "hi", "options": {"stop": ["a", "b", "c", "d"]}},
        "too many stop sequences: 4 (at most 3)",
    ),
    ("/api/generate", {"prompt": "hi", "options": {"stop": ["x" * 11]}}, "stop sequence too long"),
    ("/api/chat", {"messages": msgs(5)}, "too many messages: 5 (at most 4)"),
    ("/api/chat", {"messages": msgs(1), "tools": [tool(i) for i in range(3)]}, "too many tools"),
    ("/api/generate", {"prompt": "hi", "images": ["aGk=", "aGk="]}, "too many images"),
    ("/api/generate", {"prompt": "hi", "context": list(range(9))}, "too many context token ids"),
    ("/api/generate", {"prompt": "hi", "context": [1, -1]}, "out of range"),
    ("/api/generate", {"prompt": "hi", "context": [2**40]}, "out of range"),
    ("/api/generate", {"prompt": "hi", "template": "{{ .Prompt }}" * 5}, "template too long"),
    ("/api/embed", {"input": ["a", "b", "c", "d"]}, "too many inputs"),
    ("/v1/chat/completions", {"messages": msgs(5)}, "too many messages: 5 (at most 4)"),
    ("/v1/chat/completions", {"messages": msgs(1), "stop": ["a", "b", "c", "d"]}, "too many stop"),
    ("/v1/embeddings", {"input": ["a", "b", "c", "d"]}, "too many inputs"),
]


@pytest.mark.parametrize(("path", "body", "names"), OVER, ids=lambda v: str(v)[:30])
def test_a_request_past_a_cap_is_a_400_naming_it(capped, path, body, names):
    r = capped.post(path, json={"model": "fake-chat", "stream": False, **body})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    message = error["message"] if path.startswith("/v1") else error
    assert names in message, message


def test_a_request_at_every_cap_is_served(capped):
    body = {
        "model": "fake-chat",
        "stream": False,
        "messages": msgs(4),
        "options": {"stop": ["x" * 10, "b", "c"]},
    }
    r = capped.post("/api/chat", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["done"] is True
    r = capped.post(
        "/api/generate",
        json={"model": "fake-chat", "stream": False, "prompt": "hi", "context": [0, 1, 7]},
    )
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "extra", [{"system": "be brief"}, {"template": "{{ .Prompt }}"}, {"context": [1, 2]}]
)
def test_raw_mode_refuses_template_system_and_context_as_ollama_does(http, extra):
    r = http.post(
        "/api/generate", json={"model": "fake-chat", "prompt": "hi", "raw": True, **extra}
    )
    assert r.status_code == 400
    assert r.json() == {"error": "raw mode does not support template, system, or context"}


def test_raw_mode_alone_is_served(http):
    r = http.post(
        "/api/generate", json={"model": "fake-chat", "prompt": "hi", "raw": True, "stream": False}
    )
    assert r.status_code == 200, r.text


# ---- Host and Origin ---------------------------------------------------------------


@pytest.fixture(scope="module")
def loopback():
    """An app as `omax serve` builds it on 127.0.0.1: Host checked, one extra origin."""
    server, thread, url = _start(
        build_app(FakeRuntime(), check_host=True, origins=["https://*.example.com"])
    )
    with httpx.Client(base_url=url, timeout=10) as client:
        yield client
    server.should_exit = True
    thread.join(timeout=5)


@pytest.mark.parametrize(
    "host", ["localhost:11434", "127.0.0.1:11434", "[::1]:11434", "box.local", "10.1.2.3"]
)
def test_local_host_names_pass_on_a_loopback_bind(loopback, host):
    r = loopback.get("/api/version", headers={"Host": host})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("host", ["evil.example", "evil.example:11434", "8.8.8.8"])
def test_a_foreign_host_is_refused_on_a_loopback_bind(loopback, host):
    """DNS rebinding: a page whose name now resolves to 127.0.0.1."""
    r = loopback.get("/api/tags", headers={"Host": host})
    assert r.status_code == 403
    assert r.json() == {"error": "host not allowed"}


def test_a_foreign_origin_is_refused(loopback):
    r = loopback.post(
        "/api/generate",
        json={"model": "fake-chat", "prompt": "hi", "stream": False},
        headers={"Origin": "https://evil.example"},
    )
    assert r.status_code == 403
    r = loopback.post("/v1/chat/completions", json={}, headers={"Origin": "https://evil.example"})
    assert r.status_code == 403
    assert r.json()["error"]["message"] == "origin not allowed"


@pytest.mark.parametrize(
    "origin", ["http://localhost:3000", "http://127.0.0.1", "https://app.example.com", "app://x"]
)
def test_allowed_origins_get_cors_headers_and_preflights(loopback, origin):
    r = loopback.get("/api/tags", headers={"Origin": origin})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == origin
    pre = loopback.options(
        "/api/chat",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,authorization",
        },
    )
    assert pre.status_code == 200
    assert "POST" in pre.headers["access-control-allow-methods"]


def test_ollama_origins_adds_origins(monkeypatch):
    from omax.serve.origins import allowed_origins

    monkeypatch.setenv("OLLAMA_ORIGINS", "chrome-extension://*,https://ui.test")
    patterns = allowed_origins(())
    assert origin_allowed("chrome-extension://abcdef", patterns)
    assert origin_allowed("https://ui.test", patterns)
    assert not origin_allowed("https://ui.test.evil", patterns)


def test_host_rules_are_ollamas():
    assert host_allowed("LOCALHOST")
    assert host_allowed("myhost:8080", hostname="myhost")
    assert host_allowed("api.internal") and host_allowed("x.localhost")
    assert host_allowed("192.168.1.5:11434") and host_allowed("0.0.0.0")
    assert not host_allowed("example.com") and not host_allowed("1.1.1.1")
    assert not host_allowed("localhost.evil.com")
