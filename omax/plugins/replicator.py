"""Replication and eviction orchestration: it executes ``replication_plan``'s decisions.

Every fetch of a replica to a worker, whether a load needs it or a plan wants it,
enters through ``Replicator.fetch`` and runs as one job per (model, worker) in
``replicating``: a second caller joins the running job instead of starting another.
A failed job keeps its worker out of the plans for a while (``retry_after``).

A loop (``maintain_forever``) runs ``maintain`` over and over: it brings wanted
models to their count (``replication_plan.plan``) and workers over their disk budget
(``omax.worker.disk-budget``) back under it (``replication_plan.plan_evictions``): it
drops replicas that are neither loaded nor needed for a count, least recently used
first, through the worker's ``omax_drop_replica``. A dropped replica comes back the
usual way when a load or a pull needs it.

A worker that served bytes that did not verify is ``suspect`` for that model until
it re-verified its replica. A replica that failed verification where a load read it
(``damaged_replica``) is logged and kept in ``damage`` with the bad sources; the
load fetches it again through ``fetch``. Wanted counts are saved next to the catalog
(``omax.sharding.wanted``), so a restarted scheduler keeps pulled models at their count.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from typing import Any

from omax.config import Settings
from omax.errors import OmaxError, to_wire
from omax.plugins import replication_plan
from omax.plugins.registry import Registry, Spot
from omax.plugins.tasks import Tasks
from omax.sharding.wanted import WantedFile
from omax.units import fmt_bytes

logger = logging.getLogger(__name__)

RETRY_AFTER_S = 10  # a worker whose fetch failed is left out of the plans this long
DROP_TIMEOUT_S = 120


class Replicator:
    def __init__(
        self, cfg: Settings, registry: Registry, tasks: Tasks, rpc: Callable[[str], Any]
    ) -> None:
        self.cfg = cfg
        self.registry = registry
        self.tasks = tasks
        self.rpc = rpc  # worker address -> its RPC proxy
        self.wanted: dict[str, int] = {}  # model -> wanted count of complete replicas
        self.replicating: dict[Spot, asyncio.Task] = {}
        self.retry_after: dict[Spot, float] = {}
        self.suspect: frozenset[Spot] = frozenset()  # replicas that served bad bytes
        self.damage: tuple[dict[str, Any], ...] = ()  # the damage reports, the last 100
        self.dropping: dict[Spot, asyncio.Task] = {}
        self.wanted_file = WantedFile(cfg.store_url)

    # ---- wanted counts ----------------------------------------------------------

    async def load_wanted(self) -> None:
        """Wanted counts a previous scheduler saved; what is wanted since start wins."""

        def merge(saved: dict[str, int]) -> None:
            self.wanted = {**saved, **self.wanted}

        await self.wanted_file.load(merge)

    async def save_wanted(self) -> None:
        await self.wanted_file.save(lambda: self.wanted)

    async def unwant(self, digest: str) -> None:
        """``digest`` is no longer wanted at a count: its replicas are a cache now."""
        if digest in self.wanted:
            self.wanted = {d: n for d, n in self.wanted.items() if d != digest}
            await self.save_wanted()

    def lost(self, digests: tuple[str, ...]) -> None:
        """Complete replicas left with a worker: want them back at the target count."""
        target = self.cfg.replication_target
        self.wanted = {**{d: target for d in digests}, **self.wanted}
        self.tasks.spawn(self.maintain(), name="omax: replace lost replicas")

    # ---- pulls ------------------------------------------------------------------

    async def replicate_model(self, digest: str, target: int = 0) -> dict[str, Any]:
        """Bring ``digest`` to ``target`` complete replicas (``omax.replication.target``
        when 0) and keep it there; return when done (``omax_replicate_model``)."""
        n = max(target or self.cfg.replication_target, self.wanted.get(digest, 0))
        self.wanted = {**self.wanted, digest: n}
        await self.save_wanted()
        errors: list[str] = []
        for _ in range(4):  # a failed fetch is planned again elsewhere, a few times
            self.retry_after = {k: t for k, t in self.retry_after.items() if k[0] != digest}
            self.start_replication()
            mine = [t for (d, _), t in self.replicating.items() if d == digest]
            if not mine:
                break
            results = await asyncio.gather(*map(asyncio.shield, mine), return_exceptions=True)
            errors = [str(r) for r in results if isinstance(r, BaseException)]
        have = replication_plan.holders(self.registry.workers.values(), digest)
        out: dict[str, Any] = {
            "digest": digest,
            "target": n,
            "workers": have,
            "complete": len(have) >= min(n, len(self.registry.workers)) and bool(have),
        }
        if not out["complete"]:
            reason = "; ".join(errors) or "no worker could fetch it"
            return {**out, **to_wire(OmaxError(reason))}
        return out

    # ---- fetches: the one way a replica is copied to a worker -------------------

    async def fetch(self, digest: str, worker: str) -> dict[str, Any]:
        """Make ``worker`` hold a complete replica of ``digest`` (a load needs it there).

        Waits for a drop of that replica still running, then joins the fetch running
        for it or starts one from the best sources.
        """
        drop = self.dropping.get((digest, worker))
        if drop is not None:  # evicted just before: let it finish, then fetch again
            await asyncio.gather(asyncio.shield(drop), return_exceptions=True)
        job = self.replicating.get((digest, worker))
        if job is None:
            sources = replication_plan.sources_for(
                self.registry.workers.values(), digest, worker, self.suspect
            )
            job = self.start_job(replication_plan.Job(digest, worker, tuple(sources)))
        result: dict[str, Any] = await asyncio.shield(job)
        return result

    def start_replication(self) -> None:
        """Plan against the registry and start every job not already running."""
        now = time.time()
        self.retry_after = {k: t for k, t in self.retry_after.items() if t > now}
        busy = set(self.replicating) | set(self.retry_after)
        workers = self.registry.workers.values()
        for job in replication_plan.plan(workers, self.wanted, busy, self.suspect):
            self.start_job(job)

    def start_job(self, job: replication_plan.Job) -> asyncio.Task:
        key = (job.digest, job.worker)
        name = f"omax: replicate {job.digest[:19]} to {job.worker}"
        task = self.tasks.spawn(self._run_job(job), name=name, level=logging.WARNING)
        self.replicating = {**self.replicating, key: task}
        task.add_done_callback(functools.partial(self._job_done, key))
        return task

    def _job_done(self, key: Spot, task: asyncio.Task) -> None:
        self.replicating = {k: t for k, t in self.replicating.items() if k != key}
        if task.cancelled() or task.exception() is not None:
            self.retry_after = {**self.retry_after, key: time.time() + RETRY_AFTER_S}

    async def _run_job(self, job: replication_plan.Job) -> dict[str, Any]:
        logger.info("replicating %s to %s from %s", job.digest[:19], job.worker, job.sources)
        result: dict[str, Any] = await self.rpc(job.worker).omax_replicate(
            digest=job.digest, origin=self.cfg.store_url, peers=list(job.sources)
        )
        # Record the outcome now: the worker's own report may arrive after the next
        # planning round, which would otherwise plan this copy a second time.
        if result.get("complete"):
            self.registry.record_replica(job.worker, job.digest, result, time.time())
        return result

    # ---- damaged sources ----------------------------------------------------------

    def bad_source(self, worker: str, digest: str, source: str, blob: str, reason: str) -> None:
        """``worker`` got bytes of ``blob`` (model ``digest``) from ``source`` that did
        not verify. The source stops serving that model until it re-verified."""
        logger.warning(
            "damaged blob %s of %s from %s (seen by %s)", blob[:19], digest[:19], source, worker
        )
        entry = {"digest": digest, "source": source, "blob": blob, "worker": worker}
        self.damage = (*self.damage[-99:], {**entry, "reason": reason, "time": time.time()})
        if source in self.registry.workers:
            self.suspect = self.suspect | {(digest, source)}
            self.tasks.spawn(
                self._reverify(digest, source), name=f"omax: verify {digest[:19]} on {source}"
            )

    def damaged_replica(self, digest: str, worker: str, reason: str) -> None:
        """A load on ``worker`` found its replica of ``digest`` damaged; the worker has
        quarantined the bad blobs and made the replica partial. Log and keep it, and
        count the replica partial now, so it is no source for peers until fetched
        again (the worker's own report says the same a moment later)."""
        logger.warning(
            "replica %s on %s failed verification at load; fetching it again: %s",
            digest[:19],
            worker,
            reason,
        )
        entry = {"digest": digest, "source": worker, "blob": "", "worker": worker}
        self.damage = (*self.damage[-99:], {**entry, "reason": reason, "time": time.time()})
        info = self.registry.workers.get(worker)
        held = info.replicas.get(digest) if info is not None else None
        if held is not None:  # partial now; the worker's own report follows
            partial = {**held.to_dict(), "complete": False, "bytes_done": 0}
            self.registry.record_replica(worker, digest, partial, time.time())

    async def _reverify(self, digest: str, source: str) -> None:
        try:
            bad = await self.rpc(source).omax_verify_replica(digest=digest)
        except Exception as e:
            logger.warning("could not verify %s on %s: %s", digest[:19], source, e)
            return
        # the bad blobs are gone from the source; what it still holds verified
        logger.info("%s dropped %d bad blob(s) of %s", source, len(bad), digest[:19])
        self.suspect = self.suspect - {(digest, source)}
        await self.maintain()

    # ---- eviction -----------------------------------------------------------------

    def start_evictions(self) -> None:
        """Plan drops and copies for workers over their disk budget and start them.

        Waits for the previous round's drops, whose bytes the registry still counts.
        """
        reg = self.registry
        budgets = replication_plan.budgets(reg.workers.values())
        if not budgets or self.dropping:
            return
        loaded = {(m.digest, m.worker) for m in reg.loaded.values()}
        busy = set(self.replicating) | reg.placing
        drops, jobs = replication_plan.plan_evictions(
            reg.workers.values(), budgets, self.wanted, loaded, reg.last_used(), busy
        )
        for drop in drops:
            key = (drop.digest, drop.worker)
            name = f"omax: evict {drop.digest[:19]} from {drop.worker}"
            task = self.tasks.spawn(self._drop(drop, budgets[drop.worker]), name=name)
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
                self.start_job(job)

    async def _drop(self, drop: replication_plan.Drop, budget: int) -> int:
        info = self.registry.workers.get(drop.worker)
        held = replication_plan.held_bytes(info) if info is not None else 0
        logger.info(
            "evicting %s from %s: it holds %s, over its disk budget of %s",
            drop.digest[:19],
            drop.worker,
            fmt_bytes(held),
            fmt_bytes(budget),
        )
        try:
            reply = self.rpc(drop.worker).omax_drop_replica(digest=drop.digest)
            freed = int(await asyncio.wait_for(reply, DROP_TIMEOUT_S))
        except Exception as e:  # planned again next round if still over budget
            logger.warning("evicting %s from %s failed: %s", drop.digest[:19], drop.worker, e)
            return 0
        logger.info("evicted %s from %s: %s freed", drop.digest[:19], drop.worker, fmt_bytes(freed))
        return freed

    def _drop_done(self, key: Spot, task: asyncio.Task) -> None:
        self.dropping = {k: t for k, t in self.dropping.items() if k != key}

    # ---- the loop -----------------------------------------------------------------

    async def maintain(self) -> None:
        """One round: start what the plans want, save the counts if they changed."""
        try:
            self.start_replication()
            self.start_evictions()
        except Exception:
            logger.exception("replication planning failed")
        await self.save_wanted()  # e.g. counts a leaving worker added

    async def maintain_forever(self, every: float = 2.0) -> None:
        while True:
            await asyncio.sleep(every)
            await self.maintain()
