"""The omax scheduler plugin: thin wiring of the registry, model lifecycle and
replication, with the ``omax_*`` RPC handlers front doors, workers and the CLI call.

Load it with ``dask scheduler --preload omax.plugins.scheduler``. The parts:

- ``registry.Registry``: every worker's slots and replicas (pulled with
  ``omax_state`` when a worker joins, pushed by the worker with ``omax_report`` when
  they change), replication progress, loaded models and when replicas were last used;
- ``lifecycle.Lifecycle``: ``omax_ensure`` loads a model where the pure
  ``placement.place`` says, ``omax_unload`` and the keep-alive reaper unload it, and
  ``omax_actor_failed`` unloads a model whose engine died;
- ``replicator.Replicator``: ``omax_replicate_model`` and the maintenance loop
  keep wanted models at their replica count and workers under their disk budget;
  wanted counts persist next to the catalog (``omax.sharding.wanted``);
- ``tasks.Tasks``: every background task, owned, named and cancelled at close.

Hooks stay O(1) in the number of tasks: the plugin hooks workers joining and
leaving only. A worker that leaves takes its loaded models (re-placed elsewhere
while still wanted) and its complete replicas (wanted back at the target count).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict
from typing import Any

from distributed import SchedulerPlugin
from distributed.scheduler import Scheduler

from omax.config import settings
from omax.errors import OmaxError, to_wire
from omax.plugins.lifecycle import Lifecycle
from omax.plugins.registry import Registry
from omax.plugins.replicator import Replicator
from omax.plugins.security import client_security
from omax.plugins.state import WorkerInfo
from omax.plugins.tasks import Tasks
from omax.sharding.catalog import normalize_name

logger = logging.getLogger(__name__)

PLUGIN_NAME = "omax"

HANDLERS = (
    "omax_info",
    "omax_report",
    "omax_progress",
    "omax_cluster",
    "omax_ps",
    "omax_ensure",
    "omax_touch",
    "omax_unload",
    "omax_actor_failed",
    "omax_catalog_set",
    "omax_catalog_delete",
    "omax_replicate_model",
    "omax_bad_source",
)


class OmaxSchedulerPlugin(SchedulerPlugin):
    name = PLUGIN_NAME
    idempotent = True

    def __init__(self) -> None:
        self.cfg = settings()
        self.scheduler: Scheduler | None = None
        self.registry = Registry()
        self.tasks = Tasks()
        self.replicator = Replicator(self.cfg, self.registry, self.tasks, self._rpc)
        self.lifecycle = Lifecycle(
            self.cfg, self.registry, self.tasks, self.replicator, self._rpc, self._settle
        )
        self._joining: dict[str, asyncio.Task] = {}  # worker -> its first state pull
        self.monitor: Any = None  # omax.dashboard.snapshot.Monitor, set at start

    @property
    def workers(self) -> dict[str, WorkerInfo]:
        return self.registry.workers

    def _live_slots(self, address: str) -> list[dict[str, Any]] | None:
        """The slots ``address`` reported in its last heartbeat (``worker.metrics``)."""
        ws = self.scheduler.workers.get(address) if self.scheduler is not None else None
        beat = ws.metrics.get("omax") if ws is not None else None
        return beat.get("slots") if isinstance(beat, dict) else None

    def _rpc(self, address: str) -> Any:
        assert self.scheduler is not None
        return self.scheduler.rpc(address)

    async def start(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.lifecycle.address = scheduler.address
        self.lifecycle.security = client_security(scheduler.security)
        self.lifecycle.live_slots = self._live_slots
        for name in HANDLERS:
            scheduler.handlers[name] = getattr(self, name)
        from omax.plugins import dashboard

        dashboard.register(scheduler, self)
        self.tasks.spawn(self.lifecycle.reap_forever(), name="omax: keep-alive reaper")
        self.tasks.spawn(self.replicator.maintain_forever(), name="omax: replication loop")
        self.tasks.spawn(self.replicator.load_wanted(), name="omax: read wanted counts")

    async def before_close(self) -> None:
        await self.tasks.cancel_all()
        await self.lifecycle.close()

    # ---- worker membership ------------------------------------------------

    def add_worker(self, scheduler: Scheduler, worker: str) -> None:
        task = self.tasks.spawn(self._pull_state(worker), name=f"omax: state of {worker}")
        self._joining = {**self._joining, worker: task}

        def joined(_: asyncio.Task) -> None:
            if self._joining.get(worker) is task:
                self._joining = {w: t for w, t in self._joining.items() if w != worker}

        task.add_done_callback(joined)

    async def _settle(self, timeout: float = 10.0) -> None:
        """Wait (bounded) for workers Dask has registered but whose omax state has not
        arrived yet: a decision taken meanwhile would not see them (a pull or a load
        just after a worker starts would find no worker)."""
        pending = list(self._joining.values())
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    def remove_worker(self, scheduler: Scheduler, worker: str, **kwargs: Any) -> None:
        gone = self.registry.remove_worker(worker)
        for m in gone.models:
            self.lifecycle.forget(m.key)
        if gone.models:
            logger.warning(
                "worker %s left; re-placing %d loaded model(s)", worker, len(gone.models)
            )
            self.lifecycle.replace(gone.models)
        if gone.replicas:
            self.replicator.lost(gone.replicas)

    async def _pull_state(self, worker: str) -> None:
        assert self.scheduler is not None
        for attempt in range(5):
            if worker not in self.scheduler.workers:
                return
            try:
                state = await self.scheduler.rpc(worker).omax_state()
                self.omax_report(worker=worker, **state)
                return
            except Exception as e:  # the worker may lack the plugin, or be starting
                logger.debug("omax_state from %s failed (%s), attempt %d", worker, e, attempt)
                await asyncio.sleep(0.2 * (attempt + 1))
        logger.warning("worker %s reports no omax state: started without the preload?", worker)

    # ---- RPC handlers: workers report -----------------------------------------

    def omax_report(
        self,
        worker: str,
        host: str = "",
        slots: Any = (),
        replicas: Any = None,
        disk_budget: int = 0,
    ) -> None:
        """A worker's slots and replicas, replacing what was known."""
        if self.scheduler is not None and worker not in self.scheduler.workers:
            return
        self.registry.report(worker, time.time(), host, slots, replicas, disk_budget)

    def omax_progress(self, worker: str, digest: str, done: int, total: int) -> None:
        self.registry.set_progress(worker, digest, done, total)

    def omax_bad_source(
        self, worker: str, digest: str, source: str, blob: str, reason: str = ""
    ) -> None:
        self.replicator.bad_source(worker, digest, source, blob, reason)

    # ---- RPC handlers: queries ------------------------------------------------

    def omax_info(self) -> dict[str, Any]:
        import omax

        return {"store_url": self.cfg.store_url, "version": omax.__version__}

    def omax_ps(self) -> list[dict[str, Any]]:
        return self.registry.ps()

    def omax_cluster(self) -> dict[str, Any]:
        return {
            "workers": self.registry.workers_view(),
            "wanted": dict(self.replicator.wanted),
            "bad_sources": list(self.replicator.damage),
            "failed": list(self.lifecycle.failed),
        }

    # ---- RPC handlers: the catalog (this plugin is its single writer) ----------

    async def omax_catalog_set(self, name: str, digest: str, size: int) -> dict[str, Any]:
        from omax.sharding.catalog import Catalog

        try:
            await asyncio.to_thread(Catalog(self.cfg.store_url).set, name, digest, size)
            return {"name": normalize_name(name), "digest": digest}
        except OmaxError as e:
            return to_wire(e)

    async def omax_catalog_delete(self, name: str) -> dict[str, Any]:
        from omax.sharding.catalog import Catalog

        try:
            catalog = Catalog(self.cfg.store_url)
            entry = await asyncio.to_thread(catalog.delete, name)
            named = {e.digest for e in await asyncio.to_thread(catalog.list)}
        except OmaxError as e:
            return to_wire(e)
        if entry.digest not in named and entry.digest in self.replicator.wanted:
            # no name left: its replicas are a cache now, evictable and not restored
            logger.info("%s no longer wanted: %s deleted", entry.digest[:19], entry.name)
            await self.replicator.unwant(entry.digest)
        return {"entry": asdict(entry)}

    # ---- RPC handlers: models -------------------------------------------------

    async def omax_ensure(
        self, name: str, digest: str, num_ctx: int = 4096, keep_alive: float | None = None
    ) -> dict[str, Any]:
        """``{"actors": [{"worker", "key"}...]}`` serving ``digest``, loading one if
        none is ready; or ``omax.errors.to_wire``'s error."""
        return await self.lifecycle.ensure(name, digest, num_ctx, keep_alive)

    def omax_touch(self, key: str, delta: int = 0, keep_alive: float | None = None) -> bool:
        return self.lifecycle.touch(key, delta, keep_alive)

    async def omax_unload(self, digest: str = "", key: str = "") -> int:
        return await self.lifecycle.unload(digest, key)

    async def omax_actor_failed(self, key: str, reason: str = "") -> bool:
        return await self.lifecycle.actor_failed(key, reason)

    async def omax_replicate_model(self, digest: str, target: int = 0) -> dict[str, Any]:
        """Bring ``digest`` to ``target`` complete replicas and keep it there.

        Answers ``{"digest", "target", "workers": [holders], "complete": bool}``, with
        ``to_wire``'s error beside when incomplete. Progress flows into ``omax_cluster``.
        """
        await self._settle()
        return await self.replicator.replicate_model(digest, target)


def plugin_of(scheduler: Scheduler) -> OmaxSchedulerPlugin:
    return scheduler.plugins[PLUGIN_NAME]  # type: ignore[return-value]


def dask_setup(scheduler: Scheduler) -> None:
    """Preload entry point: ``dask scheduler --preload omax.plugins.scheduler``."""
    from omax.logs import setup_plugin_logging

    setup_plugin_logging()
    scheduler.add_plugin(OmaxSchedulerPlugin(), name=PLUGIN_NAME)
