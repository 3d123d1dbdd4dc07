"""Request ids: ``X-Request-ID`` accepted or made, returned, and named in every log line.

``RequestIdMiddleware`` (the outermost middleware, so even a 401 or a 413 carries
the header) takes a client's ``X-Request-ID`` when it is 1–128 characters of
``[A-Za-z0-9._-]`` and makes a new one (32 hex digits) otherwise. It opens an
``omax.logs.log_context`` for the request, so every line logged while answering it
names the id (and the model and worker once ``omax.logs.bind`` sets them), and adds
the header to the response's start, streams included.

``engine_request_id`` is the id the request carries to the model actor
(``GenerateRequest.request_id``): the same id when the front door made it; when a
client chose it, that id with ``.`` and 8 random hex digits appended, because an
actor keys live requests by id and two clients may well send the same one. Grep a
worker's log for the client's id and both forms are found.
"""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from omax.logs import current_context, log_context

HEADER = "X-Request-ID"
_HEADER_KEY = HEADER.lower().encode()
_VALID = re.compile(r"[A-Za-z0-9._-]{1,128}")
_client_chose: ContextVar[bool] = ContextVar("omax_request_id_given", default=False)


def new_request_id() -> str:
    return uuid.uuid4().hex


def accept(value: str | None) -> str | None:
    """``value`` when it is a request id we accept as given, else None."""
    if value is not None and _VALID.fullmatch(value):
        return value
    return None


def current_request_id() -> str:
    """The id of the HTTP request being answered ("" outside one)."""
    ctx = current_context()
    return ctx.request_id if ctx is not None else ""


def engine_request_id() -> str:
    """A unique id for the actor, naming the current request (see the module doc)."""
    ctx = current_context()
    if ctx is None or not ctx.request_id:
        return new_request_id()
    if _client_chose.get():
        return f"{ctx.request_id}.{uuid.uuid4().hex[:8]}"
    return ctx.request_id


class RequestIdMiddleware:
    """Give every HTTP request an id, log under it and return it (module doc)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = None
        for name, value in scope["headers"]:
            if name == _HEADER_KEY:
                given = accept(value.decode("latin-1"))
                break
        rid = given or new_request_id()
        header = (_HEADER_KEY, rid.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0].lower() != _HEADER_KEY]
                message = {**message, "headers": [*headers, header]}
            await send(message)

        token = _client_chose.set(given is not None)
        try:
            with log_context(request_id=rid):
                await self.app(scope, receive, send_with_id)
        finally:
            _client_chose.reset(token)
