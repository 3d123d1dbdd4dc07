"""The front door's ``/metrics`` over a real uvicorn and the fake runtime: every
series moves with the traffic that should move it, by exactly as much."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from omax.engine.request import GenerateChunk, GenerateRequest
from omax.errors import EngineError, PlacementRefused, ServerBusy, Unavailable
from omax.serve.app import build_app
from omax.serve.metrics import note_retry
from tests.fake_runtime import FakeRuntime

from .conftest import _start

MODEL = "fake-chat"


def scrape(client: httpx.Client) -> dict[tuple[str, frozenset], float]:
    """Every sample of ``/metrics``: (name, labels) -> value."""
    text = client.get("/metrics").text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before: dict, after: dict, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


@pytest.fixture
def http(served, runtime):
    with httpx.Client(base_url=served.url, timeout=10) as client:
        yield client


def test_a_generation_moves_every_series(http, runtime):
    before = scrape(http)
    r = http.post("/api/generate", json={"model": MODEL, "prompt": "one two three"})
    assert r.status_code == 200
    last = [line for line in r.text.splitlines() if line][-1]
    after = scrape(http)
    assert '"eval_count":6' in last and '"prompt_eval_count":3' in last
    assert moved(before, after, "omax_prompt_tokens_total", model=MODEL) == 3
    assert moved(before, after, "omax_generation_tokens_total", model=MODEL) == 6
    for hist in (
        "omax_time_to_first_token_seconds",
        "omax_inter_token_latency_seconds",
        "omax_e2e_request_latency_seconds",
        "omax_request_queue_time_seconds",
    ):
        assert moved(before, after, hist + "_count", model=MODEL) == 1, hist
    assert moved(before, after, "omax_generate_requests_total", model=MODEL, reason="stop") == 1
    route = {"route": "/api/generate", "method": "POST"}
    assert moved(before, after, "omax_http_requests_total", **route, status="200") == 1
    assert moved(before, after, "omax_http_request_duration_seconds_count", **route) == 1
    assert value(after, "omax_http_requests_in_flight") == 1  # the scrape itself


@pytest.mark.parametrize(
    "path,body",
    [
        ("/api/chat", {"messages": [{"role": "user", "content": "hi"}], "stream": False}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/completions", {"prompt": "hi", "stream": True}),
    ],
)
def test_every_api_counts_tokens_once(http, runtime, path, body):
    before = scrape(http)
    assert http.post(path, json={"model": MODEL, **body}).status_code == 200
    after = scrape(http)
    assert moved(before, after, "omax_generation_tokens_total", model=MODEL) == 6
    assert moved(before, after, "omax_e2e_request_latency_seconds_count", model=MODEL) == 1


def test_latencies_are_real_seconds(http, runtime):
    runtime.enqueue(tokens=("a", "b", "c"), delay=0.05)
    before = scrape(http)
    http.post("/api/generate", json={"model": MODEL, "prompt": "x", "stream": False})
    after = scrape(http)
    e2e = moved(before, after, "omax_e2e_request_latency_seconds_sum", model=MODEL)
    ttft = moved(before, after, "omax_time_to_first_token_seconds_sum", model=MODEL)
    itl = moved(before, after, "omax_inter_token_latency_seconds_sum", model=MODEL)
    assert 0.15 <= e2e < 2 and 0.05 <= ttft < e2e and 0.04 <= itl < 0.5


@pytest.mark.parametrize(
    "error,reason",
    [
        (ServerBusy(), "queue_full"),
        (PlacementRefused("no room"), "no_slot"),
        (Unavailable("x"), "unavailable"),
    ],
)
def test_refusals_are_counted_as_rejections(http, runtime, error, reason):
    runtime.enqueue(fail_after=0, error=error)
    before = scrape(http)
    r = http.post("/api/generate", json={"model": MODEL, "prompt": "x"})
    assert r.status_code == 503
    after = scrape(http)
    model = "" if reason == "unavailable" else MODEL
    assert moved(before, after, "omax_request_rejections_total", model=model, reason=reason) == 1
    assert moved(before, after, "omax_generate_requests_total", model=model, reason="rejected") == 1
    route = {"route": "/api/generate", "method": "POST", "status": "503"}
    assert moved(before, after, "omax_http_requests_total", **route) == 1


def test_a_stream_failing_midway_counts_as_an_error(http, runtime):
    runtime.enqueue(fail_after=2, error=EngineError("boom"))
    before = scrape(http)
    r = http.post("/api/generate", json={"model": MODEL, "prompt": "x"})
    assert r.status_code == 200 and "boom" in r.text  # the status was sent before
    after = scrape(http)
    assert moved(before, after, "omax_generate_requests_total", model=MODEL, reason="error") == 1
    assert (
        moved(before, after, "omax_request_rejections_total", model=MODEL, reason="queue_full") == 0
    )


def test_an_unknown_model_makes_no_series_of_its_name(http, runtime):
    r = http.post("/api/generate", json={"model": "no-such-model-123", "prompt": "x"})
    assert r.status_code == 404
    assert "no-such-model-123" not in http.get("/metrics").text
    route = {"route": "/api/generate", "method": "POST", "status": "404"}
    assert value(scrape(http), "omax_http_requests_total", **route) >= 1


def test_a_client_that_leaves_counts_as_cancel(served, http, runtime):
    runtime.enqueue(tokens=tuple("abcdefghij"), delay=0.05)
    before = scrape(http)
    with http.stream("POST", "/api/generate", json={"model": MODEL, "prompt": "x"}) as r:
        next(r.iter_lines())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        after = scrape(http)
        if moved(before, after, "omax_generate_requests_total", model=MODEL, reason="cancel"):
            break
        time.sleep(0.05)
    assert moved(before, after, "omax_generate_requests_total", model=MODEL, reason="cancel") == 1
    assert moved(before, after, "omax_generation_tokens_total", model=MODEL) == 0


class RetryingRuntime(FakeRuntime):
    """Reports one retry on another replica per generation, as ClusterRuntime does
    when an actor dies before the first token."""

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateChunk]:
        note_retry()
        async for chunk in super().generate(request):
            yield chunk


def test_retries_reported_by_the_runtime_are_counted():
    server, thread, url = _start(build_app(RetryingRuntime()))
    try:
        with httpx.Client(base_url=url, timeout=10) as http:
            for _ in range(2):
                http.post("/api/generate", json={"model": MODEL, "prompt": "x"})
            after = scrape(http)
        assert value(after, "omax_request_retries_total", model=MODEL) == 2
    finally:
        server.should_exit = True
        thread.join(timeout=5)
