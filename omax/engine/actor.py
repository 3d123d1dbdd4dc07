"""``ModelActor``: a Dask actor holding one loaded ``Engine``.

Dask runs every synchronous actor method of a worker on one shared thread and runs
async methods on the worker's event loop, so every method here is ``async`` and never
blocks: loading and embedding run in a thread (``asyncio.to_thread``), ``poll`` is a
short long-poll that sleeps on the event loop between non-blocking checks.

Where the weights come from is a hook: ``load_source`` is a callable returning
``(ModelSpec, Iterable[RawTensor])``. The control plane passes one that reads the
worker's local replica of ``model_digest`` (omax.sharding); tests pass files.

This module stays light to import: a worker unpickles the task that creates an actor
on its event loop, importing this module there, so the engine (torch, transformers)
is imported by the load, in its thread.

An engine whose batching step failed is dead (``Batcher.dead``): its requests were
answered with the error, ``submit`` raises ``EngineDead``, ``poll`` raises it once the
requests asked about have nothing left to deliver, and ``stats`` names the cause, so
a front door stops routing to the actor and has the scheduler unload it.

Every request is held under a lease its polls renew (``omax.engine.request_leases``):
one nobody has polled for ``omax.worker.request-lease`` (its front door died) is
cancelled, and its last chunks are dropped rather than kept for a reader that never
comes.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import pickle
import sys
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from omax.engine.request import EmbedRequest, EmbedResult, GenerateChunk, GenerateRequest
from omax.engine.request_leases import RequestLeases
from omax.engine.spec import ModelSpec
from omax.errors import EngineDead, EngineError
from omax.logs import log_context
from omax.sharding.tensors import RawTensor

if TYPE_CHECKING:
    from omax.engine.engine import Engine

LoadSource = Callable[[], tuple[ModelSpec, Iterable[RawTensor]]]

logger = logging.getLogger(__name__)

POLL_INTERVAL = 0.002
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters


def store_load_source(model_digest: str, store_url: str) -> LoadSource:
    """Read ``model_digest`` from the blob store at ``store_url`` (a worker's local
    replica, or any origin store), tensors streamed through zarr."""

    def load() -> tuple[ModelSpec, Iterable[RawTensor]]:
        from omax.sharding.blobs import BlobStore
        from omax.sharding.spec_source import store_source

        if not store_url:
            raise EngineError(f"no store to load {model_digest} from")
        return store_source(BlobStore(store_url), model_digest)

    return load


def _use_cpu_threads() -> None:
    """Give torch ``omax.worker.cpu-threads`` threads (0: every core this process may
    use). Dask starts worker processes with OMP_NUM_THREADS=1, which would leave a CPU
    model one core."""
    import torch

    from omax.config import settings

    # Always set: the call also sets this (loading) thread's OpenMP count
    # (``omax.engine.threads``).
    torch.set_num_threads(settings().cpu_threads or len(os.sched_getaffinity(0)))


def _keep_step_buffers() -> None:
    """Let glibc reuse a decode step's freed buffers instead of unmapping them.

    Dask starts worker processes with ``MALLOC_TRIM_THRESHOLD_=65536``
    (``distributed.nanny.pre-spawn-environ``). Setting it also turns off glibc's
    dynamic mmap threshold, which then stays at 128 KiB: every tensor of a step above
    that (logits, activations, attention scratch) is a fresh mmap, faulted in page by
    page and unmapped when freed: thousands of page faults per stream, each one CPU
    time taken from decoding. Raising the mmap threshold to the ceiling glibc's own
    dynamic rule reaches (32 MiB) and the trim threshold above it keeps those buffers
    on the heap; weights and KV caches, allocated once and larger, are unaffected.
    Only done where the variable is set: otherwise glibc's dynamic rule already works.
    """
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)
        libc.mallopt(M_TRIM_THRESHOLD, 64 << 20)
    except (OSError, AttributeError):  # not glibc
        pass


def _worker_address() -> str:
    """The Dask worker this actor is created on ("" outside one, e.g. in tests)."""
    try:
        from distributed import get_worker

        return get_worker().address
    except ValueError:
        return ""


class ModelActor:
    """One model on one device slot. ``__init__`` is cheap; call ``load()`` next."""

    def __init__(
        self,
        model_digest: str,
        store_url: str = "",
        *,
        load_source: LoadSource | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        engine_options: dict[str, Any] | None = None,
        request_lease: float | None = None,
    ) -> None:
        self.model_digest = model_digest
        self.store_url = store_url
        self.device = device
        self.dtype = dtype
        self.engine_options = dict(engine_options or {})
        self._load_source = load_source or store_load_source(model_digest, store_url)
        self.engine: Engine | None = None
        self._loading: asyncio.Task | None = None
        self._ready: asyncio.Event | None = None
        # Polls waiting for any chunk, and polls lingering for an urgent one.
        self._waiting = 0
        self._lingering = 0
        self._streaming: set[str] = set()  # requests whose first chunk was delivered
        self.load_duration_ns = 0
        self.worker = _worker_address()  # named in log lines about its requests
        self._leases = RequestLeases(time.monotonic())
        self._lease_s = request_lease  # None: omax.worker.request-lease, read at load
        self._unread: set[str] = set()  # cancelled requests whose last chunk nobody takes
        self._expiry: asyncio.Task | None = None

    def _load_sync(self) -> Engine:
        from omax import warmup

        start = time.perf_counter_ns()
        warmup.wait()  # the worker's own import of the engine and transformers
        from omax.engine.engine import Engine  # here, off the event loop (module doc)

        if self.device == "cpu":
            _use_cpu_threads()
            _keep_step_buffers()
        spec, tensors = self._load_source()
        engine = Engine.load(
            spec, tensors, device=self.device, dtype=self.dtype, **self.engine_options
        )
        self.load_duration_ns = time.perf_counter_ns() - start
        return engine

    async def load(self) -> dict:
        """Load the weights off the event loop; concurrent calls share one load."""
        if self.engine is None:
            if self._loading is None:
                self._loading = asyncio.ensure_future(asyncio.to_thread(self._load_sync))
            try:
                self.engine = await asyncio.shield(self._loading)
            except Exception:
                self._loading = None
                raise
            if self._expiry is None:
                if self._lease_s is None:
                    from omax.config import settings

                    self._lease_s = settings().request_lease
                self._expiry = asyncio.ensure_future(self._expire_leases(self._lease_s))
        return {"model": self.model_digest, "load_duration": self.load_duration_ns}

    def _engine(self) -> Engine:
        if self.engine is None:
            raise EngineDead(f"model {self.model_digest} is not loaded")
        return self.engine

    @property
    def dead(self) -> str | None:
        """Why the engine died (its batching step failed), or None while it serves."""
        batcher = self.engine.batcher if self.engine is not None else None
        return batcher.dead if batcher is not None else None

    async def submit(self, req: GenerateRequest) -> str:
        eng = self._engine()
        # The engine's and the batching thread's lines about it name the request.
        with log_context(req.request_id, self.model_digest[:19], self.worker):
            logger.debug("request %s submitted", req.request_id)
            rid = await asyncio.to_thread(eng.submit, req)  # tokenising can take a while
        self._leases.renew([rid], time.monotonic())
        return rid

    async def poll(
        self, request_ids: Iterable[str], timeout: float = 0.05, linger: float = 0.0
    ) -> dict[str, list[GenerateChunk]]:
        """New chunks of several requests; waits up to ``timeout`` s without blocking.

        The batching thread sets an asyncio event when it emits, so a waiting poll
        returns as soon as a token exists rather than on the next timer tick. With
        ``linger``, chunks of streams already under way gather until ``linger`` s
        after the call so one reply carries several steps (fewer round trips and
        less event-loop work beside the batching thread); a request's first chunk
        and its last are never held back."""
        eng = self._engine()
        ids = list(request_ids)
        start = time.monotonic()
        self._leases.renew(ids, start)
        out = eng.poll(ids, 0.0)
        if not out and self.dead is not None:  # every request was answered already
            raise EngineDead(f"model {self.model_digest} failed: {self.dead}")
        if not out and timeout > 0:
            out = await self._gather(eng, ids, start + timeout, out, linger=False)
        if out and linger > 0 and not self._urgent(out):
            out = await self._gather(eng, ids, start + linger, out, linger=True)
        for rid, chunks in out.items():
            if chunks and chunks[-1].done:
                self._streaming.discard(rid)
                self._leases.end(rid, time.monotonic())
            else:
                self._streaming.add(rid)
        return out

    async def poll_wire(
        self, request_ids: list[str], timeout: float = 0.05, linger: float = 0.0
    ) -> bytes:
        """``poll``'s reply as one pickle, for a front door calling over Dask's RPC.

        Dask serializes a reply object through its generic path (collections walked
        and checked item by item, each part pickled on its own); one ``bytes`` goes out
        as a single frame. Several polls a second per stream, on the event loop beside
        the batching thread, make that cost count."""
        return pickle.dumps(await self.poll(request_ids, timeout, linger), protocol=5)

    def _urgent(self, out: dict[str, list[GenerateChunk]]) -> bool:
        """Whether ``out`` holds a request's first chunk or a last one."""
        return any(
            rid not in self._streaming or (chunks and chunks[-1].done)
            for rid, chunks in out.items()
        )

    async def _gather(
        self,
        eng: Engine,
        ids: list[str],
        deadline: float,
        out: dict[str, list[GenerateChunk]],
        linger: bool,
    ) -> dict[str, list[GenerateChunk]]:
        """Add new chunks of ``ids`` to ``out`` until the deadline or, waiting, until
        there is one, or, lingering, until one is urgent (a first or a last chunk).

        A lingering poll is woken by urgent chunks only: one wake-up of this event loop
        per token would take the GIL from the batching thread at every step."""
        enough = self._urgent if linger else bool
        ready = self._output_event(eng)
        self._count(linger, 1)
        try:
            while True:
                ready.clear()
                for rid, chunks in eng.poll(ids, 0.0).items():  # after clear(): an emit sets it
                    out.setdefault(rid, []).extend(chunks)
                remaining = deadline - time.monotonic()
                if enough(out) or remaining <= 0:
                    return out
                wait = remaining if linger else min(remaining, POLL_INTERVAL * 10)
                try:
                    await asyncio.wait_for(ready.wait(), wait)
                except TimeoutError:
                    pass
        finally:
            self._count(linger, -1)

    def _count(self, linger: bool, delta: int) -> None:
        if linger:
            self._lingering += delta
        else:
            self._waiting += delta

    def _output_event(self, eng: Engine) -> asyncio.Event:
        if self._ready is None:
            loop = asyncio.get_running_loop()
            event = asyncio.Event()

            def wake(urgent: bool) -> None:  # on the batching thread
                wanted = self._waiting or (urgent and self._lingering)
                if wanted and not event.is_set():
                    loop.call_soon_threadsafe(event.set)

            if eng.batcher is not None:
                eng.batcher.on_output = wake
            self._ready = event
        return self._ready

    async def cancel(self, request_id: str) -> None:
        self._streaming.discard(request_id)
        self._leases.end(request_id, time.monotonic())
        self._unread.add(request_id)
        self._engine().cancel(request_id)

    async def _expire_leases(self, ttl: float) -> None:
        """Cancel requests nobody polled for ``ttl`` s; drop cancelled ones' last chunks."""
        while self.engine is not None:
            await asyncio.sleep(min(max(ttl / 4, 0.05), 2.0))
            eng = self.engine
            if eng is None:
                return
            for rid in self._leases.expired(time.monotonic(), ttl):
                with log_context(rid, self.model_digest[:19], self.worker):
                    logger.warning(
                        "request %s on model %s: not polled for %.0f s (its front door is"
                        " gone?); cancelled",
                        rid,
                        self.model_digest[:19],
                        ttl,
                    )
                self._streaming.discard(rid)
                self._unread.add(rid)
                eng.cancel(rid)
            if self._unread:
                for rid, chunks in eng.poll(list(self._unread), 0.0).items():
                    if chunks and chunks[-1].done:
                        self._unread.discard(rid)

    async def embed(self, req: EmbedRequest) -> EmbedResult:
        return await asyncio.to_thread(self._engine().embed, req)

    async def stats(self) -> dict:
        """``loaded``, ``dead`` (the cause, or None) and the engine's numbers."""
        if self.engine is None:
            return {"loaded": False, "dead": None, "model": self.model_digest}
        stats = self.engine.stats()
        leases = {"leases": len(self._leases), "idle_s": self._leases.idle_for(time.monotonic())}
        return {"loaded": True, "dead": self.dead, "model": self.model_digest, **stats, **leases}

    def metrics(self) -> dict[str, Any]:
        """Cheap numbers for the worker's heartbeat (synchronous, O(1) in requests
        served): running and waiting sequences, KV cache tokens against the budget,
        load time and the batching loop's totals (``omax.engine.counters``)."""
        batcher = self.engine.batcher if self.engine is not None else None
        out: dict[str, Any] = {"loaded": self.engine is not None, "dead": self.dead}
        out["load_seconds"] = self.load_duration_ns / 1e9
        if batcher is not None:
            running = len(batcher.decoding) + (1 if batcher.prefilling else 0)
            out.update(
                running=running,
                waiting=batcher.live() - running,
                kv_tokens=batcher.kv_tokens(),
                kv_budget=batcher.kv_budget,
                **batcher.counters.snapshot(),
            )
        return out

    async def close(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if self.engine is not None:
            await asyncio.to_thread(self.engine.close)
            self.engine = None
