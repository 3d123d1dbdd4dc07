"""``OmaxClient``: the small HTTP client the ``omax`` CLI uses to talk to a running server.

It reads ``OMAX_HOST`` (default ``127.0.0.1:11434``; ``host:port``, ``:port`` or a
URL) and sends ``OMAX_API_KEY``, else ``OLLAMA_API_KEY``, as its bearer token. Streaming methods yield one dict per NDJSON line. Errors:

    ServerUnreachable   nothing answers at the address (one-line message)
    ResponseError       the server answered an error: ``.status`` and ``.message``
"""

from __future__ import annotations

import builtins
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from omax.errors import OmaxError

DEFAULT_HOST = "127.0.0.1:11434"


class ServerUnreachable(OmaxError):
    """No omax server answers at the address."""


class ResponseError(OmaxError):
    """The server answered with an error."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def base_url(host: str | None = None) -> str:
    """Normalise ``OMAX_HOST``-style text (``host``, ``host:port``, ``:port``, URL) into a URL."""
    host = (host or os.environ.get("OMAX_HOST") or DEFAULT_HOST).strip().rstrip("/")
    explicit_scheme = "://" in host
    parts = urlsplit(host if explicit_scheme else "http://" + host)
    hostname = parts.hostname or "127.0.0.1"
    if ":" in hostname:
        hostname = f"[{hostname}]"
    port = parts.port or (None if explicit_scheme else 11434)
    netloc = f"{hostname}:{port}" if port else hostname
    return f"{parts.scheme}://{netloc}{parts.path}"


def _error(response: httpx.Response) -> ResponseError:
    try:
        body = response.json()
        err = body.get("error") if isinstance(body, dict) else None
        message = err.get("message") if isinstance(err, dict) else err
    except (ValueError, json.JSONDecodeError):
        message = None
    return ResponseError(
        str(message or response.text or response.reason_phrase), response.status_code
    )


def bearer_headers() -> dict[str, str]:
    """``Authorization`` from ``OMAX_API_KEY``, else ``OLLAMA_API_KEY``; none if neither."""
    key = (os.environ.get("OMAX_API_KEY") or os.environ.get("OLLAMA_API_KEY") or "").strip()
    return {"Authorization": f"Bearer {key}"} if key else {}


class OmaxClient:
    """Methods mirror the API; ``stream=True`` ones yield dicts as lines arrive."""

    def __init__(self, host: str | None = None, timeout: float | None = None) -> None:
        self.url = base_url(host)
        self._http = httpx.Client(
            base_url=self.url,
            timeout=httpx.Timeout(timeout, connect=5.0),
            headers=bearer_headers(),
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> OmaxClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _unreachable(self) -> ServerUnreachable:
        return ServerUnreachable(
            f"could not connect to an omax server at {self.url} (is `omax serve` running? set OMAX_HOST)"
        )

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout) as err:
            raise self._unreachable() from err
        if response.status_code >= 400:
            raise _error(response)
        return response

    def stream(self, path: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """POST ``body`` and yield each NDJSON line; an error line raises ResponseError."""
        try:
            with self._http.stream("POST", path, json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _error(response)
                for line in response.iter_lines():
                    if not line.strip():
                        continue
                    item = json.loads(line)
                    if "error" in item:
                        raise ResponseError(str(item["error"]), response.status_code)
                    yield item
        except (httpx.ConnectError, httpx.ConnectTimeout) as err:
            raise self._unreachable() from err

    def version(self) -> str:
        return self.request("GET", "/api/version").json()["version"]

    def generate(self, model: str, prompt: str = "", **fields: Any) -> Iterator[dict[str, Any]]:
        return self.stream(
            "/api/generate", {"model": model, "prompt": prompt, **fields, "stream": True}
        )

    def chat(
        self, model: str, messages: list[dict[str, Any]], **fields: Any
    ) -> Iterator[dict[str, Any]]:
        return self.stream(
            "/api/chat", {"model": model, "messages": messages, **fields, "stream": True}
        )

    def embed(self, model: str, input: str | list[str], **fields: Any) -> dict[str, Any]:
        return self.request(
            "POST", "/api/embed", json={"model": model, "input": input, **fields}
        ).json()

    def list(self) -> list[dict[str, Any]]:
        return self.request("GET", "/api/tags").json()["models"]

    def show(self, model: str) -> dict[str, Any]:
        return self.request("POST", "/api/show", json={"model": model}).json()

    def ps(self) -> builtins.list[dict[str, Any]]:
        return self.request("GET", "/api/ps").json()["models"]

    def copy(self, source: str, destination: str) -> None:
        self.request("POST", "/api/copy", json={"source": source, "destination": destination})

    def delete(self, model: str) -> None:
        self.request("DELETE", "/api/delete", json={"model": model})

    def pull(self, model: str, insecure: bool = False) -> Iterator[dict[str, Any]]:
        return self.stream("/api/pull", {"model": model, "insecure": insecure, "stream": True})

    def push(self, model: str, destination: str | None = None) -> Iterator[dict[str, Any]]:
        body: dict[str, Any] = {"model": model, "stream": True}
        if destination:
            body["destination"] = destination
        return self.stream("/api/push", body)

    def create(self, model: str, **fields: Any) -> Iterator[dict[str, Any]]:
        """``fields`` as /api/create takes them: from (pass ``from_``), files, system, …"""
        if "from_" in fields:
            fields["from"] = fields.pop("from_")
        return self.stream("/api/create", {"model": model, **fields, "stream": True})

    def create_blob(self, path: str | Path) -> str:
        """Upload a file as a blob (streamed, not read whole); return its digest."""
        import hashlib

        path = Path(path)
        hasher = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                hasher.update(block)
        digest = "sha256:" + hasher.hexdigest()
        if self.has_blob(digest):
            return digest

        def chunks() -> Iterator[bytes]:
            with path.open("rb") as f:
                yield from iter(lambda: f.read(1 << 20), b"")

        self.request("POST", f"/api/blobs/{digest}", content=chunks())
        return digest

    def has_blob(self, digest: str) -> bool:
        try:
            self.request("HEAD", f"/api/blobs/{digest}")
        except ResponseError as err:
            if err.status == 404:
                return False
            raise
        return True
