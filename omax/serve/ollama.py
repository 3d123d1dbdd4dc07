"""Ollama's ``/api/*`` routes: parse, call the service, shape the answer as Ollama does.

Streams are NDJSON and on by default; ``stream: false`` joins them into one object
(or, for progress streams, answers only the last object).
"""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from omax import __version__
from omax.engine.request import GenerateChunk, GenerateRequest, Metrics, ToolCall
from omax.errors import InvalidRequest
from omax.serve import convert
from omax.serve.runtime import CreateRequest, Progress
from omax.serve.schemas import (
    ChatBody,
    CopyBody,
    CreateBody,
    EmbedBody,
    EmbeddingsBody,
    GenerateBody,
    NamedBody,
    PullBody,
    PushBody,
    require_model,
)
from omax.serve.service import (
    body_chunks,
    details,
    embed_checked,
    now,
    read,
    runtime_of,
    start,
)
from omax.serve.streaming import collect, ndjson_response, prime, raise_for_chunk

DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


async def root(request: Request) -> Response:
    return PlainTextResponse("Ollama is running")


async def version(request: Request) -> Response:
    return JSONResponse({"version": __version__})


def _metrics(m: Metrics | None) -> dict[str, int]:
    """Ollama's timing fields (``cached_tokens`` is OpenAI's, not Ollama's)."""
    out = asdict(m) if m is not None else asdict(Metrics())
    out.pop("cached_tokens")
    return out


def _tool_calls(calls: tuple[ToolCall, ...]) -> list[dict[str, Any]]:
    out = []
    for call in calls:
        item: dict[str, Any] = {"function": {"name": call.name, "arguments": call.arguments}}
        if call.id:
            item["id"] = call.id
        out.append(item)
    return out


def _line(model: str, chunk: GenerateChunk, chat: bool) -> dict[str, Any]:
    raise_for_chunk(chunk)
    line: dict[str, Any] = {"model": model, "created_at": now()}
    if chat:
        message: dict[str, Any] = {"role": "assistant", "content": chunk.text}
        if chunk.thinking:
            message["thinking"] = chunk.thinking
        if chunk.tool_calls:
            message["tool_calls"] = _tool_calls(chunk.tool_calls)
        line["message"] = message
    else:
        line["response"] = chunk.text
        if chunk.thinking:
            line["thinking"] = chunk.thinking
    line["done"] = chunk.done
    if chunk.done:
        line["done_reason"] = chunk.done_reason or "stop"
        line.update(_metrics(chunk.metrics))
        if not chat and chunk.context is not None:
            line["context"] = list(chunk.context)
    return line


def _join(model: str, chunks: list[GenerateChunk], chat: bool) -> dict[str, Any]:
    for chunk in chunks:
        raise_for_chunk(chunk)
    last = (
        chunks[-1] if chunks and chunks[-1].done else GenerateChunk(done=True, done_reason="stop")
    )
    merged = GenerateChunk(
        text="".join(c.text for c in chunks),
        thinking="".join(c.thinking for c in chunks),
        tool_calls=tuple(t for c in chunks for t in c.tool_calls),
        done=True,
        done_reason=last.done_reason,
        metrics=last.metrics,
        context=last.context,
    )
    return _line(model, merged, chat)


async def _load(request: Request, req: GenerateRequest, chat: bool) -> Response:
    """An empty prompt or message list loads the model (or unloads it with keep_alive 0)."""
    await runtime_of(request).load(req.model, req.keep_alive)
    reason = "unload" if req.keep_alive == 0 else "load"
    line: dict[str, Any] = {"model": req.model, "created_at": now()}
    if chat:
        line["message"] = {"role": "assistant", "content": ""}
    else:
        line["response"] = ""
    line.update(done=True, done_reason=reason)
    return JSONResponse(line)


async def _generation(request: Request, req: GenerateRequest, stream: bool, chat: bool) -> Response:
    primed = await start(request, req)

    def render(chunk: GenerateChunk) -> list[dict[str, Any]]:
        return [_line(req.model, chunk, chat)]

    if stream:
        return ndjson_response(primed, render)
    chunks = await collect(primed)
    return JSONResponse(_join(req.model, chunks, chat))


async def generate(request: Request) -> Response:
    body = await read(request, GenerateBody)
    req = convert.from_generate(body)
    if not req.prompt and not req.images:
        return await _load(request, req, chat=False)
    return await _generation(request, req, body.stream, chat=False)


async def chat(request: Request) -> Response:
    body = await read(request, ChatBody)
    req = convert.from_chat(body)
    if not req.messages:
        return await _load(request, req, chat=True)
    return await _generation(request, req, body.stream, chat=True)


async def embed(request: Request) -> Response:
    req = convert.from_embed(await read(request, EmbedBody))
    if not req.inputs:
        await runtime_of(request).load(req.model, req.keep_alive)
        return JSONResponse({"model": req.model, "embeddings": []})
    result = await embed_checked(request, req)
    return JSONResponse(
        {
            "model": req.model,
            "embeddings": [list(v) for v in result.embeddings],
            "total_duration": result.total_duration,
            "load_duration": result.load_duration,
            "prompt_eval_count": result.prompt_eval_count,
        }
    )


async def embeddings(request: Request) -> Response:
    req = convert.from_embeddings(await read(request, EmbeddingsBody))
    if req.inputs == ("",):
        await runtime_of(request).load(req.model, req.keep_alive)
        return JSONResponse({"embedding": []})
    result = await embed_checked(request, req)
    return JSONResponse({"embedding": list(result.embeddings[0])})


async def tags(request: Request) -> Response:
    models = await runtime_of(request).list_models()
    return JSONResponse(
        {
            "models": [
                {
                    "name": m.name,
                    "model": m.name,
                    "modified_at": m.modified_at,
                    "size": m.size,
                    "digest": m.digest,
                    "details": details(m.details),
                }
                for m in models
            ]
        }
    )


async def show(request: Request) -> Response:
    body = await read(request, NamedBody)
    info = await runtime_of(request).show(require_model(body.target))
    out: dict[str, Any] = {
        "license": info.license,
        "modelfile": info.modelfile,
        "parameters": info.parameters,
        "template": info.template,
        "system": info.system,
        "details": details(info.info.details),
        "model_info": info.model_info,
        "capabilities": list(info.capabilities),
        "modified_at": info.info.modified_at,
    }
    if info.messages:
        out["messages"] = list(info.messages)
    return JSONResponse(out)


def _progress(p: Progress) -> list[dict[str, Any]]:
    return [{k: v for k, v in asdict(p).items() if v is not None}]


async def _progress_response(call: Any, stream: bool) -> Response:
    primed = await prime(call)
    if stream:
        return ndjson_response(primed, _progress)
    items = await collect(primed)
    last = _progress(items[-1])[0] if items else {"status": "success"}
    return JSONResponse(last)


async def pull(request: Request) -> Response:
    body = await read(request, PullBody)
    model = require_model(body.target)
    return await _progress_response(runtime_of(request).pull(model, body.insecure), body.stream)


async def push(request: Request) -> Response:
    body = await read(request, PushBody)
    model = require_model(body.target)
    call = runtime_of(request).push(model, body.destination, body.insecure)
    return await _progress_response(call, body.stream)


async def create(request: Request) -> Response:
    body = await read(request, CreateBody)
    model = require_model(body.model or body.name)
    for name, digest in body.files.items():
        if not DIGEST.match(digest):
            raise InvalidRequest(f"invalid digest for file {name!r}: {digest!r}")
    if not body.from_ and not body.files:
        raise InvalidRequest("neither 'from' or 'files' was specified")
    license_ = tuple(body.license) if isinstance(body.license, list) else body.license
    req = CreateRequest(
        model=model,
        from_=body.from_,
        files=dict(body.files),
        template=body.template,
        system=body.system,
        parameters=dict(body.parameters),
        messages=tuple(m.model_dump(exclude_defaults=True) for m in body.messages),
        license=license_,
        quantize=body.quantize,
    )
    return await _progress_response(runtime_of(request).create(req), body.stream)


def _digest(request: Request) -> str:
    digest = request.path_params["digest"]
    if not DIGEST.match(digest):
        raise InvalidRequest(f"invalid digest {digest!r}: expected sha256:<64 hex digits>")
    return digest


async def blob(request: Request) -> Response:
    digest = _digest(request)
    runtime = runtime_of(request)
    if request.method == "HEAD":
        return Response(status_code=200 if await runtime.has_blob(digest) else 404)
    created = await runtime.put_blob(digest, body_chunks(request))
    return Response(status_code=201 if created else 200)


async def copy(request: Request) -> Response:
    body = await read(request, CopyBody)
    await runtime_of(request).copy(body.source, body.destination)
    return Response(status_code=200)


async def delete(request: Request) -> Response:
    body = await read(request, NamedBody)
    await runtime_of(request).delete(require_model(body.target))
    return Response(status_code=200)


async def ps(request: Request) -> Response:
    loaded = await runtime_of(request).ps()
    return JSONResponse(
        {
            "models": [
                {
                    "name": m.info.name,
                    "model": m.info.name,
                    "size": m.info.size,
                    "digest": m.info.digest,
                    "details": details(m.info.details),
                    "expires_at": m.expires_at,
                    "size_vram": m.size_vram,
                    "context_length": m.context_length,
                    "worker": m.worker,
                    "device": m.device,
                }
                for m in loaded
            ]
        }
    )


async def cluster(request: Request) -> Response:
    return JSONResponse(await runtime_of(request).cluster())


async def health(request: Request) -> Response:
    """Readiness for load balancers and probes (``GET /`` is liveness): 200 when the
    scheduler answers and a worker is connected, else 503 with the reason."""
    h = await runtime_of(request).health()
    body: dict[str, Any] = {
        "status": "ok" if h.ready else "unavailable",
        "scheduler": h.scheduler,
        "workers": h.workers,
        "models": list(h.models),
    }
    if not h.ready:
        body["reason"] = h.reason or "not ready"
    return JSONResponse(body, status_code=200 if h.ready else 503)


routes = [
    Route("/", root, methods=["GET", "HEAD"]),
    Route("/api/version", version, methods=["GET", "HEAD"]),
    Route("/api/health", health, methods=["GET", "HEAD"]),
    Route("/api/generate", generate, methods=["POST"]),
    Route("/api/chat", chat, methods=["POST"]),
    Route("/api/embed", embed, methods=["POST"]),
    Route("/api/embeddings", embeddings, methods=["POST"]),
    Route("/api/tags", tags, methods=["GET", "HEAD"]),
    Route("/api/show", show, methods=["POST"]),
    Route("/api/pull", pull, methods=["POST"]),
    Route("/api/push", push, methods=["POST"]),
    Route("/api/create", create, methods=["POST"]),
    Route("/api/blobs/{digest}", blob, methods=["HEAD", "POST"]),
    Route("/api/copy", copy, methods=["POST"]),
    Route("/api/delete", delete, methods=["DELETE"]),
    Route("/api/ps", ps, methods=["GET"]),
    Route("/api/cluster", cluster, methods=["GET"]),
]
