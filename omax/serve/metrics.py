"""Prometheus metrics of one app: requests by route and status, tokens, time to first token.

Each app owns its own ``CollectorRegistry`` so several apps (tests, several front
doors in one process) never collide on metric names.
"""

from __future__ import annotations

import time

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

_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "omax_http_requests",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "omax_http_requests_in_flight", "Requests being answered.", registry=self.registry
        )
        self.tokens = Counter(
            "omax_tokens_generated",
            "Tokens generated, by model.",
            ["model"],
            registry=self.registry,
        )
        self.ttft = Histogram(
            "omax_time_to_first_token_seconds",
            "Seconds from request arrival to the first generated chunk.",
            ["model"],
            buckets=_TTFT_BUCKETS,
            registry=self.registry,
        )

    def first_token(self, model: str, started: float) -> None:
        self.ttft.labels(model).observe(time.perf_counter() - started)

    def generated(self, model: str, count: int) -> None:
        if count > 0:
            self.tokens.labels(model).inc(count)

    async def endpoint(self, request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class MetricsMiddleware:
    """Count every HTTP response by the route template that matched it."""

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

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.in_flight.dec()
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
