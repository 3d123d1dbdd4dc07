"""The omax scheduler plugin: the registry, placement and model actor lifecycle.

Load it with ``dask scheduler --preload omax.plugins.scheduler``. It keeps

- every worker's inference slots and replicas (pulled with ``omax_state`` when a
  worker joins, pushed by the worker with ``omax_report`` when they change),
- replication progress per (model, worker),
- every loaded model: its ModelActor's key, worker, slot, memory, last use and
  requests in flight; the actor lives as long as the plugin holds its future,
- the wanted count of complete replicas per model, and when each replica was last
  used (fetched, or its model used on that worker).

Front doors and the CLI call the ``omax_*`` RPC handlers. ``omax_ensure`` returns a
ready actor for a model, loading it when none is: placement is the pure
``placement.place``; the plumbing here only executes its decision. Hooks stay O(1)
in the number of tasks. Idle models unload after their keep_alive.

A model whose engine died (a batching step raised: ``ModelActor.stats`` names the
cause) is reported by the front door that found it, with ``omax_actor_failed``: the
plugin logs one ERROR line naming the model, the worker and the cause, keeps the
report (``omax_cluster``'s ``failed``, the last 100) and unloads the actor, freeing its
slot; ``omax_ps`` no longer lists it and the next ``omax_ensure`` loads a fresh one.

Every 2 s the replication loop brings wanted models to their count
(``replication_plan.plan``) and brings workers over their disk budget
(``omax.worker.disk-budget``) back under it (``replication_plan.plan_evictions``):
it drops replicas that are neither loaded nor needed for a count, least recently
used first, through the worker's ``omax_drop_replica``. A dropped replica comes back
the usual way when a load or a pull needs it.

Wanted counts are kept next to the catalog, in ``<store>/replication/wanted.json``
(this plugin is its only writer), so a restarted scheduler keeps pulled models at
their count. Deleting a model's last catalog name un-wants it.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import time
import uuid
from dataclasses import replace
from typing import Any

from distributed import Client, SchedulerPlugin
from distributed.scheduler import Scheduler

from omax.config import settings
from omax.errors import OmaxError, PlacementRefused
from omax.plugins import placement, replication_plan
from omax.plugins.state import Loaded, Replica, Slot, WorkerInfo
from omax.sharding.catalog import normalize_name

logger = logging.getLogger(__name__)

PREFIX_ROWS = {"auto": None, "on": 4, "off": 0}  # omax.engine.prefix-cache -> Engine

PLUGIN_NAME = "omax"
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2}


class OmaxSchedulerPlugin(SchedulerPlugin):
    name = PLUGIN_NAME
    idempotent = True

    def __init__(self) -> None:
        cfg = settings()
        self.cfg = cfg
        self.scheduler: Scheduler | None = None
        self.workers: dict[str, WorkerInfo] = {}
        self.loaded: dict[str, Loaded] = {}  # actor key -> Loaded
        self.futures: dict[str, Any] = {}  # actor key -> Future keeping the actor alive
        self.progress: dict[tuple[str, str], tuple[int, int]] = {}  # (digest, worker)
        self.loading: dict[str, asyncio.Future] = {}  # digest -> load in progress
        self._client: Client | None = None
        self._reaper: asyncio.Task | None = None
        # replication: model -> wanted count of complete replicas, fetches running,
        # (model, worker) replicas that served bad bytes, and the damage reports
        self.wanted: dict[str, int] = {}
        self.replicating: dict[tuple[str, str], asyncio.Task] = {}
        self.retry_after: dict[tuple[str, str], float] = {}
        self.suspect: frozenset[tuple[str, str]] = frozenset()
        self.damage: tuple[dict[str, Any], ...] = ()
        self.failed: tuple[dict[str, Any], ...] = ()  # dead engines reported, the last 100
        self._maintainer: asyncio.Task | None = None
        # eviction: (model, worker) -> last use of that replica, loads choosing a
        # worker (their replica must stay), and drops running
        self.used: dict[tuple[str, str], float] = {}
        self.placing: frozenset[tuple[str, str]] = frozenset()
        self.dropping: dict[tuple[str, str], asyncio.Task] = {}
        self._wanted_saved: dict[str, int] = {}  # as in the origin store
        self._wanted_lock = asyncio.Lock()
        self._joining: dict[str, asyncio.Task] = {}  # worker -> its first state pull

    async def start(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        for name in (
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
        ):
            scheduler.handlers[name] = getattr(self, name)
        self._reaper = asyncio.create_task(self._reap_forever())
        from omax.plugins import dashboard

        dashboard.register(scheduler, self)
        self._maintainer = asyncio.create_task(self._replicate_forever())
        asyncio.ensure_future(self._load_wanted())

    async def before_close(self) -> None:
        if self._reaper:
            self._reaper.cancel()
        if self._maintainer:
            self._maintainer.cancel()
        self.futures.clear()
        if self._client is not None:
            await self._client.close()
            self._client = None

    # ---- worker membership ------------------------------------------------

    def add_worker(self, scheduler: Scheduler, worker: str) -> None:
        task = asyncio.ensure_future(self._pull_state(worker))
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
        lost = self._lost_replicas(worker)
        self.workers = {a: w for a, w in self.workers.items() if a != worker}
        lost_models = [m for m in self.loaded.values() if m.worker == worker and m.ready]
        gone = [k for k, m in self.loaded.items() if m.worker == worker]
        self.loaded = {k: m for k, m in self.loaded.items() if m.worker != worker}
        for key in gone:
            self.futures.pop(key, None)
        self.progress = {k: v for k, v in self.progress.items() if k[1] != worker}
        self.used = {k: t for k, t in self.used.items() if k[1] != worker}
        if gone:
            logger.warning("worker %s left; re-placing %d loaded model(s)", worker, len(gone))
            now = time.time()
            for m in {m.digest: m for m in lost_models if m.expires_at > now}.values():
                asyncio.ensure_future(self.omax_ensure(m.name, m.digest, m.num_ctx, m.keep_alive))
        if lost:
            self.wanted = {**lost, **self.wanted}
            asyncio.ensure_future(self._maintain())

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
        info = WorkerInfo(
            address=worker,
            host=host,
            slots=tuple(Slot.from_dict(s) for s in slots),
            replicas={d: Replica.from_dict(r) for d, r in (replicas or {}).items()},
            disk_budget=int(disk_budget),
        )
        old = self.workers.get(worker)
        self.workers = {**self.workers, worker: info}
        now = time.time()
        for digest, r in info.replicas.items():
            if r.complete:
                self.progress.pop((digest, worker), None)
                if old is None or not _complete(old, digest):
                    self.used.setdefault((digest, worker), now)  # arrived: a use
        for digest in old.replicas if old is not None else ():
            if digest not in info.replicas:
                self.used.pop((digest, worker), None)

    def omax_progress(self, worker: str, digest: str, done: int, total: int) -> None:
        self.progress[(digest, worker)] = (int(done), int(total))

    # ---- queries ------------------------------------------------------------

    def omax_info(self) -> dict[str, Any]:
        import omax

        return {"store_url": self.cfg.store_url, "version": omax.__version__}

    def omax_ps(self) -> list[dict[str, Any]]:
        return [m.to_dict() for m in self.loaded.values() if m.ready]

    def omax_cluster(self) -> dict[str, Any]:
        workers = []
        for w in self.workers.values():
            d = w.to_dict()
            d["loaded"] = [m.to_dict() for m in self.loaded.values() if m.worker == w.address]
            d["replicating"] = [
                {"digest": dg, "completed": done, "total": total}
                for (dg, wk), (done, total) in self.progress.items()
                if wk == w.address
            ]
            workers.append(d)
        return {
            "workers": workers,
            "wanted": dict(self.wanted),
            "bad_sources": list(self.damage),
            "failed": list(self.failed),
        }

    # ---- the catalog: this plugin is its single writer in a cluster -------------

    async def omax_catalog_set(self, name: str, digest: str, size: int) -> dict[str, Any]:
        from omax.sharding.catalog import Catalog

        try:
            await asyncio.to_thread(Catalog(self.cfg.store_url).set, name, digest, size)
            return {"name": normalize_name(name), "digest": digest}
        except OmaxError as e:
            return {"error": str(e), "status": e.status}

    async def omax_catalog_delete(self, name: str) -> dict[str, Any]:
        from dataclasses import asdict

        from omax.sharding.catalog import Catalog

        try:
            catalog = Catalog(self.cfg.store_url)
            entry = await asyncio.to_thread(catalog.delete, name)
            named = {e.digest for e in await asyncio.to_thread(catalog.list)}
        except OmaxError as e:
            return {"error": str(e), "status": e.status}
        if entry.digest not in named and entry.digest in self.wanted:
            # no name left: its replicas are a cache now, evictable and not restored
            self.wanted = {d: n for d, n in self.wanted.items() if d != entry.digest}
            logger.info("%s no longer wanted: %s deleted", entry.digest[:19], entry.name)
            await self._save_wanted()
        return {"entry": asdict(entry)}

    async def _load_wanted(self) -> None:
        """Wanted counts a previous scheduler saved; what is wanted since start wins."""
        async with self._wanted_lock:  # no save before this load
            try:
                saved = await asyncio.to_thread(read_wanted, self.cfg.store_url)
            except Exception as e:
                logger.warning("could not read the wanted replica counts: %s", e)
                return
            self._wanted_saved = saved
            self.wanted = {**saved, **self.wanted}
        if saved:
            logger.info("%d model(s) wanted at their replica count since before", len(saved))

    async def _save_wanted(self) -> None:
        """Write the wanted counts next to the catalog when they changed."""
        async with self._wanted_lock:
            wanted = dict(self.wanted)
            if wanted == self._wanted_saved:
                return
            try:
                await asyncio.to_thread(write_wanted, self.cfg.store_url, wanted)
                self._wanted_saved = wanted
            except Exception as e:
                logger.warning("could not save the wanted replica counts: %s", e)

    # ---- loading and unloading ------------------------------------------------

    async def omax_ensure(
        self,
        name: str,
        digest: str,
        num_ctx: int = 4096,
        keep_alive: float | None = None,
    ) -> dict[str, Any]:
        """Return the ready actors serving ``digest``, loading one when there is none.

        Answers ``{"actors": [{"worker", "key"}...]}`` or ``{"error", "status"}``.
        """
        try:
            name = normalize_name(name)
            ready = [m for m in self.loaded.values() if m.digest == digest and m.ready]
            if not ready:
                await self._settle()
                await asyncio.shield(self._start_load(name, digest, num_ctx, keep_alive))
                ready = [m for m in self.loaded.values() if m.digest == digest and m.ready]
            elif len(ready) < self.cfg.loaded_replicas and digest not in self.loading:
                # more copies wanted: load one more in the background, serve from these
                self._start_load(name, digest, num_ctx, keep_alive, quiet=True)
            now = time.time()
            for m in ready:
                if keep_alive is not None:
                    self.loaded[m.key] = m.touched(now, keep_alive)
            return {"actors": [{"worker": m.worker, "key": m.key} for m in ready]}
        except OmaxError as e:
            return {"error": str(e), "status": e.status}
        except Exception as e:
            logger.exception("loading %s failed", name)
            return {"error": f"failed to load model '{name}': {e}", "status": 500}

    def _start_load(
        self, name: str, digest: str, num_ctx: int, keep_alive: float | None, quiet: bool = False
    ) -> asyncio.Future:
        """The one load in progress for ``digest``, started if there is none."""
        pending = self.loading.get(digest)
        if pending is None:
            pending = asyncio.ensure_future(self._load(name, digest, num_ctx, keep_alive))
            self.loading[digest] = pending

            def done(f: asyncio.Future) -> None:
                self.loading.pop(digest, None)
                if quiet and not f.cancelled() and f.exception() is not None:
                    logger.info("no extra copy of %s: %s", name, f.exception())

            pending.add_done_callback(done)
        return pending

    async def _load(self, name: str, digest: str, num_ctx: int, keep_alive: float | None) -> None:
        from omax.sharding.blobs import BlobStore
        from omax.sharding.manifest import Manifest

        manifest = Manifest.from_json(
            await asyncio.to_thread(BlobStore(self.cfg.store_url).get, digest)
        )
        need = placement.Need(
            digest=digest,
            name=name,
            memory=model_memory(manifest, num_ctx, self.cfg.engine_dtype),
            max_loaded_per_slot=self.cfg.max_loaded_per_slot,
        )
        decision = placement.place(self.workers.values(), list(self.loaded.values()), need)
        if isinstance(decision, placement.Refuse):
            raise PlacementRefused(decision.reason)
        spot = (digest, decision.worker)
        self.placing = self.placing | {spot}  # eviction leaves this replica alone
        try:
            await self._place(name, digest, num_ctx, keep_alive, decision, need.memory)
        finally:
            self.placing = self.placing - {spot}

    async def _place(
        self,
        name: str,
        digest: str,
        num_ctx: int,
        keep_alive: float | None,
        decision: placement.Place,
        memory: int,
    ) -> None:
        for key in decision.evict:
            await self._unload(key)
        assert self.scheduler is not None
        drop = self.dropping.get((digest, decision.worker))
        if drop is not None:  # evicted just before: let it finish, then fetch again
            await asyncio.gather(asyncio.shield(drop), return_exceptions=True)
        peers = replication_plan.sources_for(
            self.workers.values(), digest, decision.worker, self.suspect
        )
        await self.scheduler.rpc(decision.worker).omax_replicate(
            digest=digest, origin=self.cfg.store_url, peers=list(peers)
        )
        self.used[(digest, decision.worker)] = time.time()
        client = await self._get_client()
        ModelActor, local_source = await asyncio.to_thread(_actor_parts)

        key = f"omax-model-{uuid.uuid4().hex[:12]}"
        entry = Loaded(
            key=key,
            name=name,
            digest=digest,
            worker=decision.worker,
            slot=decision.slot,
            memory=memory,
            num_ctx=num_ctx,
            last_used=time.time(),
            keep_alive=self.cfg.keep_alive if keep_alive is None else keep_alive,
        )
        self.loaded = {**self.loaded, key: entry}
        try:
            future = client.submit(
                ModelActor,
                digest,
                load_source=functools.partial(local_source, digest),
                device=decision.slot,
                dtype=self.cfg.engine_dtype,
                engine_options={
                    "quant": self.cfg.engine_quant,
                    "prefix_rows": PREFIX_ROWS[self.cfg.prefix_cache],
                },
                actor=True,
                workers=[decision.worker],
                allow_other_workers=False,
                pure=False,
                key=key,
            )
            self.futures[key] = future
            actor = await future
            await actor.load()
        except BaseException:
            self.loaded = {k: m for k, m in self.loaded.items() if k != key}
            self.futures.pop(key, None)
            raise
        if key in self.loaded:
            self.loaded[key] = replace(self.loaded[key], ready=True, last_used=time.time())
            logger.info("loaded %s on %s (%s)", name, decision.worker, decision.slot)

    def omax_touch(self, key: str, delta: int = 0, keep_alive: float | None = None) -> bool:
        """Note a request starting (delta=1) or ending (delta=-1) on an actor."""
        m = self.loaded.get(key)
        if m is None:
            return False
        self.loaded[key] = m.touched(time.time(), keep_alive, delta)
        return True

    async def omax_unload(self, digest: str = "", key: str = "") -> int:
        keys = [k for k, m in self.loaded.items() if (key and k == key) or m.digest == digest]
        for k in keys:
            await self._unload(k)
        return len(keys)

    async def omax_actor_failed(self, key: str, reason: str = "") -> bool:
        """A front door found actor ``key`` dead (``reason``: its engine's cause, or
        why it was unreachable): log it, keep the report and unload the actor. False
        when ``key`` is not loaded (unloaded already, or reported by another first)."""
        m = self.loaded.get(key)
        if m is None:
            return False
        logger.error(
            "model %s failed on %s (%s) and is unloaded: %s", m.name, m.worker, m.slot, reason
        )
        report = {
            "name": m.name,
            "digest": m.digest,
            "worker": m.worker,
            "slot": m.slot,
            "reason": reason,
            "time": time.time(),
        }
        self.failed = (*self.failed[-99:], report)
        await self._unload(key)  # leaves the registry before its first await
        return True

    async def _unload(self, key: str) -> None:
        m = self.loaded.get(key)
        self.loaded = {k: v for k, v in self.loaded.items() if k != key}
        future = self.futures.pop(key, None)
        if m is not None and self.scheduler is not None:
            try:  # stop its batching thread and free its memory before releasing it
                await asyncio.wait_for(
                    self.scheduler.rpc(m.worker).actor_execute(
                        actor=key, function="close", args=(), kwargs={}
                    ),
                    10,
                )
            except Exception as e:
                logger.debug("closing actor %s: %s", key, e)
        if future is not None:
            try:
                await future.cancel()  # releases the actor on its worker
            except Exception:
                pass
        if m is not None:
            self.used[(m.digest, m.worker)] = max(
                m.last_used, self.used.get((m.digest, m.worker), 0)
            )
            logger.info("unloaded %s from %s", m.name, m.worker)

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            for m in placement.expired(self.loaded.values(), time.time()):
                await self._unload(m.key)

    # ---- replication ----------------------------------------------------------

    async def omax_replicate_model(self, digest: str, target: int = 0) -> dict[str, Any]:
        """Bring ``digest`` to ``target`` complete replicas (``omax.replication.target``
        when 0) and keep it there; return when done.

        Answers ``{"digest", "target", "workers": [holders], "complete": bool}`` or
        ``{"error", "status"}``. Progress flows meanwhile into ``omax_cluster``.
        """
        await self._settle()
        n = max(target or self.cfg.replication_target, self.wanted.get(digest, 0))
        self.wanted = {**self.wanted, digest: n}
        await self._save_wanted()
        errors: list[str] = []
        for _ in range(4):  # a failed fetch is planned again elsewhere, a few times
            self.retry_after = {k: t for k, t in self.retry_after.items() if k[0] != digest}
            self._start_replication()
            mine = [t for (d, _), t in self.replicating.items() if d == digest]
            if not mine:
                break
            results = await asyncio.gather(*map(asyncio.shield, mine), return_exceptions=True)
            errors = [str(r) for r in results if isinstance(r, BaseException)]
        have = replication_plan.holders(self.workers.values(), digest)
        out: dict[str, Any] = {
            "digest": digest,
            "target": n,
            "workers": have,
            "complete": len(have) >= min(n, len(self.workers)) and bool(have),
        }
        if not out["complete"]:
            return {**out, "error": "; ".join(errors) or "no worker could fetch it", "status": 500}
        return out

    def omax_bad_source(
        self, worker: str, digest: str, source: str, blob: str, reason: str = ""
    ) -> None:
        """``worker`` got bytes of ``blob`` (model ``digest``) from ``source`` that did
        not verify. The source stops serving that model until it re-verified."""
        logger.warning(
            "damaged blob %s of %s from %s (seen by %s)", blob[:19], digest[:19], source, worker
        )
        entry = {"digest": digest, "source": source, "blob": blob, "worker": worker}
        self.damage = (*self.damage[-99:], {**entry, "reason": reason, "time": time.time()})
        if source in self.workers:
            self.suspect = self.suspect | {(digest, source)}
            asyncio.ensure_future(self._reverify(digest, source))

    async def _reverify(self, digest: str, source: str) -> None:
        assert self.scheduler is not None
        try:
            bad = await self.scheduler.rpc(source).omax_verify_replica(digest=digest)
        except Exception as e:
            logger.warning("could not verify %s on %s: %s", digest[:19], source, e)
            return
        # the bad blobs are gone from the source; what it still holds verified
        logger.info("%s dropped %d bad blob(s) of %s", source, len(bad), digest[:19])
        self.suspect = self.suspect - {(digest, source)}
        await self._maintain()

    def _lost_replicas(self, worker: str) -> dict[str, int]:
        """Models whose complete replica leaves with ``worker``, at their target."""
        info = self.workers.get(worker)
        if info is None:
            return {}
        target = self.cfg.replication_target
        return {d: target for d, r in info.replicas.items() if r.complete}

    def _start_replication(self) -> None:
        """Plan against the registry and start every job not already running."""
        now = time.time()
        self.retry_after = {k: t for k, t in self.retry_after.items() if t > now}
        busy = set(self.replicating) | set(self.retry_after)
        jobs = replication_plan.plan(self.workers.values(), self.wanted, busy, self.suspect)
        for job in jobs:
            self._start_job(job)

    def _start_job(self, job: replication_plan.Job) -> None:
        key = (job.digest, job.worker)
        task = asyncio.ensure_future(self._run_job(job))
        self.replicating = {**self.replicating, key: task}
        task.add_done_callback(functools.partial(self._job_done, key))

    def _start_evictions(self) -> None:
        """Plan drops and copies for workers over their disk budget and start them.

        Waits for the previous round's drops, whose bytes the registry still counts.
        """
        budgets = replication_plan.budgets(self.workers.values())
        if not budgets or self.dropping:
            return
        loaded = {(m.digest, m.worker) for m in self.loaded.values()}
        last_used = {
            **self.used,
            **{(m.digest, m.worker): m.last_used for m in self.loaded.values()},
        }
        busy = set(self.replicating) | self.placing
        drops, jobs = replication_plan.plan_evictions(
            self.workers.values(), budgets, self.wanted, loaded, last_used, busy
        )
        for drop in drops:
            key = (drop.digest, drop.worker)
            task = asyncio.ensure_future(self._drop(drop, budgets[drop.worker]))
            self.dropping = {**self.dropping, key: task}
            task.add_done_callback(functools.partial(self._drop_done, key))
        for job in jobs:
            if (job.digest, job.worker) not in self.replicating:
                logger.info(
                    "moving %s off %s (over its disk budget) to %s",
                    job.digest[:19],
                    job.sources[0],
                    job.worker,
                )
                self._start_job(job)

    async def _drop(self, drop: replication_plan.Drop, budget: int) -> int:
        assert self.scheduler is not None
        info = self.workers.get(drop.worker)
        held = replication_plan.held_bytes(info) if info is not None else 0
        logger.info(
            "evicting %s from %s: it holds %s, over its disk budget of %s",
            drop.digest[:19],
            drop.worker,
            placement.fmt_bytes(held),
            placement.fmt_bytes(budget),
        )
        try:
            reply = self.scheduler.rpc(drop.worker).omax_drop_replica(digest=drop.digest)
            freed = int(await asyncio.wait_for(reply, 120))
        except Exception as e:  # planned again next round if still over budget
            logger.warning("evicting %s from %s failed: %s", drop.digest[:19], drop.worker, e)
            return 0
        logger.info(
            "evicted %s from %s: %s freed",
            drop.digest[:19],
            drop.worker,
            placement.fmt_bytes(freed),
        )
        return freed

    def _drop_done(self, key: tuple[str, str], task: asyncio.Task) -> None:
        self.dropping = {k: t for k, t in self.dropping.items() if k != key}

    def _job_done(self, key: tuple[str, str], task: asyncio.Task) -> None:
        self.replicating = {k: t for k, t in self.replicating.items() if k != key}
        if task.cancelled() or task.exception() is not None:
            self.retry_after = {**self.retry_after, key: time.time() + 10}

    async def _run_job(self, job: replication_plan.Job) -> dict[str, Any]:
        assert self.scheduler is not None
        logger.info("replicating %s to %s from %s", job.digest[:19], job.worker, job.sources)
        try:
            result = await self.scheduler.rpc(job.worker).omax_replicate(
                digest=job.digest, origin=self.cfg.store_url, peers=list(job.sources)
            )
        except Exception as e:
            logger.warning("replicating %s to %s failed: %s", job.digest[:19], job.worker, e)
            raise
        # Record the outcome now: the worker's own report may arrive after the next
        # planning round, which would otherwise plan this copy a second time.
        info = self.workers.get(job.worker)
        if info is not None and result.get("complete"):
            replicas = {**info.replicas, job.digest: Replica.from_dict(result)}
            self.workers = {**self.workers, job.worker: replace(info, replicas=replicas)}
            self.used[(job.digest, job.worker)] = time.time()
        return result

    async def _maintain(self) -> None:
        try:
            self._start_replication()
            self._start_evictions()
        except Exception:
            logger.exception("replication planning failed")
        await self._save_wanted()  # e.g. counts a leaving worker added

    async def _replicate_forever(self) -> None:
        while True:
            await asyncio.sleep(2)
            await self._maintain()

    async def _get_client(self) -> Client:
        if self._client is None:
            assert self.scheduler is not None
            self._client = await Client(
                self.scheduler.address, asynchronous=True, name="omax-scheduler-plugin"
            )
        return self._client


def _actor_parts() -> tuple[Any, Any]:
    """The actor class and its weights hook, imported in a thread: the hook's module
    imports zarr, which would hold this scheduler's event loop up the first time."""
    from omax.engine.actor import ModelActor
    from omax.plugins.source import local_source

    return ModelActor, local_source


def model_memory(manifest: Any, num_ctx: int, dtype: str) -> int:
    """Bytes a model needs on a slot: weights as loaded plus the KV cache for num_ctx."""
    per = _DTYPE_BYTES.get(dtype, 4)
    weights = 0
    for t in manifest.tensors:
        n = math.prod(t.shape) if t.shape else 1
        weights += n * (per if t.ggml_type or t.dtype in ("float32", "float16", "bfloat16") else 8)
    return placement.estimate_memory(manifest.config, weights, num_ctx, per)


def _complete(w: WorkerInfo, digest: str) -> bool:
    r = w.replicas.get(digest)
    return r is not None and r.complete


WANTED_PATH = "replication/wanted.json"


def read_wanted(url: str) -> dict[str, int]:
    """The wanted replica counts saved in the origin store at ``url``; {} if none."""
    from omax.sharding.blobs import open_fs

    fs, root = open_fs(url)
    try:
        doc = json.loads(fs.cat_file(f"{root}/{WANTED_PATH}"))
    except FileNotFoundError:
        return {}
    return {str(d): int(n) for d, n in doc["wanted"].items()}


def write_wanted(url: str, wanted: dict[str, int]) -> None:
    """Replace the saved counts in one step: readers see the old or the new file."""
    from omax.sharding.blobs import open_fs
    from omax.sharding.manifest import canonical_json

    fs, root = open_fs(url)
    path = f"{root}/{WANTED_PATH}"
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    fs.makedirs(f"{root}/replication", exist_ok=True)
    fs.pipe_file(tmp, canonical_json({"wanted": wanted}))
    fs.mv(tmp, path)  # a rename locally; on object stores the destination appears whole


def plugin_of(scheduler: Scheduler) -> OmaxSchedulerPlugin:
    return scheduler.plugins[PLUGIN_NAME]  # type: ignore[return-value]


def dask_setup(scheduler: Scheduler) -> None:
    """Preload entry point: ``dask scheduler --preload omax.plugins.scheduler``."""
    from omax.logs import setup_plugin_logging

    setup_plugin_logging()
    scheduler.add_plugin(OmaxSchedulerPlugin(), name=PLUGIN_NAME)
