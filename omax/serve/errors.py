"""Map every exception to an HTTP response, once, by the API family of the path.

    /api/* and the rest   {"error": "<message>"}
    /v1/*                 {"error": {"message", "type", "param": null, "code": null}}

``omax.errors.OmaxError`` subclasses carry their status; Starlette's
``HTTPException`` (404 unknown route, 405 wrong method) keeps its own; anything
else is a 500 whose body says only "internal server error" (the traceback goes to
the log, never to the client).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from omax.errors import OmaxError

log = logging.getLogger(__name__)

_HTTP_MESSAGES = {
    404: "404 page not found",
    405: "405 method not allowed",
    413: "request body too large",
    401: "unauthorized",
}


def openai_type(status: int) -> str:
    if status == 404:
        return "not_found_error"
    if 400 <= status < 500:
        return "invalid_request_error"
    return "api_error"


def is_openai(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/")


def error_body(path: str, status: int, message: str) -> dict[str, Any]:
    """The JSON error body for ``path``'s API family."""
    if is_openai(path):
        return {
            "error": {"message": message, "type": openai_type(status), "param": None, "code": None}
        }
    return {"error": message}


def error_response(
    path: str, status: int, message: str, headers: Mapping[str, str] | None = None
) -> Response:
    return JSONResponse(error_body(path, status, message), status_code=status, headers=headers)


async def omax_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, OmaxError)
    status = getattr(exc, "status", 500)
    if status >= 500:
        log.warning("%s %s failed: %s", request.method, request.url.path, exc)
    else:  # the access line has the status only: this says which model, which field
        log.info("%s %s refused (%d): %s", request.method, request.url.path, status, exc)
    return error_response(request.url.path, status, str(exc) or type(exc).__name__)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = _HTTP_MESSAGES.get(exc.status_code) or str(exc.detail)
    if exc.status_code not in _HTTP_MESSAGES and exc.detail:
        message = str(exc.detail)
    return error_response(request.url.path, exc.status_code, message, headers=exc.headers)


async def server_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(request.url.path, 500, "internal server error")


def exception_handlers() -> dict[Any, Any]:
    return {OmaxError: omax_error, HTTPException: http_error, Exception: server_error}


def stream_error_message(exc: BaseException) -> str:
    """What a stream says when it fails after the first line was sent."""
    if isinstance(exc, OmaxError):
        return str(exc) or type(exc).__name__
    log.error("stream failed", exc_info=exc)
    return "internal server error"
