"""Small ASGI middlewares: the request body limit (auth lives in ``omax.serve.auth``).

It answers with the error shape of the path's API family (``omax.serve.errors``).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from omax.errors import OmaxError
from omax.serve.errors import error_response


class BodyTooLarge(OmaxError):
    """Raised from ``receive`` mid-body; the exception handlers answer it as a 413."""

    status = 413

    def __init__(self) -> None:
        super().__init__("request body too large")


class BodyLimitMiddleware:
    """Answer 413 when a body passes ``max_bytes``; blob uploads are exempt (they stream)."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        exempt: tuple[str, ...] = ("/api/blobs/",),
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.exempt):
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await error_response(path, 413, "request body too large")(scope, receive, send)
                return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await error_response(path, 413, "request body too large")(scope, receive, send)
