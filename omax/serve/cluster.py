"""ClusterRuntime: the real Runtime, over a Dask cluster with the omax plugins.

A request travels: resolve the name in the catalog -> ask the scheduler plugin for
the model's ready actors (``omax_ensure`` loads one when none is) -> pick the least
busy replica -> ``submit`` on the actor -> the actor's Poller brings chunks back in
one call per step -> the caller's async iterator. Closing the iterator before the
last chunk cancels the generation on the actor.

An actor found dead is dropped from this front door's caches and reported to the
scheduler (``omax_actor_failed``), which unloads it; the next request loads a fresh
one. Found dead: a call to it raises ``EngineDead`` (its worker or the actor is gone,
or its engine died: the request is retried elsewhere if it had no token yet), or a
request ends in an error and the actor's ``stats`` say its engine died (that request
keeps its error; what failed the engine may have been in it).

Model-store operations (tags, show, create, copy, delete, blobs) run against the
origin store the scheduler names, in threads so the event loop never blocks.

The scheduler is reached through a ``SchedulerLink`` (omax.serve.upstream), which
reconnects by itself after the scheduler restarts: while it is down, requests fail
at once with ``Unavailable`` (503) and ``health`` says why. Every remote wait has a
deadline (``Deadlines``): short calls ``omax.serve.rpc-timeout``, a model's load and
then a request's first token or embedding ``omax.serve.start-timeout``; past it,
``DeadlineExceeded`` (504). After a reconnect what was cached about actors is
dropped: the restarted scheduler places models afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from distributed import Client

from omax.engine.request import EmbedRequest, EmbedResult, GenerateChunk, GenerateRequest
from omax.errors import (
    DeadlineExceeded,
    EngineDead,
    ModelNotFound,
    ServerBusy,
    Unavailable,
    from_wire,
    is_wire_error,
)
from omax.logs import bind
from omax.serve import catalog_view
from omax.serve.actors import ActorHandle
from omax.serve.catalog_rpc import SchedulerCatalog
from omax.serve.metrics import note_retry
from omax.serve.router import Poller, pick
from omax.serve.runtime import (
    CreateRequest,
    Health,
    LoadedModel,
    ModelInfo,
    Progress,
    ShowInfo,
)
from omax.serve.upstream import Deadlines, SchedulerLink, bounded

logger = logging.getLogger(__name__)

_RETRIES = 2
_CACHE_S = 2.0


class ClusterRuntime:
    def __init__(
        self, link: SchedulerLink, store_url: str, max_queue: int = 512, coalesce: float = 0.0
    ) -> None:
        from omax.sharding.modelstore import ModelStore

        self.link = link
        self.deadlines = link.deadlines
        self.store = ModelStore(store_url)
        self.max_queue = max_queue
        self.coalesce = coalesce  # seconds a started stream's tokens may gather per poll
        self._pollers: dict[str, Poller] = {}
        self._outstanding: dict[str, int] = defaultdict(int)  # actor key -> requests
        self._pending: dict[str, int] = defaultdict(int)  # digest -> requests
        # Short-lived caches keep the scheduler and the catalog off the per-request
        # path: a name's digest, and a model's ready actors. A stale actor is found
        # out by omax_touch (or EngineDead) and dropped.
        self._names: dict[str, tuple[float, tuple[str, Any]]] = {}
        self._resolving: dict[str, asyncio.Future] = {}  # name -> its lookup under way
        self._replicas: dict[str, tuple[float, list[ActorHandle]]] = {}
        link.on_reconnect(self._forget_all)

    @classmethod
    async def connect(
        cls,
        scheduler: str | Client,
        max_queue: int = 512,
        coalesce: float = 0.0,
        deadlines: Deadlines | None = None,
    ) -> ClusterRuntime:
        """Connect to ``scheduler`` (deadlines from ``omax.serve.*`` when not given)."""
        link = await SchedulerLink.connect(scheduler, deadlines or Deadlines.from_settings())
        try:
            info = await link.call("omax_info")
        except BaseException:
            await link.close()
            raise
        runtime = cls(link, info["store_url"], max_queue, coalesce)
        runtime.store.catalog = SchedulerCatalog(
            info["store_url"], link, asyncio.get_running_loop()
        )
        return runtime

    @property
    def client(self) -> Client:
        """The current Dask client (a new one replaces it after a lost scheduler)."""
        return self.link.client

    async def close(self) -> None:
        await self.link.close()

    def _forget_all(self) -> None:
        """The scheduler came back: it places models afresh, so forget its old answers."""
        self._replicas.clear()
        self._pollers.clear()
        self._names.clear()

    # ---- generation -------------------------------------------------------------

    async def _actors(self, name: str, digest: str, num_ctx: int, keep_alive: float | None):
        reply = await self.link.call(
            "omax_ensure",
            timeout=self.deadlines.start,
            name=name,
            digest=digest,
            num_ctx=num_ctx,
            keep_alive=keep_alive,
        )
        if is_wire_error(reply):
            raise from_wire(reply)
        client = self.link.require()
        return [
            ActorHandle(client, a["worker"], a["key"], self.deadlines.rpc) for a in reply["actors"]
        ]

    async def _choose(
        self, name: str, digest: str, num_ctx: int, keep_alive: float | None
    ) -> ActorHandle:
        """A ready actor for the model, the least busy of two; loads one if needed."""
        cached = self._replicas.get(digest)
        if cached is not None and cached[0] > time.monotonic():
            actors = cached[1]
        else:
            actors = await self._actors(name, digest, num_ctx, keep_alive)
            self._replicas[digest] = (time.monotonic() + _CACHE_S, actors)
        if not actors:
            raise EngineDead(f"no replica of model '{name}' is loaded")
        return actors[pick([self._outstanding[a.key] for a in actors])]

    def _forget_actor(self, digest: str, actor: ActorHandle) -> None:
        self._replicas.pop(digest, None)
        self._pollers.pop(actor.key, None)

    async def _failed(self, digest: str, actor: ActorHandle, reason: str) -> None:
        """Stop routing to ``actor`` and have the scheduler unload it."""
        self._forget_actor(digest, actor)
        await self.link.call("omax_actor_failed", key=actor.key, reason=reason)

    async def _check_engine(self, digest: str, actor: ActorHandle) -> None:
        """A request on ``actor`` ended in an error: if its engine died, report it."""
        try:
            dead = (await actor.call("stats")).get("dead")
        except EngineDead as e:
            dead = str(e)
        except Exception as e:  # the report is best effort; the request has its error
            logger.warning("could not ask %s whether its engine died: %s", actor, e)
            return
        if dead:
            with contextlib.suppress(Exception):
                await self._failed(digest, actor, dead)

    async def _acquire(
        self, name: str, digest: str, num_ctx: int, keep_alive: float | None
    ) -> ActorHandle:
        """Choose an actor and count a request on it with the scheduler (last use,
        in flight, keep_alive); a cached actor unloaded meanwhile is chosen afresh."""
        actor = await self._choose(name, digest, num_ctx, keep_alive)
        if not await self.link.call("omax_touch", key=actor.key, delta=1, keep_alive=keep_alive):
            self._forget_actor(digest, actor)
            actor = await self._choose(name, digest, num_ctx, keep_alive)
            await self.link.call("omax_touch", key=actor.key, delta=1, keep_alive=keep_alive)
        self._outstanding[actor.key] += 1
        return actor

    async def _release(self, actor: ActorHandle, keep_alive: float | None) -> None:
        """The request on ``actor`` ended; per-actor state goes when it is idle."""
        self._outstanding[actor.key] -= 1
        if self._outstanding[actor.key] <= 0:
            self._outstanding.pop(actor.key, None)
            poller = self._pollers.get(actor.key)
            if poller is not None and poller.live == 0:
                self._pollers.pop(actor.key, None)
        with contextlib.suppress(Exception):
            await self.link.call("omax_touch", key=actor.key, delta=-1, keep_alive=keep_alive)

    async def _resolve(self, name: str) -> tuple[str, Any]:
        """``name``'s digest and manifest, cached briefly. Requests that miss the cache
        together share one lookup: a burst (ten times the queue at once) would
        otherwise queue as many catalog reads on the small thread pool, and even its
        503s would wait for them."""
        hit = self._names.get(name)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        lookup = self._resolving.get(name)
        if lookup is None:
            lookup = asyncio.ensure_future(asyncio.to_thread(self.store.resolve, name))
            self._resolving[name] = lookup
            lookup.add_done_callback(lambda _: self._resolving.pop(name, None))
        found = await asyncio.shield(lookup)
        self._names[name] = (time.monotonic() + _CACHE_S, found)
        return found

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateChunk]:
        self.link.require()  # while the scheduler is away: 503 at once
        digest, _ = await self._resolve(request.model)
        if self._pending[digest] >= self.max_queue:
            raise ServerBusy()
        self._pending[digest] += 1
        try:
            async for chunk in self._generate(request, digest):
                yield chunk
        finally:
            self._pending[digest] -= 1
            if self._pending[digest] <= 0:
                del self._pending[digest]

    async def _generate(self, request: GenerateRequest, digest: str):
        rid = request.request_id or uuid.uuid4().hex
        num_ctx = request.options.num_ctx
        for attempt in range(_RETRIES + 1):
            actor = await self._choose(request.model, digest, num_ctx, request.keep_alive)
            bind(worker=actor.worker)  # log lines about this request name the worker
            self._outstanding[actor.key] += 1
            poller = self._pollers.get(actor.key)
            if poller is None:
                poller = self._pollers[actor.key] = Poller(
                    _poll_fn(actor, self.coalesce), actor.key
                )
            started = False
            done = False
            try:
                queue = poller.register(rid)
                # Counting the request with the scheduler (which also finds a cached actor
                # that was unloaded meanwhile) and submitting it are independent round
                # trips: both go at once, off the time to first token.
                replies: tuple[Any, Any] = await asyncio.gather(
                    self.link.call(
                        "omax_touch", key=actor.key, delta=1, keep_alive=request.keep_alive
                    ),
                    actor.call("submit", _with_id(request, rid)),
                    return_exceptions=True,
                )
                touched, submitted = replies
                if isinstance(touched, (Unavailable, DeadlineExceeded)):
                    raise touched
                if isinstance(submitted, BaseException):
                    raise submitted
                if touched is not True:
                    raise EngineDead(f"model actor {actor.key} is no longer loaded")
                while True:
                    item = await (
                        queue.get()
                        if started
                        else bounded(
                            f"first token from model actor {actor.key}",
                            queue.get(),
                            self.deadlines.start,
                        )
                    )
                    if isinstance(item, Exception):
                        raise item
                    started = True
                    if item.error:  # before the client hears of it: routing is fixed
                        await self._check_engine(digest, actor)
                    yield item
                    if item.done:
                        done = True
                        return
            except EngineDead as e:
                if started or attempt == _RETRIES:
                    raise
                logger.warning("actor %s before the first token: %s; retrying", actor.key, e)
                note_retry()
                await self._failed(digest, actor, str(e))
            finally:
                poller.forget(rid)
                if not done:
                    with contextlib.suppress(Exception):
                        await actor.call("cancel", rid)
                await self._release(actor, request.keep_alive)

    async def embed(self, request: EmbedRequest) -> EmbedResult:
        self.link.require()
        digest, _ = await self._resolve(request.model)
        for attempt in range(_RETRIES + 1):
            actor = await self._acquire(request.model, digest, 512, request.keep_alive)
            try:
                return await actor.call_within(self.deadlines.start, "embed", request)
            except EngineDead as e:
                if attempt == _RETRIES:
                    raise
                await self._failed(digest, actor, str(e))
            finally:
                await self._release(actor, request.keep_alive)
        raise AssertionError("unreachable")

    async def load(self, model: str, keep_alive: float | None) -> None:
        self.link.require()
        digest, _ = await self._resolve(model)
        if keep_alive == 0:
            await self.link.call("omax_unload", digest=digest)
            return
        await self._actors(model, digest, 4096, keep_alive)

    # ---- the model store ------------------------------------------------------

    async def list_models(self) -> list[ModelInfo]:
        return await asyncio.to_thread(catalog_view.list_models, self.store)

    async def show(self, model: str) -> ShowInfo:
        return await asyncio.to_thread(catalog_view.show, self.store, model)

    async def copy(self, source: str, destination: str) -> None:
        self._names.clear()
        await asyncio.to_thread(self.store.copy, source, destination)

    async def delete(self, model: str) -> None:
        self._names.clear()
        digest, _ = await self._resolve(model)
        await asyncio.to_thread(self.store.delete, model)
        self._names.clear()
        still_named = any(e.digest == digest for e in await asyncio.to_thread(self.store.list))
        if not still_named:  # a copy's deletion leaves the shared model loaded
            await self.link.call("omax_unload", digest=digest)

    async def create(self, request: CreateRequest) -> AsyncIterator[Progress]:
        """Create the model in the origin store, then replicate it to
        ``omax.replication.target`` workers, as a pull does."""
        self._names.clear()
        async for p in catalog_view.create(self.store, request):
            if p.status == "success":
                break
            yield p
        async for p in self._replicate(request.model):
            yield p

    async def pull(self, model: str, insecure: bool = False) -> AsyncIterator[Progress]:
        """Import or verify the model in the origin store, then replicate it to
        ``omax.replication.target`` workers, streaming bytes per (model, worker)."""
        self._names.clear()
        async for p in catalog_view.pull(self.store, model, insecure):
            if p.status == "success":
                break
            yield p
        async for p in self._replicate(catalog_view.local_name(model)):
            yield p

    async def _replicate(self, name: str) -> AsyncIterator[Progress]:
        """Bring ``name`` to its replication target, one progress line per (worker,
        poll) while bytes move, then "success"."""
        digest, _ = await self._resolve(name)
        # Replication takes as long as the bytes take: no deadline but the connection's.
        job = asyncio.ensure_future(
            self.link.call("omax_replicate_model", timeout=None, digest=digest)
        )
        try:
            while not job.done():
                await asyncio.wait({job}, timeout=0.25)
                state = await self.link.call("omax_cluster")
                for w in state["workers"]:
                    for r in w.get("replicating", []):
                        if r["digest"] == digest:
                            yield Progress(
                                f"replicating to {w['address']}",
                                digest,
                                r["total"],
                                r["completed"],
                            )
        finally:
            if not job.done():
                job.cancel()
        reply = job.result()
        if is_wire_error(reply):
            raise from_wire({**reply, "error": f"replicating {name}: {reply['error']}"})
        yield Progress("success")

    async def push(
        self, model: str, destination: str | None = None, insecure: bool = False
    ) -> AsyncIterator[Progress]:
        async for p in catalog_view.push(self.store, model, destination, insecure):
            yield p

    async def has_blob(self, digest: str) -> bool:
        return await asyncio.to_thread(self.store.blobs.has, digest)

    async def put_blob(self, digest: str, chunks: AsyncIterator[bytes]) -> bool:
        fd, path = tempfile.mkstemp(prefix="omax-upload-")
        try:
            with os.fdopen(fd, "wb") as f:
                async for chunk in chunks:
                    await asyncio.to_thread(f.write, chunk)
            _, created = await asyncio.to_thread(self.store.blobs.put_file, path, digest)
            return created
        finally:
            os.unlink(path)

    # ---- the cluster -------------------------------------------------------------

    async def ps(self) -> list[LoadedModel]:
        rows = await self.link.call("omax_ps")
        out = []
        for r in rows:
            try:
                info = await asyncio.to_thread(catalog_view.model_info, self.store, r["name"])
            except ModelNotFound:
                continue
            expires = r["expires_at"]
            out.append(
                LoadedModel(
                    info=info,
                    expires_at=_rfc3339(
                        expires if expires >= 0 else time.time() + 10 * 365 * 86400
                    ),
                    size_vram=r["memory"] if not r["slot"].startswith("cpu") else 0,
                    context_length=r["num_ctx"],
                    worker=r["worker"],
                    device=r["slot"],
                )
            )
        return out

    async def cluster(self) -> dict[str, Any]:
        return await self.link.call("omax_cluster")

    async def health(self) -> Health:
        """Ready when the scheduler answers and a worker has reported its inference
        slots (until then a request could only be refused)."""
        if not self.link.connected:
            return Health(scheduler=False, reason=str(self.link.unavailable()))
        try:
            state, rows = await asyncio.gather(
                self.link.call("omax_cluster"), self.link.call("omax_ps")
            )
        except (Unavailable, DeadlineExceeded) as e:
            return Health(scheduler=False, reason=str(e))
        workers = sum(1 for w in state["workers"] if w.get("slots"))
        models = tuple(sorted({r["name"] for r in rows}))
        if not workers:
            reason = "no worker with an inference slot is connected to the scheduler"
            return Health(scheduler=True, models=models, reason=reason)
        return Health(scheduler=True, workers=workers, models=models)


def _poll_fn(actor: ActorHandle, linger: float) -> Callable[[list[str]], Awaitable[Any]]:
    """One call for every live request on ``actor``: waits up to 50 ms for new chunks,
    and lets a started stream's chunks gather for ``linger`` s."""

    async def poll(ids: list[str]) -> Any:
        return pickle.loads(await actor.call("poll_wire", ids, 0.05, linger))

    return poll


def _with_id(request: GenerateRequest, rid: str) -> GenerateRequest:
    return replace(request, request_id=rid)


def _rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()
