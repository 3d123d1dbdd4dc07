"""Plumbing between the scheduler plugin and the pages: snapshots and their history.

``Monitor.take()`` reads the plugin's registry, replicator and lifecycle and each
worker's last heartbeat (``WorkerState.metrics["omax"]``) into the plain dict that
``omax.dashboard.tables`` reads. ``Monitor.sample_forever`` adds one to the history a
second and counts loads and unloads by comparing the loaded models it saw. It only
reads the plugin's state; it changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from omax.dashboard.history import History

logger = logging.getLogger(__name__)

SAMPLE_EVERY_S = 1.0


class Monitor:
    def __init__(self, plugin: Any, keep: int = 600) -> None:
        self.plugin = plugin  # OmaxSchedulerPlugin
        self.history = History(keep)
        self.loads = 0
        self.unloads = 0
        self._ready: frozenset[str] = frozenset()  # actor keys ready at the last sample
        self._last: dict[str, Any] | None = None

    def take(self) -> dict[str, Any]:
        """The cluster as the pages and ``/metrics`` show it, now."""
        p = self.plugin
        workers = p.scheduler.workers if p.scheduler is not None else {}
        cluster = p.omax_cluster()
        return {
            "time": time.time(),
            "workers": cluster["workers"],
            "wanted": cluster["wanted"],
            "damage": cluster["bad_sources"],
            "failed": cluster["failed"],
            "fetching": [list(spot) for spot in p.replicator.replicating],
            "heartbeats": {a: ws.metrics.get("omax", {}) for a, ws in workers.items()},
            "counters": {
                "loads": self.loads,
                "unloads": self.unloads,
                "evictions": p.lifecycle.evicted,
                "placements_refused": p.lifecycle.refused,
            },
        }

    def sample(self) -> dict[str, Any]:
        """Count loads and unloads since the last sample, then add a snapshot."""
        loaded = self.plugin.registry.loaded
        ready = frozenset(k for k, m in loaded.items() if m.ready)
        self.loads += len(ready - self._ready)
        self.unloads += len(self._ready - frozenset(loaded))
        self._ready = ready
        snap = self.take()
        self.history.add(snap)
        self._last = snap
        return snap

    def latest(self) -> dict[str, Any]:
        """The last sample's snapshot (at most ``SAMPLE_EVERY_S`` old), or a new one."""
        return self._last if self._last is not None else self.take()

    async def sample_forever(self, every: float = SAMPLE_EVERY_S) -> None:
        while True:
            try:
                self.sample()
            except Exception:  # a page must never take the scheduler down
                logger.exception("omax dashboard sample failed")
            await asyncio.sleep(every)
