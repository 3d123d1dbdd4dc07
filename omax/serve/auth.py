"""The auth middleware: one check per request against the route table, and the audit log.

The policy is ``omax.auth.policy.authenticate`` and ``omax.auth.roles``; this module
is the plumbing around them: reading the bearer header, keeping a fresh snapshot of
the store's keys and revocations, answering 401/403 in the path's error shape, and
writing one ``omax.audit`` line per call that changes state.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import anyio.to_thread
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from omax.auth import Forbidden, Unauthorized
from omax.auth.policy import AuthConfig, Principal, authenticate, bearer_value
from omax.auth.roles import audited, permits, required_role
from omax.auth.store import KEY_PREFIX, AuthSnapshot, AuthStore
from omax.errors import OmaxError
from omax.serve.errors import error_response
from omax.serve.requestid import current_request_id

log = logging.getLogger(__name__)
audit_log = logging.getLogger("omax.audit")

POLL_INTERVAL = 2.0  # seconds a snapshot of keys and revocations is trusted
# An unknown key is looked up again in a snapshot at most this old, so a key works as
# soon as `omax key create` prints it; unknown keys cannot make reads more frequent.
NEW_KEY_AGE = 0.5
AUDIT_BODY_BYTES = 64 * 1024  # how much of a body the audit line looks into for a model name


class SnapshotCache:
    """The store's keys and revocations, read again when the last read is older than
    ``interval``. The read happens on the request that finds the snapshot stale (one
    at a time, in a thread), so a revocation is honoured within ``interval`` plus one
    read, and an idle front door reads nothing. If a read fails, the last snapshot
    stays and the failure is logged; the next stale request tries again.
    ``current(max_age)`` asks for a younger snapshot than ``interval``."""

    def __init__(self, store: AuthStore | None, interval: float = POLL_INTERVAL) -> None:
        self.store = store
        self.interval = interval
        self._snapshot = AuthSnapshot()
        self._read_at = float("-inf")
        self._lock: asyncio.Lock | None = None

    def _fresh(self, max_age: float) -> bool:
        return time.monotonic() - self._read_at < max_age

    async def current(self, max_age: float | None = None) -> AuthSnapshot:
        max_age = self.interval if max_age is None else max_age
        if self.store is None or self._fresh(max_age):
            return self._snapshot
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if not self._fresh(max_age):
                try:
                    self._snapshot = await anyio.to_thread.run_sync(self.store.snapshot)
                except OmaxError as err:
                    log.warning("cannot read keys and revocations, keeping the last: %s", err)
                self._read_at = time.monotonic()
        return self._snapshot


class AuthMiddleware:
    """Authenticate, authorise by ``omax.auth.roles``, audit state changes."""

    def __init__(self, app: ASGIApp, config: AuthConfig, cache: SnapshotCache | None = None):
        self.app = app
        self.config = config
        if cache is None:
            cache = SnapshotCache(AuthStore(config.store_url) if config.store_url else None)
        self.cache = cache

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope["path"], scope["method"]
        needed = required_role(path, self.config.metrics)
        if needed is None:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        principal: Principal | None = None
        try:
            bearer = bearer_value(headers.get(b"authorization", b"").decode("latin-1"))
            principal = await self._authenticate(bearer)
            if not permits(principal.role, needed):
                raise Forbidden(
                    f"forbidden: role {principal.role.name!r} may not use {path} "
                    f"(needs {needed.name})"
                )
        except (Unauthorized, Forbidden) as err:
            extra = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
            if audited(method, needed):
                _audit(principal, method, path, headers, None, err.status)
            await error_response(path, err.status, str(err), headers=extra)(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        if not audited(method, needed):
            await self.app(scope, receive, send)
            return
        body = bytearray()
        status = 500

        async def recording_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request" and len(body) < AUDIT_BODY_BYTES:
                body.extend(message.get("body", b"")[: AUDIT_BODY_BYTES - len(body)])
            return message

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, recording_receive, recording_send)
        finally:
            _audit(principal, method, path, headers, bytes(body), status)

    async def _authenticate(self, bearer: str) -> Principal:
        try:
            return authenticate(bearer, self.config, await self.cache.current())
        except Unauthorized:
            if not bearer.startswith(KEY_PREFIX):
                raise
            return authenticate(bearer, self.config, await self.cache.current(NEW_KEY_AGE))


def _model_of(path: str, body: bytes | None) -> str:
    if path.startswith("/api/blobs/"):
        return path.rsplit("/", 1)[-1]
    try:
        doc: Any = json.loads(body) if body else None
    except ValueError:
        return ""
    if not isinstance(doc, dict):
        return ""
    if "source" in doc or "destination" in doc:
        return f"{doc.get('source', '')} -> {doc.get('destination', '')}"
    return str(doc.get("model") or doc.get("name") or "")


def _audit(
    principal: Principal | None,
    method: str,
    path: str,
    headers: dict[bytes, bytes],
    body: bytes | None,
    status: int,
) -> None:
    request_id = current_request_id()  # the id answered in X-Request-ID (requestid.py)
    audit_log.info(
        "who=%s role=%s route=%s %s model=%s status=%d request_id=%s",
        principal.name if principal else "-",
        principal.role.name if principal else "-",
        method,
        path,
        json.dumps(_model_of(path, body)),
        status,
        request_id or "-",
    )
