"""``X-Request-ID`` over a real uvicorn and the fake runtime: accepted when sane, made
otherwise, returned on every answer (streams and errors too) and carried to the actor."""

from __future__ import annotations

import re

import httpx
import pytest

from omax.serve.requestid import HEADER

MODEL = "fake-chat"
MADE = re.compile(r"[0-9a-f]{32}")


@pytest.fixture
def http(served, runtime):
    with httpx.Client(base_url=served.url, timeout=10) as client:
        yield client


def test_a_request_without_an_id_gets_one_carried_to_the_actor(http, runtime):
    r = http.post("/api/generate", json={"model": MODEL, "prompt": "x", "stream": False})
    rid = r.headers[HEADER]
    assert MADE.fullmatch(rid)
    assert runtime.requests[-1].request_id == rid  # the same id reaches the actor
    other = http.post("/api/generate", json={"model": MODEL, "prompt": "x", "stream": False})
    assert other.headers[HEADER] != rid


@pytest.mark.parametrize(
    "path,body",
    [
        ("/api/generate", {"prompt": "x"}),
        ("/api/chat", {"messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "stream": True}),
    ],
)
def test_a_client_id_is_echoed_on_streams_and_names_the_actor_request(http, runtime, path, body):
    with http.stream(
        "POST", path, json={"model": MODEL, **body}, headers={HEADER: "job-7.a_b"}
    ) as r:
        assert r.headers[HEADER] == "job-7.a_b"
        assert list(r.iter_lines())
    # Two clients may send the same id: the actor's id stays unique but names it.
    actor_id = runtime.requests[-1].request_id
    assert re.fullmatch(r"job-7\.a_b\.[0-9a-f]{8}", actor_id)


@pytest.mark.parametrize("bad", ["x" * 129, "has space", "semi;colon", "ünïcode", ""])
def test_an_unacceptable_id_is_replaced(http, runtime, bad):
    r = http.get("/api/tags", headers={HEADER: bad.encode("utf-8")})
    assert r.status_code == 200
    assert MADE.fullmatch(r.headers[HEADER])


def test_the_longest_accepted_id(http):
    rid = "a" * 128
    assert http.get("/api/version", headers={HEADER: rid}).headers[HEADER] == rid


@pytest.mark.parametrize(
    "method,path,kwargs,status",
    [
        ("POST", "/api/generate", {"json": {"model": "nope", "prompt": "x"}}, 404),
        ("POST", "/api/chat", {"content": b"{not json"}, 400),
        ("POST", "/api/generate", {"content": b"x" * (70 * 1024)}, 413),
        ("GET", "/no/such/route", {}, 404),
    ],
)
def test_errors_carry_the_id_too(http, method, path, kwargs, status):
    r = http.request(method, path, headers={HEADER: "err-1"}, **kwargs)
    assert r.status_code == status
    assert r.headers[HEADER] == "err-1"
    assert r.headers.get_list(HEADER) == ["err-1"]  # exactly one
