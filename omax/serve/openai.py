"""OpenAI-compatible ``/v1/*`` routes over the same runtime and internal request type.

Streams are SSE and off by default; they end with ``data: [DONE]``. Tool-call
arguments are JSON strings here (objects on ``/api/chat``).
"""

from __future__ import annotations

import base64
import json
import struct
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from omax.engine.request import GenerateChunk, GenerateRequest, Metrics, ToolCall
from omax.errors import ModelNotFound
from omax.serve import convert
from omax.serve.schemas import OpenAIChatBody, OpenAICompletionBody, OpenAIEmbeddingsBody
from omax.serve.service import (
    embed_checked,
    finish_reason,
    read,
    runtime_of,
    start,
)
from omax.serve.streaming import Primed, collect, raise_for_chunk, sse_response

FINGERPRINT = "fp_omax"

Body = TypeVar("Body", OpenAIChatBody, OpenAICompletionBody)


def _usage(m: Metrics | None) -> dict[str, Any]:
    m = m or Metrics()
    return {
        "prompt_tokens": m.prompt_eval_count,
        "completion_tokens": m.eval_count,
        "total_tokens": m.prompt_eval_count + m.eval_count,
        "prompt_tokens_details": {"cached_tokens": m.cached_tokens},
    }


def _tool_calls(calls: tuple[ToolCall, ...], offset: int = 0) -> list[dict[str, Any]]:
    return [
        {
            "index": offset + i,
            "id": call.id or f"call_{uuid.uuid4().hex[:8]}",
            "type": "function",
            "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
        }
        for i, call in enumerate(calls)
    ]


@dataclass(frozen=True)
class _Started(Generic[Body]):
    """A completion under way: its body, its first chunk primed, and what every
    object of its answer shares (id, creation time, model)."""

    body: Body
    primed: Primed[GenerateChunk]
    ident: str
    created: int
    model: str

    @property
    def include_usage(self) -> bool:
        options = self.body.stream_options
        return bool(options and options.include_usage)

    def envelope(self, kind: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.ident,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": FINGERPRINT,
            "choices": choices,
        }

    def usage_event(self, kind: str, chunk: GenerateChunk) -> dict[str, Any]:
        """The extra chunk ``stream_options.include_usage`` asks for."""
        event = self.envelope(kind, [])
        event["usage"] = _usage(chunk.metrics)
        return event


async def _start(
    request: Request,
    body_type: type[Body],
    to_request: Callable[[Body], GenerateRequest],
    prefix: str,
) -> _Started[Body]:
    """Read the body, convert it and start its generation; name the answer."""
    body = await read(request, body_type)
    req = to_request(body)
    primed = await start(request, req)
    return _Started(body, primed, f"{prefix}-{uuid.uuid4().hex[:24]}", int(time.time()), req.model)


async def chat_completions(request: Request) -> Response:
    started = await _start(request, OpenAIChatBody, convert.from_openai_chat, "chatcmpl")

    if started.body.stream:
        seen_tools = 0

        def render(chunk: GenerateChunk) -> list[dict[str, Any]]:
            nonlocal seen_tools
            raise_for_chunk(chunk)
            delta: dict[str, Any] = {"role": "assistant", "content": chunk.text}
            if chunk.thinking:
                delta["reasoning"] = chunk.thinking
            if chunk.tool_calls:
                delta["tool_calls"] = _tool_calls(chunk.tool_calls, seen_tools)
                seen_tools += len(chunk.tool_calls)
            if not chunk.done:
                choice = {"index": 0, "delta": delta, "finish_reason": None}
                return [started.envelope("chat.completion.chunk", [choice])]
            choice = {
                "index": 0,
                "delta": delta,
                "finish_reason": finish_reason(chunk, seen_tools > 0),
            }
            events = [started.envelope("chat.completion.chunk", [choice])]
            if started.include_usage:
                events.append(started.usage_event("chat.completion.chunk", chunk))
            return events

        return sse_response(started.primed, render)

    chunks, last = await _collect_all(request, started.primed, started.model)
    calls = tuple(t for c in chunks for t in c.tool_calls)
    message: dict[str, Any] = {"role": "assistant", "content": "".join(c.text for c in chunks)}
    thinking = "".join(c.thinking for c in chunks)
    if thinking:
        message["reasoning"] = thinking
    if calls:
        message["tool_calls"] = _tool_calls(calls)
    choice = {"index": 0, "message": message, "finish_reason": finish_reason(last, bool(calls))}
    out = started.envelope("chat.completion", [choice])
    out["usage"] = _usage(last.metrics)
    return JSONResponse(out)


async def _collect_all(
    request: Request, primed: Any, model: str
) -> tuple[list[GenerateChunk], GenerateChunk]:
    """Every chunk of a non-streamed generation, and its last; an error chunk raises."""
    chunks = await collect(primed)
    for c in chunks:
        raise_for_chunk(c)
    last = chunks[-1] if chunks else GenerateChunk(done=True)
    return chunks, last


async def completions(request: Request) -> Response:
    started = await _start(request, OpenAICompletionBody, convert.from_openai_completion, "cmpl")

    if started.body.stream:

        def render(chunk: GenerateChunk) -> list[dict[str, Any]]:
            raise_for_chunk(chunk)
            reason = finish_reason(chunk, False) if chunk.done else None
            choice = {"text": chunk.text, "index": 0, "logprobs": None, "finish_reason": reason}
            events = [started.envelope("text_completion", [choice])]
            if chunk.done and started.include_usage:
                events.append(started.usage_event("text_completion", chunk))
            return events

        return sse_response(started.primed, render)

    chunks, last = await _collect_all(request, started.primed, started.model)
    choice = {
        "text": "".join(c.text for c in chunks),
        "index": 0,
        "logprobs": None,
        "finish_reason": finish_reason(last, False),
    }
    out = started.envelope("text_completion", [choice])
    out["usage"] = _usage(last.metrics)
    return JSONResponse(out)


def _encode(vector: tuple[float, ...], encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return list(vector)


async def embeddings(request: Request) -> Response:
    body = await read(request, OpenAIEmbeddingsBody)
    req = convert.from_openai_embeddings(body)
    result = await embed_checked(request, req)
    data = [
        {"object": "embedding", "embedding": _encode(v, body.encoding_format), "index": i}
        for i, v in enumerate(result.embeddings)
    ]
    usage = {"prompt_tokens": result.prompt_eval_count, "total_tokens": result.prompt_eval_count}
    return JSONResponse({"object": "list", "data": data, "model": req.model, "usage": usage})


def _model_entry(name: str, modified_at: str) -> dict[str, Any]:
    try:
        created = int(datetime.fromisoformat(modified_at.replace("Z", "+00:00")).timestamp())
    except ValueError:
        created = 0
    owner = name.rsplit("/", 1)[0].split("/")[-1] if "/" in name else "library"
    return {"id": name, "object": "model", "created": created, "owned_by": owner}


async def models(request: Request) -> Response:
    listed = await runtime_of(request).list_models()
    return JSONResponse(
        {"object": "list", "data": [_model_entry(m.name, m.modified_at) for m in listed]}
    )


async def model(request: Request) -> Response:
    name = request.path_params["model"]
    try:
        info = (await runtime_of(request).show(name)).info
    except ModelNotFound:
        raise ModelNotFound(name) from None
    return JSONResponse(_model_entry(name, info.modified_at))


routes = [
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/completions", completions, methods=["POST"]),
    Route("/v1/embeddings", embeddings, methods=["POST"]),
    Route("/v1/models", models, methods=["GET"]),
    Route("/v1/models/{model:path}", model, methods=["GET"]),
]
