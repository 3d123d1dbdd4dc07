"""The service layer both API adapters share: capability checks and starting streams.

Routes parse and shape; this module decides what a request may do and calls the
``Runtime``. ``runtime.show`` is consulted only when a request needs a capability
(think, images, tools) and only once per request; nothing is cached across requests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request

from omax.engine.request import EmbedRequest, EmbedResult, GenerateChunk, GenerateRequest
from omax.errors import InvalidRequest
from omax.logs import bind
from omax.serve.bounds import Bounds, check_embed, check_generate
from omax.serve.metrics import ServeMetrics
from omax.serve.runtime import ModelDetails, Runtime
from omax.serve.schemas import B, parse_body
from omax.serve.streaming import Primed, prime


def runtime_of(request: Request) -> Runtime:
    return request.app.state.runtime


def metrics_of(request: Request) -> ServeMetrics:
    return request.app.state.metrics


async def read(request: Request, model: type[B]) -> B:
    """Read and validate a JSON body (the size limit is enforced by middleware)."""
    return parse_body(model, await request.body())


def bounds_of(request: Request) -> Bounds:
    return getattr(request.app.state, "bounds", None) or Bounds()


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def details(d: ModelDetails) -> dict[str, Any]:
    out = asdict(d)
    out["families"] = list(d.families)
    return out


def needed_capabilities(req: GenerateRequest) -> list[str]:
    needs = []
    if req.think and req.think != "none":
        needs.append("thinking")
    if req.images or any(m.images for m in req.messages or ()):
        needs.append("vision")
    if req.tools:
        needs.append("tools")
    return needs


async def check_capabilities(runtime: Runtime, req: GenerateRequest) -> None:
    """400 when the model lacks a capability the request needs (think, images, tools)."""
    needs = needed_capabilities(req)
    if not needs:
        return
    caps = (await runtime.show(req.model)).capabilities
    if "completion" not in caps:
        raise InvalidRequest(f'"{req.model}" does not support generate')
    for need in needs:
        if need not in caps:
            what = {"thinking": "thinking", "vision": "images", "tools": "tools"}[need]
            raise InvalidRequest(f'"{req.model}" does not support {what}')


async def start(request: Request, req: GenerateRequest) -> Primed[GenerateChunk]:
    """Check, start the generation and wait for its first chunk. The stream is
    recorded by the app's metrics (tokens, latencies, how it ended) as it is read."""
    bind(model=req.model)
    check_generate(req, bounds_of(request))
    runtime = runtime_of(request)
    await check_capabilities(runtime, req)
    return await prime(metrics_of(request).observe(req.model, runtime.generate(req)))


async def embed_checked(request: Request, req: EmbedRequest) -> EmbedResult:
    """Check ``req`` against the bounds, then embed it."""
    check_embed(req, bounds_of(request))
    return await runtime_of(request).embed(req)


def finish_reason(chunk: GenerateChunk, saw_tools: bool) -> str:
    if saw_tools:
        return "tool_calls"
    return "length" if chunk.done_reason == "length" else "stop"


async def body_chunks(request: Request) -> AsyncIterator[bytes]:
    """The raw request body as it arrives, never buffered whole."""
    async for chunk in request.stream():
        if chunk:
            yield chunk
