"""Prometheus metrics of one front door (names follow Prometheus' conventions; vLLM's
set is the reference: prompt and generation tokens, time to first token, inter-token
and end-to-end latency, queue time).

Each app owns its own ``CollectorRegistry`` so several apps (tests, several front
doors in one process) never collide on metric names. ``MetricsMiddleware`` counts
every HTTP response and opens a per-request ``RequestState`` (a ``ContextVar``: the
runtime's tasks copy it and share the object); ``ServeMetrics.observe`` wraps a
runtime's generation stream and records what the request's chunks show. The
runtime reports a retry on another replica with ``note_retry``.

Every name here is listed in docs/operations.md and used by
``monitoring/`` (dashboard, alert rules); tests/e2e/test_observability.py checks that
each name an alert or a panel uses is really exported.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextvars import ContextVar
from dataclasses import dataclass, field

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from omax.engine.request import GenerateChunk
from omax.errors import OmaxError, PlacementRefused, ServerBusy, Unavailable

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1)
# Errors raised before a generation starts that mean "refused, try later".
REJECTIONS: dict[type[OmaxError], str] = {
    ServerBusy: "queue_full",
    PlacementRefused: "no_slot",
    Unavailable: "unavailable",
}


@dataclass
class RequestState:
    """One HTTP request as the metrics see it: when it arrived, how often it was
    retried on another replica."""

    started: float = field(default_factory=time.perf_counter)
    retries: int = 0


_state: ContextVar[RequestState | None] = ContextVar("omax_request_state", default=None)


def note_retry() -> None:
    """The current request moves to another replica (before its first token)."""
    state = _state.get()
    if state is not None:
        state.retries += 1


def rejection_reason(exc: BaseException) -> str | None:
    """The ``reason`` label of a refused request, or None when ``exc`` is no refusal."""
    for kind, reason in REJECTIONS.items():
        if isinstance(exc, kind):
            return reason
    return None


class ServeMetrics:
    """The front door's collectors (see docs/operations.md for each)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        http = ["route", "method"]
        self.requests = self._counter(
            "omax_http_requests",
            "HTTP requests answered, by route template, method and status.",
            [*http, "status"],
        )
        self.in_flight = Gauge(
            "omax_http_requests_in_flight", "Requests being answered.", registry=self.registry
        )
        self.duration = self._histogram(
            "omax_http_request_duration_seconds",
            "Seconds from a request's arrival to the end of its response (streams included).",
            _E2E_BUCKETS,
            http,
        )
        self.prompt_tokens = self._counter("omax_prompt_tokens", "Prompt tokens, by model.")
        self.tokens = self._counter("omax_generation_tokens", "Tokens generated, by model.")
        self.ttft = self._histogram(
            "omax_time_to_first_token_seconds",
            "Seconds from request arrival to the first generated chunk.",
            _LATENCY_BUCKETS,
        )
        self.itl = self._histogram(
            "omax_inter_token_latency_seconds",
            "Per request: mean seconds between generated tokens as the front door got them.",
            _ITL_BUCKETS,
        )
        self.e2e = self._histogram(
            "omax_e2e_request_latency_seconds",
            "Seconds from request arrival to a generation's last chunk.",
            _E2E_BUCKETS,
        )
        self.queue = self._histogram(
            "omax_request_queue_time_seconds",
            "Seconds a generation waited in its engine for a batch slot.",
            _LATENCY_BUCKETS,
        )
        self.finished = self._counter(
            "omax_generate_requests",
            "Generations ended, by model and reason (stop, length, cancel, error, ...).",
            ["model", "reason"],
        )
        self.retries = self._counter(
            "omax_request_retries", "Generations moved to another replica before their first token."
        )
        self.rejections = self._counter(
            "omax_request_rejections",
            "Generations refused before they started (queue_full, no_slot, unavailable).",
            ["model", "reason"],
        )

    def _counter(self, name: str, doc: str, labels: list[str] | None = None) -> Counter:
        return Counter(name, doc, labels or ["model"], registry=self.registry)

    def _histogram(
        self, name: str, doc: str, buckets: tuple[float, ...], labels: list[str] | None = None
    ) -> Histogram:
        return Histogram(name, doc, labels or ["model"], buckets=buckets, registry=self.registry)

    async def endpoint(self, request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    async def observe(
        self, model: str, source: AsyncIterator[GenerateChunk]
    ) -> AsyncIterator[GenerateChunk]:
        """``source``'s chunks, unchanged, recorded on the way (closes ``source``)."""
        state = _state.get() or RequestState()
        first: float | None = None
        reason: str | None = "cancel"  # unless a last chunk or an error says otherwise
        try:
            async for chunk in source:
                now = time.perf_counter()
                if first is None:
                    first = now
                    self.ttft.labels(model).observe(now - state.started)
                if chunk.error:
                    reason = "error"
                elif chunk.done:
                    reason = chunk.done_reason or "stop"
                    self._done(model, chunk, state.started, first, now)
                yield chunk
        except OmaxError as e:
            refused = rejection_reason(e) if first is None else None
            if refused == "unavailable":
                # Refused before the name is checked: no model label, or any name a
                # client sends would become a series.
                model = ""
            if refused is not None:
                self.rejections.labels(model, refused).inc()
            # A client's mistake (an unknown model...) is counted by
            # omax_http_requests_total only, for the same reason.
            reason = "rejected" if refused else ("error" if e.status >= 500 else None)
            raise
        except Exception:
            reason = "error"
            raise
        finally:
            close = getattr(source, "aclose", None)
            if close is not None:
                await close()
            if reason is not None:
                self.finished.labels(model, reason).inc()
            if state.retries:
                self.retries.labels(model).inc(state.retries)
                state.retries = 0

    def _done(
        self, model: str, chunk: GenerateChunk, started: float, first: float, now: float
    ) -> None:
        self.e2e.labels(model).observe(now - started)
        m = chunk.metrics
        if m is None:
            return
        self.prompt_tokens.labels(model).inc(max(m.prompt_eval_count, 0))
        if m.eval_count > 0:
            self.tokens.labels(model).inc(m.eval_count)
        if m.eval_count > 1:
            self.itl.labels(model).observe((now - first) / (m.eval_count - 1))
        if m.total_duration > 0:
            busy = m.load_duration + m.prompt_eval_duration + m.eval_duration
            self.queue.labels(model).observe(max(m.total_duration - busy, 0) / 1e9)


class MetricsMiddleware:
    """Count and time every HTTP response by the route template that matched it."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        state = RequestState()
        token = _state.set(state)
        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            _state.reset(token)
            self.metrics.in_flight.dec()
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"]
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.duration.labels(route, method).observe(time.perf_counter() - state.started)
