"""NDJSON and SSE responses over a runtime's async iterator.

``prime`` pulls the first item before any byte is sent, so an error the runtime
raises up front (unknown model, queue full) still becomes a proper HTTP status.
After that the status is 200 and a failure is one more line: ``{"error": ...}`` on
NDJSON, ``data: {"error": {...}}`` on SSE. A chunk that carries an error (its
``error``: ``omax.errors.to_wire``'s form, or a bare message meaning an
``EngineError``) is raised by ``raise_for_chunk`` in the renderers, so it ends the
stream the same way.

Invariant: the runtime's iterator is always closed, whether the stream ends, fails
or the client disconnects; closing it is what cancels the generation on the actor.
Starlette cancels the body iterator when it sees ``http.disconnect``; the close
runs shielded from that cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Generic, TypeVar

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from omax.errors import EngineError, from_wire
from omax.serve.errors import error_body, stream_error_message

T = TypeVar("T")
NDJSON = "application/x-ndjson"
SSE = "text/event-stream"
CLEANUP_TIMEOUT = 10.0  # seconds a runtime may take to clean up a cancelled stream


class Primed(Generic[T]):
    """A runtime stream whose first item has already been fetched; read it in
    ``batches``."""

    def __init__(self, source: AsyncIterator[T], first: T | None, empty: bool) -> None:
        self.source = source
        self.first = first
        self.empty = empty

    async def batches(self, limit: int = 64) -> AsyncIterator[list[T]]:
        """The items in groups: each awaited item together with those ready at once.

        A poll reply from an actor carries several steps' chunks; they reach the
        request's queue together, so one loop turn finds them all and the response
        writes them in one send (one wake-up of the client instead of one per token).
        At most ``limit`` items per group.
        """
        if self.empty:
            return
        assert self.first is not None
        batch: list[T] = [self.first]
        task: asyncio.Future[T] | None = None
        try:
            while True:
                task = asyncio.ensure_future(self.source.__anext__())
                await asyncio.sleep(0)  # an item already queued completes the task now
                if not task.done() or len(batch) >= limit:  # (batch is never empty here)
                    yield batch  # the fetch goes on while this group is written
                    batch = []
                try:
                    batch.append(await self._wait(task))
                except StopAsyncIteration:
                    if batch:
                        yield batch
                    return
                except Exception:
                    if batch:  # what came before a failure is sent before it
                        yield batch
                    raise
        finally:
            if task is not None and not task.done():  # closed at a yield mid-fetch
                await self._settle(task)

    async def _wait(self, task: asyncio.Future[T]) -> T:
        """Await a fetch task, settling it on cancellation.

        A disconnect cancels the response's scope, and anyio re-delivers that
        cancellation at every await inside it; run in the scope, the runtime's own
        cleanup (telling the actor to cancel) would be cancelled too. So the fetch runs
        in a separate task, which gets one plain cancellation and is awaited, shielded,
        until the runtime has cleaned up.
        """
        try:
            return await asyncio.shield(task)
        except BaseException:
            await self._settle(task)
            raise

    @staticmethod
    async def _settle(task: asyncio.Future[T]) -> None:
        if not task.done():
            task.cancel()
        with anyio.CancelScope(shield=True), anyio.move_on_after(CLEANUP_TIMEOUT):
            await asyncio.wait([task])

    async def aclose(self) -> None:
        await close_quietly(self.source)


async def prime(call: Awaitable[AsyncIterator[T]] | AsyncIterator[T]) -> Primed[T]:
    """Start a runtime stream and fetch its first item; errors raise here.

    Accepts both shapes a ``Runtime`` may use: a coroutine returning an async
    iterator, or an async generator.
    """
    source = await call if inspect.isawaitable(call) else call
    assert not inspect.isawaitable(source)
    try:
        first = await source.__anext__()
    except StopAsyncIteration:
        return Primed(source, None, empty=True)
    except BaseException:
        await close_quietly(source)
        raise
    return Primed(source, first, empty=False)


async def close_quietly(source: Any) -> None:
    close = getattr(source, "aclose", None)
    if close is None:
        return
    # closing must never mask the original outcome
    with (
        anyio.CancelScope(shield=True),
        anyio.move_on_after(CLEANUP_TIMEOUT),
        contextlib.suppress(Exception),
    ):
        await close()


async def collect(primed: Primed[T]) -> list[T]:
    try:
        return [item async for batch in primed.batches() for item in batch]
    finally:
        await primed.aclose()


class DisconnectAwareStreamingResponse(StreamingResponse):
    """Always watch for ``http.disconnect`` and cancel the body, whatever the ASGI version."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with anyio.create_task_group() as tg:

            async def stream() -> None:
                with contextlib.suppress(OSError):
                    await self.stream_response(send)
                tg.cancel_scope.cancel()

            tg.start_soon(stream)
            await self.listen_for_disconnect(receive)
            tg.cancel_scope.cancel()


async def _lines(
    primed: Primed[T],
    render: Callable[[T], list[dict[str, Any]]],
    encode: Callable[[dict[str, Any]], bytes],
    on_error: Callable[[BaseException], dict[str, Any]],
    trailer: bytes,
) -> AsyncIterator[bytes]:
    try:
        async for batch in primed.batches():
            yield b"".join(encode(obj) for item in batch for obj in render(item))
        if trailer:
            yield trailer
    except Exception as exc:
        yield encode(on_error(exc))
    finally:
        await primed.aclose()


def _ndjson(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


def ndjson_response(
    primed: Primed[T], render: Callable[[T], list[dict[str, Any]]]
) -> StreamingResponse:
    """One JSON object per line, no blank lines; a late failure is an error line."""
    body = _lines(primed, render, _ndjson, lambda e: {"error": stream_error_message(e)}, b"")
    return DisconnectAwareStreamingResponse(body, media_type=NDJSON)


def sse_response(
    primed: Primed[T], render: Callable[[T], list[dict[str, Any]]]
) -> StreamingResponse:
    """``data: {...}`` events ending ``data: [DONE]``; a late failure is an error event."""
    body = _lines(
        primed,
        render,
        _sse,
        lambda e: error_body("/v1/", 500, stream_error_message(e)),
        b"data: [DONE]\n\n",
    )
    return DisconnectAwareStreamingResponse(
        body, media_type=SSE, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


def raise_for_chunk(chunk: Any) -> None:
    """Raise the error a generation's chunk carries, with its type; nothing if none."""
    if chunk.error:
        raise from_wire(chunk.error, EngineError)
