"""Leases on a model actor's requests: a generation lives while someone polls it.

A front door polls every stream it serves several times a second, so each poll
renews the lease of the requests it names. A front door that dies (SIGKILL, a lost
host) stops renewing: once a request's lease is older than ``omax.worker.request-lease``
the actor cancels it, so orphaned generations neither run nor buffer for ever, and
the model's load as its actor sees it (``live``, ``idle_s`` in ``ModelActor.stats``)
lets the scheduler idle the model out even though that front door never said the
request ended (``omax.plugins.lifecycle``).

Pure bookkeeping over monotonic times; the actor owns the clock and the engine.
"""

from __future__ import annotations

from collections.abc import Iterable


class RequestLeases:
    def __init__(self, now: float) -> None:
        self._seen: dict[str, float] = {}  # request id -> last submit or poll
        self._active = now  # last time any request was submitted, polled or ended

    def renew(self, request_ids: Iterable[str], now: float) -> None:
        """``request_ids`` were submitted or polled at ``now``."""
        for rid in request_ids:
            self._seen[rid] = now
        self._active = now

    def end(self, request_id: str, now: float) -> None:
        """``request_id`` finished or was cancelled: no lease to keep."""
        if self._seen.pop(request_id, None) is not None:
            self._active = now

    def expired(self, now: float, ttl: float) -> list[str]:
        """Requests not renewed for more than ``ttl`` s; they are dropped here."""
        gone = [rid for rid, seen in self._seen.items() if now - seen > ttl]
        for rid in gone:
            del self._seen[rid]
        return gone

    def __len__(self) -> int:
        return len(self._seen)

    def idle_for(self, now: float) -> float:
        """Seconds since the last request activity; 0 while a lease is held."""
        return 0.0 if self._seen else max(0.0, now - self._active)
