"""ClusterRuntime: the real Runtime, over a Dask cluster with the omax plugins.

A request travels: resolve the name in the catalog (``NameCache``) -> ask the
scheduler plugin for the model's ready actors (``ActorPool``; ``omax_ensure`` loads
one when none is) -> pick the least busy replica -> ``submit`` on the actor -> the
actor's Poller brings chunks back in one call per step -> the caller's async
iterator. Closing the iterator before the last chunk cancels the generation on the
actor. A call to an actor that raises ``EngineDead`` before the request's first token
is retried on another; the pool reports the dead actor to the scheduler.

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
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from distributed import Client

from omax.config import settings
from omax.engine.request import EmbedRequest, EmbedResult, GenerateChunk, GenerateRequest
from omax.errors import DeadlineExceeded, EngineDead, ModelNotFound, ServerBusy, Unavailable
from omax.logs import bind
from omax.serve import catalog_view
from omax.serve.actor_pool import ActorPool
from omax.serve.actors import ActorHandle
from omax.serve.catalog_rpc import SchedulerCatalog
from omax.serve.metrics import note_retry
from omax.serve.names import NameCache
from omax.serve.replication import replicate
from omax.serve.runtime import (
    CreateRequest,
    Health,
    LoadedModel,
    ModelInfo,
    Progress,
    ShowInfo,
)
from omax.serve.uploads import store_upload
from omax.serve.upstream import Deadlines, SchedulerLink, bounded

logger = logging.getLogger(__name__)

_RETRIES = 2
_CACHE_S = 2.0  # seconds a name's digest, and a model's ready actors, are trusted


class ClusterRuntime:
    def __init__(
        self, link: SchedulerLink, store_url: str, max_queue: int, coalesce: float
    ) -> None:
        from omax.sharding.modelstore import ModelStore

        self.link = link
        self.deadlines = link.deadlines
        self.store = ModelStore(store_url)
        self.max_queue = max_queue
        self._pending: dict[str, int] = defaultdict(int)  # digest -> requests
        # Short-lived caches keep the scheduler and the catalog off the per-request path.
        self.names = NameCache(self.store.resolve, _CACHE_S)
        self.actors = ActorPool(link, coalesce, _CACHE_S)
        link.on_reconnect(self._forget_all)

    @classmethod
    async def connect(
        cls,
        scheduler: str | Client,
        max_queue: int | None = None,
        coalesce: float | None = None,
        deadlines: Deadlines | None = None,
    ) -> ClusterRuntime:
        """Connect to ``scheduler``; what is not given comes from ``omax.serve.*``
        (``max-queue``, ``stream-coalesce``, the deadlines)."""
        cfg = settings()
        max_queue = cfg.max_queue if max_queue is None else max_queue
        coalesce = cfg.stream_coalesce if coalesce is None else coalesce
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
        self.actors.forget_all()
        self.names.clear()

    # ---- generation -------------------------------------------------------------

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateChunk]:
        self.link.require()  # while the scheduler is away: 503 at once
        digest, _ = await self.names.resolve(request.model)
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
        for attempt in range(_RETRIES + 1):
            actor = await self.actors.choose(
                request.model, digest, request.options.num_ctx, request.keep_alive
            )
            bind(worker=actor.worker)  # log lines about this request name the worker
            poller = self.actors.hold(actor)
            started = False
            done = False
            try:
                queue = poller.register(rid)
                await self._submit(actor, request, rid)
                while True:
                    item = await self._next_chunk(queue, actor, started)
                    started = True
                    if item.error:  # before the client hears of it: routing is fixed
                        await self.actors.check_engine(digest, actor)
                    yield item
                    if item.done:
                        done = True
                        return
            except EngineDead as e:
                if started or attempt == _RETRIES:
                    raise
                logger.warning("actor %s before the first token: %s; retrying", actor.key, e)
                note_retry()
                await self.actors.failed(digest, actor, str(e))
            finally:
                poller.forget(rid)
                if not done:
                    with contextlib.suppress(Exception):
                        await actor.call("cancel", rid)
                await self.actors.release(actor, request.keep_alive)

    async def _submit(self, actor: ActorHandle, request: GenerateRequest, rid: str) -> None:
        """Count the request with the scheduler and submit it to ``actor``.

        Counting (which also finds a cached actor that was unloaded meanwhile) and
        submitting are independent round trips: both go at once, off the time to first
        token. ``EngineDead`` where the actor is no longer loaded."""
        replies: tuple[Any, Any] = await asyncio.gather(
            self.link.call("omax_touch", key=actor.key, delta=1, keep_alive=request.keep_alive),
            actor.call("submit", replace(request, request_id=rid)),
            return_exceptions=True,
        )
        touched, submitted = replies
        if isinstance(touched, (Unavailable, DeadlineExceeded)):
            raise touched
        if isinstance(submitted, BaseException):
            raise submitted
        if touched is not True:
            raise EngineDead(f"model actor {actor.key} is no longer loaded")

    async def _next_chunk(
        self, queue: asyncio.Queue[Any], actor: ActorHandle, started: bool
    ) -> GenerateChunk:
        """The next chunk the poller queued (the first within the start deadline); an
        error it queued instead raises."""
        item = await (
            queue.get()
            if started
            else bounded(
                f"first token from model actor {actor.key}", queue.get(), self.deadlines.start
            )
        )
        if isinstance(item, Exception):
            raise item
        return item

    async def embed(self, request: EmbedRequest) -> EmbedResult:
        self.link.require()
        digest, _ = await self.names.resolve(request.model)
        for attempt in range(_RETRIES + 1):
            actor = await self.actors.acquire(request.model, digest, 512, request.keep_alive)
            try:
                return await actor.call_within(self.deadlines.start, "embed", request)
            except EngineDead as e:
                if attempt == _RETRIES:
                    raise
                await self.actors.failed(digest, actor, str(e))
            finally:
                await self.actors.release(actor, request.keep_alive)
        raise AssertionError("unreachable")

    async def load(self, model: str, keep_alive: float | None) -> None:
        self.link.require()
        digest, _ = await self.names.resolve(model)
        if keep_alive == 0:
            await self.link.call("omax_unload", digest=digest)
            return
        await self.actors.ensure(model, digest, 4096, keep_alive)

    # ---- the model store ------------------------------------------------------

    async def list_models(self) -> list[ModelInfo]:
        return await asyncio.to_thread(catalog_view.list_models, self.store)

    async def show(self, model: str) -> ShowInfo:
        return await asyncio.to_thread(catalog_view.show, self.store, model)

    async def copy(self, source: str, destination: str) -> None:
        self.names.clear()
        await asyncio.to_thread(self.store.copy, source, destination)

    async def delete(self, model: str) -> None:
        self.names.clear()
        digest, _ = await self.names.resolve(model)
        await asyncio.to_thread(self.store.delete, model)
        self.names.clear()
        still_named = any(e.digest == digest for e in await asyncio.to_thread(self.store.list))
        if not still_named:  # a copy's deletion leaves the shared model loaded
            await self.link.call("omax_unload", digest=digest)

    async def create(self, request: CreateRequest) -> AsyncIterator[Progress]:
        """Create the model in the origin store, then replicate it to
        ``omax.replication.target`` workers, as a pull does."""
        self.names.clear()
        async for p in _until_success(catalog_view.create(self.store, request)):
            yield p
        async for p in self._replicate(request.model):
            yield p

    async def pull(self, model: str, insecure: bool = False) -> AsyncIterator[Progress]:
        """Import or verify the model in the origin store, then replicate it to
        ``omax.replication.target`` workers, streaming bytes per (model, worker)."""
        self.names.clear()
        async for p in _until_success(catalog_view.pull(self.store, model, insecure)):
            yield p
        async for p in self._replicate(catalog_view.local_name(model)):
            yield p

    async def _replicate(self, name: str) -> AsyncIterator[Progress]:
        digest, _ = await self.names.resolve(name)
        async for p in replicate(self.link, digest, name):
            yield p

    async def push(
        self, model: str, destination: str | None = None, insecure: bool = False
    ) -> AsyncIterator[Progress]:
        async for p in catalog_view.push(self.store, model, destination, insecure):
            yield p

    async def has_blob(self, digest: str) -> bool:
        return await asyncio.to_thread(self.store.blobs.has, digest)

    async def put_blob(self, digest: str, chunks: AsyncIterator[bytes]) -> bool:
        return await store_upload(self.store.blobs, digest, chunks)

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


async def _until_success(steps: AsyncIterator[Progress]) -> AsyncIterator[Progress]:
    """``steps`` up to their "success" (a replication follows, with its own)."""
    async for p in steps:
        if p.status == "success":
            break
        yield p


def _rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()
