"""A small, real Ollama-style registry for tests, on 127.0.0.1 over plain HTTP.

It keeps the layout Ollama's registry serves: ``blobs/sha256-<hex>`` and
``manifests/<namespace>/<model>/<tag>`` under a folder, and answers

- ``GET|HEAD /v2/<ns>/<model>/manifests/<tag>``, ``PUT`` the same (every blob the
  manifest names must be there),
- ``GET|HEAD /v2/<ns>/<model>/blobs/<digest>`` with ``Range: bytes=N-`` (206),
- ``POST /v2/<ns>/<model>/blobs/uploads/`` (202 + Location), ``PATCH`` the upload
  (appends; 202 + Location), ``PUT <upload>?digest=`` (checks the sha256; 201).

Faults for tests: ``cut(digest, after)`` closes the next GETs of a blob after so many
bytes (one number per GET), ``corrupt(digest)`` serves one flipped byte. ``requests``
records ``(method, path, Range header)``. ``publish_gguf`` puts a GGUF model in place
as ``ollama create`` + ``ollama push`` would.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"
MEDIA = "application/vnd.ollama.image."
ROUTE = re.compile(r"^/v2/(?P<repo>[^/]+/[^/]+)/(?P<kind>manifests|blobs)/(?P<rest>.+)$")


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            h.update(block)
    return "sha256:" + h.hexdigest()


class Registry:
    """Start with ``Registry(folder)``; ``host`` is ``127.0.0.1:<port>``; ``close()``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs").mkdir(parents=True, exist_ok=True)
        (root / "uploads").mkdir(exist_ok=True)
        self.requests: list[tuple[str, str, str | None]] = []
        self.cuts: dict[str, list[int]] = {}
        self.corrupted: set[str] = set()
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.httpd.daemon_threads = True
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def blob(self, digest: str) -> Path:
        return self.root / "blobs" / digest.replace(":", "-")

    def manifest_path(self, repo: str, tag: str) -> Path:
        return self.root / "manifests" / repo / tag

    def manifest(self, repo: str, tag: str) -> bytes:
        return self.manifest_path(repo, tag).read_bytes()

    def cut(self, digest: str, *after: int) -> None:
        self.cuts[digest] = list(after)

    def corrupt(self, digest: str) -> None:
        self.corrupted.add(digest)

    def put_blob(self, data: bytes) -> dict[str, Any]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.blob(digest).write_bytes(data)
        return {"digest": digest, "size": len(data)}

    def publish_gguf(self, repo: str, tag: str, gguf: Path, **texts: str) -> dict[str, Any]:
        """Publish ``gguf`` (hard-linked, or copied) with text layers ``texts``
        (``template=``, ``system=``, ``params=`` JSON, ``license=``) as ``repo:tag``."""
        digest = sha256_of(gguf)
        dest = self.blob(digest)
        if not dest.exists():
            try:
                os.link(gguf, dest)
            except OSError:
                dest.write_bytes(gguf.read_bytes())
        layers = [{"mediaType": MEDIA + "model", "digest": digest, "size": dest.stat().st_size}]
        for kind, text in texts.items():
            layers.append({"mediaType": MEDIA + kind, **self.put_blob(text.encode())})
        config = {
            "model_format": "gguf",
            "model_family": "llama",
            "model_families": ["llama"],
            "rootfs": {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]},
        }
        doc = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {"mediaType": CONFIG_TYPE, **self.put_blob(json.dumps(config).encode())},
            "layers": layers,
        }
        path = self.manifest_path(repo, tag)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(json.dumps(doc, indent=2).encode())
        return doc


def _handler(reg: Registry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _record(self) -> None:
            with reg.lock:
                reg.requests.append((self.command, self.path, self.headers.get("Range")))

        def _send(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None):
            self.send_response(code)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _error(self, code: int, message: str) -> None:
            body = json.dumps({"errors": [{"code": str(code), "message": message}]}).encode()
            self._send(code, body, {"Content-Type": "application/json"})

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            self._record()
            m = ROUTE.match(self.path)
            if not m:
                return self._error(404, "not found")
            if m["kind"] == "manifests":
                path = reg.manifest_path(m["repo"], m["rest"])
                if not path.exists():
                    return self._error(404, "manifest unknown")
                data = path.read_bytes()
                digest = "sha256:" + hashlib.sha256(data).hexdigest()
                return self._send(
                    200, data, {"Content-Type": MANIFEST_TYPE, "Docker-Content-Digest": digest}
                )
            self._get_blob(m["rest"])

        def _get_blob(self, digest: str) -> None:
            path = reg.blob(digest)
            if not path.exists():
                return self._error(404, "blob unknown")
            size = path.stat().st_size
            start = 0
            rng = self.headers.get("Range")
            if rng and (r := re.match(r"bytes=(\d+)-", rng)):
                start = int(r[1])
                if start >= size:
                    return self._error(416, "range not satisfiable")
            code = 206 if start else 200
            self.send_response(code)
            self.send_header("Content-Length", str(size - start))
            self.send_header("Content-Type", "application/octet-stream")
            if start:
                self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
            self.end_headers()
            if self.command == "HEAD":
                return
            with reg.lock:
                cuts = reg.cuts.get(digest) or []
                limit = cuts.pop(0) if cuts else None
            self._stream(path, start, digest, limit)

        def _stream(self, path: Path, start: int, digest: str, limit: int | None) -> None:
            sent = 0
            with open(path, "rb") as f:
                f.seek(start)
                while block := f.read(1 << 20):
                    if digest in reg.corrupted and sent == 0 and start == 0:
                        block = bytes([block[0] ^ 0xFF]) + block[1:]
                    if limit is not None and sent + len(block) >= limit:
                        self.wfile.write(block[: max(limit - sent, 0)])
                        self.wfile.flush()
                        self.close_connection = True
                        self.connection.shutdown(2)
                        return
                    self.wfile.write(block)
                    sent += len(block)

        def do_POST(self) -> None:
            self._record()
            m = re.match(r"^/v2/([^/]+/[^/]+)/blobs/uploads/?$", self.path)
            if not m:
                return self._error(404, "not found")
            upload = uuid.uuid4().hex
            (reg.root / "uploads" / upload).write_bytes(b"")
            where = f"/v2/{m[1]}/blobs/uploads/{upload}"
            self._send(202, b"", {"Location": where, "Docker-Upload-UUID": upload})

        def do_PATCH(self) -> None:
            self._record()
            m = re.match(r"^/v2/([^/]+/[^/]+)/blobs/uploads/([0-9a-f]+)$", self.path)
            if not m or not (reg.root / "uploads" / m[2]).exists():
                return self._error(404, "upload unknown")
            with open(reg.root / "uploads" / m[2], "ab") as f:
                f.write(self._body())
                size = f.tell()
            self._send(202, b"", {"Location": self.path, "Range": f"0-{max(size - 1, 0)}"})

        def do_PUT(self) -> None:
            self._record()
            up = re.match(r"^/v2/([^/]+/[^/]+)/blobs/uploads/([0-9a-f]+)\?digest=(\S+)$", self.path)
            if up:
                return self._finish_upload(up[2], up[3])
            m = ROUTE.match(self.path)
            if not m or m["kind"] != "manifests":
                return self._error(404, "not found")
            data = self._body()
            doc = json.loads(data)
            for layer in [*doc["layers"], doc["config"]]:
                if not reg.blob(layer["digest"]).exists():
                    return self._error(400, f"blob unknown: {layer['digest']}")
            path = reg.manifest_path(m["repo"], m["rest"])
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            self._send(201)

        def _finish_upload(self, upload: str, digest: str) -> None:
            path = reg.root / "uploads" / upload
            if not path.exists():
                return self._error(404, "upload unknown")
            with open(path, "ab") as f:
                f.write(self._body())
            if sha256_of(path) != digest:
                path.unlink()
                return self._error(400, "digest invalid")
            path.rename(reg.blob(digest))
            self._send(201, b"", {"Docker-Content-Digest": digest})

    return Handler
