"""``OmaxClient``: the small HTTP client the ``omax`` CLI uses to talk to a running server.

It reads ``OMAX_HOST``, else ``OLLAMA_HOST`` (Ollama's forms: ``host``, ``host:port``,
``:port``, ``http://host:port``; a missing port is ``omax.serve.port``, 11434 unless
configured), and sends ``OMAX_API_KEY``, else ``OLLAMA_API_KEY``, as its bearer token.
Streaming methods yield one dict per NDJSON line. Errors (all ``OmaxError``, so the CLI
prints them as one line):

    ServerUnreachable   nothing answers at the address
      ConnectionLost    the server went away in the middle of an answer
    ResponseError       the server answered an error: ``.status`` and ``.message``
"""

from __future__ import annotations

import builtins
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from omax.config import positive_int
from omax.errors import ConfigError, OmaxError

DEFAULT_ADDRESS = "127.0.0.1"

Progress = Callable[[str, int, int], None]


class ServerUnreachable(OmaxError):
    """No omax server answers at the address."""


class ConnectionLost(ServerUnreachable):
    """The connection dropped before the server finished its answer."""


class ResponseError(OmaxError):
    """The server answered with an error."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def default_port() -> int:
    """The port ``omax serve`` listens on by default (``omax.serve.port``; 11434 where
    that is not a positive integer). Only this key is read: a bad value elsewhere in
    the configuration is the server's to refuse, not the client's."""
    try:
        return positive_int("serve.port")
    except ConfigError:
        return 11434


def base_url(host: str | None = None) -> str:
    """Normalise host text into a URL, as Ollama reads ``OLLAMA_HOST``.

    ``host`` wins, then ``OMAX_HOST``, then ``OLLAMA_HOST``. ``host``, ``host:port``,
    ``:port`` and URLs are accepted; a bare host gets the default port, a URL keeps its
    scheme's port. A bind-all address (``0.0.0.0``, ``::``) means this machine.
    """
    text = host or os.environ.get("OMAX_HOST") or os.environ.get("OLLAMA_HOST") or ""
    text = text.strip().rstrip("/") or DEFAULT_ADDRESS
    explicit_scheme = "://" in text
    parts = urlsplit(text if explicit_scheme else "http://" + text)
    try:
        port = parts.port
    except ValueError:
        port = None  # Ollama falls back to the default on a bad port, too
    hostname = parts.hostname or DEFAULT_ADDRESS
    hostname = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(hostname, hostname)
    if ":" in hostname:
        hostname = f"[{hostname}]"
    port = port or (None if explicit_scheme else default_port())
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

    def _lost(self) -> ConnectionLost:
        return ConnectionLost(f"lost the connection to the omax server at {self.url}")

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout) as err:
            raise self._unreachable() from err
        except httpx.TransportError as err:
            raise self._lost() from err
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
                    try:
                        item = json.loads(line)
                    except json.JSONDecodeError as err:
                        raise self._lost() from err  # a line cut short
                    if "error" in item:
                        raise ResponseError(str(item["error"]), response.status_code)
                    yield item
        except (httpx.ConnectError, httpx.ConnectTimeout) as err:
            raise self._unreachable() from err
        except httpx.TransportError as err:
            raise self._lost() from err

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

    def show(self, model: str, verbose: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model}
        if verbose:
            body["verbose"] = True
        return self.request("POST", "/api/show", json=body).json()

    def ps(self) -> builtins.list[dict[str, Any]]:
        return self.request("GET", "/api/ps").json()["models"]

    def copy(self, source: str, destination: str) -> None:
        self.request("POST", "/api/copy", json={"source": source, "destination": destination})

    def delete(self, model: str) -> None:
        self.request("DELETE", "/api/delete", json={"model": model})

    def pull(self, model: str, insecure: bool = False) -> Iterator[dict[str, Any]]:
        return self.stream("/api/pull", {"model": model, "insecure": insecure, "stream": True})

    def push(
        self, model: str, destination: str | None = None, insecure: bool = False
    ) -> Iterator[dict[str, Any]]:
        body: dict[str, Any] = {"model": model, "insecure": insecure, "stream": True}
        if destination:
            body["destination"] = destination
        return self.stream("/api/push", body)

    def create(self, model: str, **fields: Any) -> Iterator[dict[str, Any]]:
        """``fields`` as /api/create takes them: from (pass ``from_``), files, system, …"""
        if "from_" in fields:
            fields["from"] = fields.pop("from_")
        return self.stream("/api/create", {"model": model, **fields, "stream": True})

    def create_blob(self, path: str | Path, progress: Progress | None = None) -> str:
        """Upload a file as a blob (streamed, not read whole); return its digest.

        ``progress(phase, done, total)`` is called as bytes are hashed (``"hashing"``)
        and uploaded (``"uploading"``); an upload the server already holds is skipped.
        """
        import hashlib

        path = Path(path)
        total = path.stat().st_size
        report = progress or (lambda phase, done, total: None)
        hasher = hashlib.sha256()
        done = 0
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                hasher.update(block)
                done += len(block)
                report("hashing", done, total)
        digest = "sha256:" + hasher.hexdigest()
        if self.has_blob(digest):
            report("uploading", total, total)
            return digest

        def chunks() -> Iterator[bytes]:
            sent = 0
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    yield block
                    sent += len(block)
                    report("uploading", sent, total)

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
