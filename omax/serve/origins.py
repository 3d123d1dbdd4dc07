"""Who may talk to a front door from a browser: ``Host`` and ``Origin`` checks.

Two attacks reach a server on 127.0.0.1 through the user's own browser: DNS
rebinding (a page at ``evil.example`` whose name now resolves to 127.0.0.1 calls the
API with ``Host: evil.example``) and cross-origin requests from any open tab. Ollama
answers both, and so does omax, the same way:

- On a loopback bind, a request whose ``Host`` is not a local name (``localhost``,
  this machine's name, ``*.localhost``/``*.local``/``*.internal``, or an IP address
  that is loopback, private or this machine's) is refused with 403. On any other bind
  the operator chose to be reachable, and auth guards the door.
- A request carrying an ``Origin`` header from an origin not allowed is refused with
  403; allowed ones get CORS headers and their preflights a 204. Allowed: the local
  origins below, ``omax.serve.origins`` and ``OLLAMA_ORIGINS`` (comma separated),
  with ``*`` wildcards as Ollama takes them.

``host_allowed`` and ``origin_allowed`` are pure; ``OriginMiddleware`` is the ASGI part.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import os
import socket
from collections.abc import Iterable

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from omax.serve.errors import error_response

LOCAL_ORIGINS = tuple(
    f"{scheme}://{host}{port}"
    for scheme in ("http", "https")
    for host in ("localhost", "127.0.0.1", "0.0.0.0", "[::1]")
    for port in ("", ":*")
) + ("app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*")

_LOCAL_SUFFIXES = (".localhost", ".local", ".internal")


def _local_addresses() -> set[str]:
    try:
        return {str(a[4][0]) for a in socket.getaddrinfo(socket.gethostname(), None)}
    except OSError:
        return set()


def host_allowed(host_header: str, hostname: str | None = None) -> bool:
    """Whether a ``Host`` header names this machine (Ollama's list of local names)."""
    host = host_header.strip().lower()
    if host.startswith("["):  # [::1]:11434
        host = host[1 : host.find("]")] if "]" in host else host[1:]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    if host in ("", "localhost") or host.endswith(_LOCAL_SUFFIXES):
        return True
    if host == (hostname if hostname is not None else socket.gethostname()).lower():
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_private or ip.is_unspecified or host in _local_addresses()


def origin_allowed(origin: str, patterns: Iterable[str]) -> bool:
    """Whether ``origin`` (scheme://host[:port]) matches an allowed pattern."""
    origin = origin.strip().lower()
    return any(fnmatch.fnmatchcase(origin, p.strip().lower()) for p in patterns if p.strip())


def allowed_origins(configured: Iterable[str] = (), env: str | None = None) -> tuple[str, ...]:
    """The local origins, ``configured`` and ``OLLAMA_ORIGINS``."""
    extra = os.environ.get("OLLAMA_ORIGINS", "") if env is None else env
    return (*LOCAL_ORIGINS, *configured, *(o for o in extra.split(",") if o.strip()))


class OriginMiddleware:
    """403 for a foreign ``Host`` on a loopback bind or a foreign ``Origin``; CORS for
    the allowed ones (Starlette's ``CORSMiddleware`` answers their preflights)."""

    def __init__(self, app: ASGIApp, origins: Iterable[str], check_host: bool) -> None:
        self.patterns = tuple(origins)
        self.check_host = check_host
        self.cors = CORSMiddleware(
            app,
            allow_origins=(),
            allow_origin_regex=".*",  # only reached once ``origin_allowed`` said yes
            allow_methods=["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS"],
            allow_headers=["*"],
            allow_credentials=False,
        )
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        path = scope["path"]
        if self.check_host and not host_allowed(headers.get("host", "")):
            await error_response(path, 403, "host not allowed")(scope, receive, send)
            return
        origin = headers.get("origin")
        host = headers.get("host", "")
        if origin is None or origin in (f"http://{host}", f"https://{host}"):  # same origin
            await self.app(scope, receive, send)
        elif origin_allowed(origin, self.patterns):
            await self.cors(scope, receive, send)
        else:
            await error_response(path, 403, "origin not allowed")(scope, receive, send)
