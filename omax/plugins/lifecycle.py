"""Model lifecycle: place, load, unload and reap ModelActors.

``ensure`` returns the ready actors of a model, loading one when there is none (or
one more in the background while fewer than ``omax.engine.loaded-replicas`` run).
A load reads the manifest, estimates the memory (``omax.plugins.memory``), asks the
pure ``placement.place`` where it goes, unloads what the decision evicts, has the
replica fetched there (``Replicator.fetch``), then starts a ModelActor pinned to that
worker and waits for its weights (``omax.plugins.actors``). Only one load per model
runs at a time.

A load whose actor read a blob that did not verify (DigestMismatch) is not answered
with that error: the worker has quarantined the replica's bad blobs and made it
partial, so the load is placed again, the replica fetched again (which replaces the
quarantined blobs from a peer or the origin) and the actor started anew. A worker
whose replica fails twice is left out of that load's placement; after
``LOAD_ATTEMPTS`` the caller gets a StoreError (500), never the DigestMismatch's 400:
damaged storage is not a bad request.

The actor lives as long as this module holds its future (``futures``): Dask does not
hold resources for an actor's lifetime, so the slot's memory is accounted in the
registry's ``Loaded`` entry. Every way out goes through ``unload``: the keep-alive
reaper (idle models whose keep_alive ran out), an explicit unload, eviction by a
later placement, and a front door's report that the actor's engine died
(``actor_failed``: logged once at ERROR, kept in ``failed``, the last 100).

Requests in flight are counted from the front doors' ``touch`` calls (+1/-1); a
model with requests in flight is never reaped nor evicted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from distributed import Client

from omax.config import Settings
from omax.errors import DigestMismatch, OmaxError, PlacementRefused, StoreError, to_wire
from omax.plugins import placement
from omax.plugins.actors import (
    actor_parts,
    actor_stats,
    close_actor,
    release,
    submit_actor,
    wait_loaded,
)
from omax.plugins.memory import (
    granted_context,
    load_memory,
    reserved_by_slot,
    with_live_capacity,
)
from omax.plugins.registry import Registry
from omax.plugins.replicator import Replicator
from omax.plugins.state import Loaded
from omax.plugins.tasks import Tasks
from omax.sharding.catalog import normalize_name

logger = logging.getLogger(__name__)

LOAD_ATTEMPTS = 3  # placements tried when loads find damaged replicas
REAP_EVERY_S = 0.5
DRAIN_POLL_S = 0.25


class Lifecycle:
    def __init__(
        self,
        cfg: Settings,
        registry: Registry,
        tasks: Tasks,
        replicator: Replicator,
        rpc: Callable[[str], Any],
        settle: Callable[[], Awaitable[None]],
    ) -> None:
        self.cfg = cfg
        self.registry = registry
        self.tasks = tasks
        self.replicator = replicator
        self.rpc = rpc  # worker address -> its RPC proxy
        self.settle = settle  # waits for joining workers' state, before a decision
        self.address = ""  # the scheduler's, for the client that starts actors
        self.security: Any = None  # its Security for that client (TLS), None: config
        self.futures: dict[str, Any] = {}  # actor key -> Future keeping the actor alive
        self.loading: dict[str, asyncio.Task] = {}  # digest -> load in progress
        self.failed: tuple[dict[str, Any], ...] = ()  # dead engines reported, the last 100
        self.refused = self.evicted = 0  # placements refused, models evicted for room
        # worker address -> its slots as its last heartbeat reported them (None: none)
        self.live_slots: Callable[[str], list[dict[str, Any]] | None] = lambda address: None
        self._client: Client | None = None

    async def close(self) -> None:
        self.futures.clear()
        if self._client is not None:
            await self._client.close()
            self._client = None

    # ---- ensure and load ----------------------------------------------------------

    async def ensure(
        self, name: str, digest: str, num_ctx: int = 4096, keep_alive: float | None = None
    ) -> dict[str, Any]:
        """The ready actors serving ``digest``, loading one when there is none.

        Answers ``{"actors": [{"worker", "key"}...]}`` or ``to_wire``'s error.
        """
        try:
            name = normalize_name(name)
            ready = self.registry.ready(digest)
            if not ready:
                await self.settle()
                await asyncio.shield(self.start_load(name, digest, num_ctx, keep_alive))
                ready = self.registry.ready(digest)
            elif len(ready) < self.cfg.loaded_replicas and digest not in self.loading:
                # more copies wanted: load one more in the background, serve from these
                self.start_load(name, digest, num_ctx, keep_alive, quiet=True)
            if keep_alive is not None:
                now = time.time()
                for m in ready:
                    self.registry.touch(m.key, now, keep_alive)
            return {"actors": [{"worker": m.worker, "key": m.key} for m in ready]}
        except OmaxError as e:
            return to_wire(e)
        except Exception as e:
            logger.exception("loading %s failed", name)
            return to_wire(OmaxError(f"failed to load model '{name}': {e}"))

    def start_load(
        self, name: str, digest: str, num_ctx: int, keep_alive: float | None, quiet: bool = False
    ) -> asyncio.Task:
        """The one load in progress for ``digest``, started if there is none.

        Its failure is answered to whoever awaits it (``ensure``); the log has it at
        DEBUG, or at INFO for an extra copy nobody awaits (``quiet``).
        """
        pending = self.loading.get(digest)
        if pending is None:
            what = "an extra copy of" if quiet else "loading"
            pending = self.tasks.spawn(
                self._load(name, digest, num_ctx, keep_alive),
                name=f"omax: {what} {name}",
                level=logging.INFO if quiet else logging.DEBUG,
            )
            self.loading = {**self.loading, digest: pending}
            pending.add_done_callback(functools.partial(self._load_done, digest))
        return pending

    def _load_done(self, digest: str, task: asyncio.Task) -> None:
        if self.loading.get(digest) is task:
            self.loading = {d: t for d, t in self.loading.items() if d != digest}

    async def _load(self, name: str, digest: str, num_ctx: int, keep_alive: float | None) -> None:
        from omax.sharding.blobs import BlobStore
        from omax.sharding.manifest import Manifest

        try:
            raw = await asyncio.to_thread(BlobStore(self.cfg.store_url).get, digest)
        except DigestMismatch as err:  # not the client's fault: no 400
            raise StoreError(f"the origin store's manifest of '{name}' is damaged: {err}") from err
        manifest = Manifest.from_json(raw)
        num_ctx = granted_context(manifest.config, num_ctx, self.cfg.context_length)
        need = placement.Need(
            digest=digest,
            name=name,
            memory=load_memory(manifest, num_ctx, self.cfg),
            max_loaded_per_slot=self.cfg.max_loaded_per_slot,
        )
        failures: dict[str, int] = {}  # worker -> loads that found its replica damaged
        for attempt in range(1, LOAD_ATTEMPTS + 1):
            avoid = {w for w, n in failures.items() if n >= 2}
            decision = self._place(need, avoid)
            try:
                await self._load_on(decision, need, num_ctx, keep_alive)
                return
            except DigestMismatch as err:
                if attempt == LOAD_ATTEMPTS:
                    raise StoreError(
                        f"loading '{name}' failed {attempt} times on damaged replicas: {err}"
                    ) from err
                failures[decision.worker] = failures.get(decision.worker, 0) + 1
                self.replicator.damaged_replica(digest, decision.worker, str(err))

    def _place(self, need: placement.Need, avoid: set[str]) -> placement.Place:
        reg = self.registry
        loaded = list(reg.loaded.values())
        workers = []
        for w in reg.workers.values():
            if w.address in avoid:
                continue
            live = self.live_slots(w.address)  # GPUs' memory as last reported
            reserved = reserved_by_slot(loaded, w.address)
            workers.append(
                dataclasses.replace(w, slots=with_live_capacity(w.slots, live, reserved))
            )
        decision = placement.place(workers, loaded, need)
        if isinstance(decision, placement.Refuse):
            self.refused += 1
            raise PlacementRefused(decision.reason)
        return decision

    async def _load_on(
        self,
        decision: placement.Place,
        need: placement.Need,
        num_ctx: int,
        keep_alive: float | None,
    ) -> None:
        """Fetch the replica to the decided worker and start the actor there."""
        reg = self.registry
        digest, name = need.digest, need.name
        spot = (digest, decision.worker)
        reg.placing = reg.placing | {spot}  # eviction leaves this replica alone
        try:
            self.evicted += len(decision.evict)
            for key in decision.evict:
                await self.unload_key(key)
            await self.replicator.fetch(digest, decision.worker)
            reg.note_use(digest, decision.worker, time.time())
            entry = Loaded(
                key=f"omax-model-{uuid.uuid4().hex[:12]}",
                name=name,
                digest=digest,
                worker=decision.worker,
                slot=decision.slot,
                memory=need.memory,
                num_ctx=num_ctx,
                last_used=time.time(),
                keep_alive=self.cfg.keep_alive if keep_alive is None else keep_alive,
            )
            await self._start_actor(entry)
        finally:
            reg.placing = reg.placing - {spot}

    async def _start_actor(self, entry: Loaded) -> None:
        """Start the ModelActor ``entry`` describes and wait until its weights loaded."""
        client = await self._get_client()
        parts = await asyncio.to_thread(actor_parts)
        key = entry.key
        self.registry.add_loaded(entry)
        try:
            future = submit_actor(client, self.cfg, entry, parts)
            self.futures[key] = future
            await wait_loaded(future, entry, self.cfg.start_timeout)
        except BaseException:
            self.registry.drop_loaded(key)
            self.futures.pop(key, None)
            raise
        if self.registry.mark_ready(key, time.time()) is not None:
            logger.info("loaded %s on %s (%s)", entry.name, entry.worker, entry.slot)

    def replace(self, models: tuple[Loaded, ...]) -> None:
        """Load again, elsewhere, the ready models a leaving worker ran and still wanted."""
        now = time.time()
        for m in {m.digest: m for m in models if m.ready and m.expires_at > now}.values():
            self.tasks.spawn(self._replace(m), name=f"omax: re-place {m.name}")

    async def _replace(self, m: Loaded) -> None:
        reply = await self.ensure(m.name, m.digest, m.num_ctx, m.keep_alive)
        if "error" in reply:
            logger.warning("re-placing %s failed: %s", m.name, reply["error"])

    # ---- use and unload -----------------------------------------------------------

    def touch(self, key: str, delta: int = 0, keep_alive: float | None = None) -> bool:
        """Note a request starting (delta=1) or ending (delta=-1) on an actor."""
        return self.registry.touch(key, time.time(), keep_alive, delta)

    def forget(self, key: str) -> None:
        """The actor ``key`` is gone with its worker: release its future."""
        self.futures.pop(key, None)

    async def unload(self, digest: str = "", key: str = "") -> int:
        """Unload actor ``key``, or every actor of ``digest``; return how many."""
        loaded = self.registry.loaded
        keys = [k for k, m in loaded.items() if (key and k == key) or m.digest == digest]
        for k in keys:
            await self.unload_key(k)
        return len(keys)

    async def actor_failed(self, key: str, reason: str = "") -> bool:
        """A front door found actor ``key`` dead (``reason``: its engine's cause, or
        why it was unreachable): log it, keep the report and unload the actor. False
        when ``key`` is not loaded (unloaded already, or reported by another first)."""
        m = self.registry.loaded.get(key)
        if m is None:
            return False
        stats = await actor_stats(self.rpc, m)
        if stats is not None and stats.get("loaded") and not stats.get("dead"):
            # One failed call (a blip on the wire) must not unload what serves others.
            logger.warning(
                "model %s on %s was reported failed (%s) but answers and serves: kept",
                m.name,
                m.worker,
                reason,
            )
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
        await self.unload_key(key, drain=False)  # leaves the registry before its first await
        return True

    async def _drain(self, m: Loaded) -> None:
        """Wait up to ``omax.placement.drain-grace`` for ``m``'s requests to finish."""
        deadline = time.monotonic() + self.cfg.drain_grace
        while time.monotonic() < deadline:
            stats = await actor_stats(self.rpc, m)
            if stats is None or not stats.get("live"):
                return
            await asyncio.sleep(DRAIN_POLL_S)
        logger.warning(
            "unloading %s from %s with requests still running after %.0f s",
            m.name,
            m.worker,
            self.cfg.drain_grace,
        )

    async def unload_key(self, key: str, drain: bool = True) -> None:
        """The one way an actor ends: out of the registry first (no new requests reach
        it), then, with ``drain``, its running requests finish (a bounded grace), then
        it is closed and released."""
        m = self.registry.drop_loaded(key)
        future = self.futures.pop(key, None)
        if m is not None and drain:
            await self._drain(m)
        if m is not None:  # closed before it is released: its memory is freed first
            await close_actor(self.rpc, m.worker, key)
        if future is not None:
            await release(future)
        if m is not None:
            self.registry.note_use(m.digest, m.worker, m.last_used)
            logger.info("unloaded %s from %s", m.name, m.worker)

    async def reap_forever(self) -> None:
        """Unload idle models whose keep_alive ran out."""
        while True:
            await asyncio.sleep(REAP_EVERY_S)
            await self._settle_orphans()
            for m in placement.expired(self.registry.loaded.values(), time.time()):
                await self.unload_key(m.key)

    async def _settle_orphans(self) -> None:
        """Models that front doors still count requests on, unused for longer than a
        request lease: ask their actors. One that holds no lease serves nothing (the
        front door that counted died; the actor cancelled what it left), so it counts
        as idle since the actor last saw a request, and can idle out on time."""
        now = time.time()
        lease = self.cfg.request_lease
        for m in list(self.registry.loaded.values()):
            if not (m.ready and m.in_flight > 0 and now - m.last_used > lease):
                continue
            stats = await actor_stats(self.rpc, m)
            if stats is None or not stats.get("loaded") or stats.get("leases"):
                continue
            if not stats.get("live"):
                idle = float(stats.get("idle_s", 0.0))
                logger.warning(
                    "%s on %s: %d request(s) counted by front doors that went away;"
                    " idle for %.0f s",
                    m.name,
                    m.worker,
                    m.in_flight,
                    idle,
                )
                self.registry.settle_idle(m.key, now - idle)

    async def _get_client(self) -> Client:
        if self._client is None:
            self._client = await Client(
                self.address,
                asynchronous=True,
                name="omax-scheduler-plugin",
                security=self.security,
            )
        return self._client
