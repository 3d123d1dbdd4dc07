"""The omax worker plugin: inference slots, the local blob store and its replicas.

Load it with ``dask worker ADDR --preload omax.plugins.worker``. The plugin

- detects the worker's slots (GPUs, or one CPU slot of ``omax.worker.slot-memory``),
- opens the worker-local blob store (``omax.worker.store``) and knows which replicas
  in it are complete (a marker written after every blob verified) or partial,
- answers ``omax_state`` (slots + replicas) and ``omax_replicate`` (fetch a model's
  blobs into the local store) for the scheduler, and pushes ``omax_report`` to the
  scheduler whenever its replicas change.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from distributed import WorkerPlugin
from distributed.worker import Worker

from omax.config import settings, worker_store_path
from omax.plugins.replicas import LocalReplicas
from omax.plugins.slots import detect_slots

logger = logging.getLogger(__name__)

PLUGIN_NAME = "omax"


class OmaxWorkerPlugin(WorkerPlugin):
    name = PLUGIN_NAME
    idempotent = True

    def __init__(self) -> None:
        self.worker: Worker | None = None
        self.replicas: LocalReplicas | None = None
        self.slots: tuple = ()
        self.origin_url = ""

    def setup(self, worker: Worker) -> None:
        cfg = settings()
        self.worker = worker
        self.origin_url = cfg.store_url
        self.slots = detect_slots(cfg.device, cfg.slot_memory)
        path = worker_store_path(cfg.worker_store, worker.address)
        self.replicas = LocalReplicas(path)
        worker.handlers["omax_state"] = self.state
        worker.handlers["omax_replicate"] = self.replicate
        logger.info(
            "omax worker plugin: %d slot(s) %s, store %s",
            len(self.slots),
            [s.id for s in self.slots],
            path,
        )

    def state(self) -> dict[str, Any]:
        """Slots and replicas, as plain dicts for the scheduler."""
        assert self.replicas is not None
        return {
            "host": self.worker.ip if self.worker else "",
            "slots": [s.to_dict() for s in self.slots],
            "replicas": {d: r.to_dict() for d, r in self.replicas.scan().items()},
        }

    async def replicate(self, digest: str, origin: str = "") -> dict[str, Any]:
        """Make this worker hold a complete, verified replica of manifest ``digest``."""
        assert self.replicas is not None
        source = origin or self.origin_url
        replica = await asyncio.to_thread(self.replicas.fetch, digest, source, self._progress)
        await self._push()
        return replica.to_dict()

    def _progress(self, digest: str, done: int, total: int) -> None:
        if self.worker is not None:
            self.worker.loop.add_callback(self._push_progress, digest, done, total)

    async def _push_progress(self, digest: str, done: int, total: int) -> None:
        try:
            await self.worker.scheduler.omax_progress(  # type: ignore[union-attr]
                worker=self.worker.address, digest=digest, done=done, total=total
            )
        except Exception:  # progress is best effort
            pass

    async def _push(self) -> None:
        try:
            await self.worker.scheduler.omax_report(  # type: ignore[union-attr]
                worker=self.worker.address, **self.state()
            )
        except Exception as e:
            logger.warning("could not report replicas to the scheduler: %s", e)


def plugin_of(worker: Worker) -> OmaxWorkerPlugin:
    """The omax plugin of ``worker``; raises if the worker was started without it."""
    plugin = worker.plugins.get(PLUGIN_NAME)
    if not isinstance(plugin, OmaxWorkerPlugin):
        raise RuntimeError("this worker was started without --preload omax.plugins.worker")
    return plugin


async def dask_setup(worker: Worker) -> None:
    """Preload entry point: ``dask worker ADDR --preload omax.plugins.worker``."""
    await worker.plugin_add(OmaxWorkerPlugin(), name=PLUGIN_NAME)
