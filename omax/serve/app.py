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

from omax.auth.policy import AuthConfig
from omax.auth.store import AuthStore
from omax.config import settings
from omax.serve import ollama, openai
from omax.serve.auth import AuthMiddleware, SnapshotCache
from omax.serve.bounds import Bounds
from omax.serve.errors import exception_handlers
from omax.serve.metrics import MetricsMiddleware, ServeMetrics
from omax.serve.middleware import BodyLimitMiddleware
from omax.serve.openapi import openapi_document
from omax.serve.origins import OriginMiddleware, allowed_origins
from omax.serve.requestid import RequestIdMiddleware
from omax.serve.runtime import Runtime


def build_app(
    runtime: Runtime,
    *,
    max_body_bytes: int | None = None,
    api_keys: Iterable[str] | None = None,
    jwt_secret: str | None = None,
    auth: AuthConfig | None = None,
    bounds: Bounds | None = None,
    origins: Iterable[str] = (),
    check_host: bool = False,
) -> Starlette:
    """The HTTP app serving ``runtime``.

    ``max_body_bytes`` (default ``omax.serve.max-body``) bounds every JSON body (blob
    uploads stream and are exempt).
    With ``auth`` enabled, every route but the probes (``GET /`` and ``GET
    /api/health``) needs ``Authorization: Bearer <token or key>`` and a role the route
    table (``omax.auth.roles``) allows. ``api_keys`` (admin keys) and ``jwt_secret``
    are a shorthand for an ``AuthConfig`` with only those. ``bounds`` caps what one
    request may ask (``omax.serve.bounds``). Browser origins other than the local ones
    and ``origins`` are refused, and with ``check_host`` (a loopback bind) so is a
    ``Host`` that does not name this machine (``omax.serve.origins``).
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
    middleware = [
        Middleware(RequestIdMiddleware),  # outermost: every answer carries the id
        Middleware(MetricsMiddleware, metrics=metrics),
        Middleware(OriginMiddleware, origins=allowed_origins(origins), check_host=check_host),
    ]
    if auth is None and (api_keys or jwt_secret):
        auth = AuthConfig.build(secret=jwt_secret or "", static_keys=api_keys or ())
    if auth is not None and auth.enabled:
        store = AuthStore(auth.store_url) if auth.store_url else None
        middleware.append(Middleware(AuthMiddleware, config=auth, cache=SnapshotCache(store)))
    max_bytes = settings().max_body if max_body_bytes is None else max_body_bytes
    middleware.append(Middleware(BodyLimitMiddleware, max_bytes=max_bytes))
    app = Starlette(routes=routes, middleware=middleware, exception_handlers=exception_handlers())
    app.state.runtime = runtime
    app.state.metrics = metrics
    app.state.bounds = bounds or Bounds()
    return app
