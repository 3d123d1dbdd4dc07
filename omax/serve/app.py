"""Build the front door: one Starlette app over a ``Runtime``.

The route table is the Ollama routes, the OpenAI routes, ``/metrics`` and
``/openapi.json``; errors are mapped once by ``omax.serve.errors``.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from omax.serve import ollama, openai
from omax.serve.errors import exception_handlers
from omax.serve.metrics import MetricsMiddleware, ServeMetrics
from omax.serve.middleware import DEFAULT_MAX_BODY, BearerAuthMiddleware, BodyLimitMiddleware
from omax.serve.openapi import openapi_document
from omax.serve.runtime import Runtime

PROBES = ("/", "/api/health")  # liveness and readiness: open even with auth on


def build_app(
    runtime: Runtime,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY,
    api_keys: Iterable[str] | None = None,
    jwt_secret: str | None = None,
) -> Starlette:
    """The HTTP app serving ``runtime``.

    ``max_body_bytes`` bounds every JSON body (blob uploads stream and are exempt).
    With ``api_keys`` and/or ``jwt_secret`` set, every route but the probes (``GET /``
    and ``GET /api/health``) needs ``Authorization: Bearer <key or HS256 JWT>``.
    """
    metrics = ServeMetrics()
    document = openapi_document()

    async def openapi_json(request: Request) -> Response:
        return JSONResponse(document)

    routes = [
        *ollama.routes,
        *openai.routes,
        Route("/metrics", metrics.endpoint, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
    ]
    middleware = [Middleware(MetricsMiddleware, metrics=metrics)]
    if api_keys or jwt_secret:
        middleware.append(
            Middleware(
                BearerAuthMiddleware,
                api_keys=tuple(api_keys or ()),
                jwt_secret=jwt_secret,
                open_paths=PROBES,
            )
        )
    middleware.append(Middleware(BodyLimitMiddleware, max_bytes=max_body_bytes))
    app = Starlette(routes=routes, middleware=middleware, exception_handlers=exception_handlers())
    app.state.runtime = runtime
    app.state.metrics = metrics
    return app
