"""The omax worker plugin: inference slots, the local blob store and its replicas.

Load it with ``dask worker ADDR --preload omax.plugins.worker``. The plugin

- detects the worker's slots (GPUs, or one CPU slot of ``omax.worker.slot-memory``),
- opens the worker-local blob store (``omax.worker.store``), repairs what a crash
  left in it (``LocalReplicas.recover``) and knows which replicas in it are complete
  (a marker written after every blob verified) or partial,
- answers the scheduler: ``omax_state`` (slots + replicas), ``omax_replicate`` (fetch
  a model's blobs into the local store, from peers first and the origin last),
  ``omax_verify_replica`` (re-hash a replica, dropping bad blobs) and
  ``omax_drop_replica``; and its peers: ``omax_blob_stream`` (a local blob sent as a
  stream of messages on one comm, unverified: the reader hashes as it writes),
- pushes ``omax_report`` to the scheduler whenever its replicas change,
  ``omax_progress`` as blobs land and ``omax_bad_source`` when a peer's bytes do not
  verify,
- hands the scheduler, in each Dask heartbeat (``worker.metrics["omax"]``), its
  model actors' numbers (``ModelActor.metrics``), its slots' live memory and the
  replication bytes it fetched, for the dashboard pages and ``/metrics``
  (``omax.plugins.metrics``);
- answers a load that found a blob damaged (``damaged``, from the actor's loading
  thread): the replica is re-hashed, its bad blobs quarantined, it becomes partial
  and the scheduler hears of it, which fetches it again before loading once more.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import threading
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import dask
from distributed import WorkerPlugin
from distributed.comm import Comm
from distributed.core import ConnectionPool, Status
from distributed.protocol import to_serialize
from distributed.worker import Worker

# A model actor's task names these modules, and the worker unpickles it on its event
# loop: imported there, they (zarr among them) would hold up heartbeats and every other
# actor's calls. Imported here, at the worker's start, they are already loaded then.
import omax.engine.actor  # noqa: F401
import omax.plugins.source  # noqa: F401
from omax import warmup
from omax.config import settings, worker_store_path
from omax.errors import BlobNotFound, DigestMismatch, from_wire, is_wire_error, to_wire
from omax.plugins.replicas import LocalReplicas
from omax.plugins.slots import detect_slots
from omax.plugins.state import Slot
from omax.sharding.replication import BadSource

logger = logging.getLogger(__name__)
PEER_IDLE_S = 60.0  # a peer stream idle this long fails over to the next source

PLUGIN_NAME = "omax"
STREAM_PIECE = 4 << 20  # bytes per message of a blob sent to a peer


class OmaxWorkerPlugin(WorkerPlugin):
    name = PLUGIN_NAME
    idempotent = True

    def __init__(self) -> None:
        self.worker: Worker | None = None
        self.replicas: LocalReplicas | None = None
        self.slots: tuple = ()
        self.origin_url = ""
        self.disk_budget = 0
        self.served_bytes = 0  # blob bytes sent to peers, for tests and benchmarks
        self.fetched_bytes = 0  # blob bytes fetched into the local store
        self._fetched: dict[str, int] = {}  # digest -> bytes done, of fetches under way
        self.jobs: dict[str, asyncio.Task] = {}  # digest -> fetch in progress
        self.drops: set[asyncio.Future] = set()  # replica drops in progress
        self.pushes: set[asyncio.Task] = set()  # progress and damage reports in flight

    async def setup(self, worker: Worker) -> None:
        cfg = settings()
        self.worker = worker
        # comms to peers for blob streams; they do not deserialize, so a piece arrives
        # as a view of the receive buffer
        self.pool = await ConnectionPool(
            limit=64,
            deserialize=False,
            connection_args=worker.connection_args,
            timeout=dask.config.get("distributed.comm.timeouts.connect"),
            server=worker,
        )
        # The batching thread holds the GIL between torch ops; a short switch interval
        # lets the worker's event loop answer polls and submits without waiting out
        # the interpreter's default interval for each hand-over.
        sys.setswitchinterval(0.0002)
        warmup.start(warmup.engine_imports)  # for the first model load
        self.origin_url = cfg.store_url
        self.slots = detect_slots(cfg.device, cfg.slot_memory)
        self.disk_budget = cfg.disk_budget  # bytes the local store may hold; 0: no limit
        # The worker's name is stable across restarts when given (--name, a pod name),
        # so a restarted worker finds its replicas again; it defaults to the address.
        path = worker_store_path(cfg.worker_store, str(worker.name), worker.address)
        self.replicas = LocalReplicas(path)
        await asyncio.to_thread(self.replicas.recover)  # before the first report
        worker.handlers["omax_state"] = self.state
        worker.handlers["omax_replicate"] = self.replicate
        worker.handlers["omax_blob_stream"] = self.blob_stream
        worker.handlers["omax_verify_replica"] = self.verify_replica
        worker.handlers["omax_drop_replica"] = self.drop_replica
        _answer_calls_to_gone_actors(worker)
        worker.metrics["omax"] = self.heartbeat
        from omax.plugins import metrics

        metrics.register_worker(self)
        logger.info(
            "omax worker plugin: %d slot(s) %s, store %s",
            len(self.slots),
            [s.id for s in self.slots],
            path,
        )

    async def teardown(self, worker: Worker) -> None:
        await self.pool.close()

    def heartbeat(self, worker: Worker) -> dict[str, Any]:
        """What the scheduler's pages and ``/metrics`` show of this worker, sent with
        each heartbeat: a few numbers per model actor, per slot and for replication."""
        from omax.engine.actor import ModelActor

        models = {
            str(key): {"model": a.model_digest, "slot": a.device, **a.metrics()}
            for key, a in list(worker.state.actors.items())
            if isinstance(a, ModelActor)
        }
        return {
            "models": models,
            "slots": [s.to_dict() for s in live_slots(self.slots)],
            "replication_bytes": self.fetched_bytes,
            "served_bytes": self.served_bytes,
            "fetches": len(self.jobs),
        }

    def state(self) -> dict[str, Any]:
        """Slots and replicas, as plain dicts for the scheduler."""
        assert self.replicas is not None
        return {
            "host": self.worker.ip if self.worker else "",
            "slots": [s.to_dict() for s in self.slots],
            "disk_budget": self.disk_budget,
            "replicas": {d: r.to_dict() for d, r in self.replicas.scan().items()},
        }

    async def blob_stream(self, comm: Comm, digest: str) -> Status:
        """Send a local blob on ``comm``: ``{"data": piece}`` messages, then ``{"end": n}``.

        The next piece is read from disk while the current one is being sent. A blob
        this worker lacks answers ``to_wire(BlobNotFound(...))``. The comm stays usable afterwards.
        """
        assert self.replicas is not None
        try:
            f = await asyncio.to_thread(self.replicas.open_blob, digest)
        except (OSError, ValueError) as err:
            missing = BlobNotFound(f"blob {digest} is not on this worker: {err}")
            await comm.write(to_wire(missing))
            return Status.dont_reply
        sent = 0
        try:
            ahead = asyncio.ensure_future(asyncio.to_thread(f.read, STREAM_PIECE))
            while piece := await ahead:
                ahead = asyncio.ensure_future(asyncio.to_thread(f.read, STREAM_PIECE))
                await comm.write({"data": to_serialize(piece)})  # its own frame, no copy
                sent += len(piece)
                self.served_bytes += len(piece)
            await comm.write({"end": sent})
        finally:
            await asyncio.gather(ahead, return_exceptions=True)
            f.close()
        return Status.dont_reply

    async def replicate(
        self,
        digest: str,
        origin: str = "",
        peers: Sequence[str] = (),
        rate: float = 0.0,
    ) -> dict[str, Any]:
        """Make this worker hold a complete, verified replica of manifest ``digest``.

        Blobs come from ``peers`` (workers holding the replica) and the origin store
        (``origin`` or ``omax.store.url``). ``rate`` caps bytes per second (0: no cap).
        Answers the replica's dict plus ``fetched`` (bytes per source), ``present``
        and ``bad_sources``. Concurrent calls for one digest share one fetch.
        """
        job = self.jobs.get(digest)
        if job is None:
            # a drop that is deleting blobs finishes before a fetch looks at what is here
            await asyncio.gather(*self.drops, return_exceptions=True)
            job = self.jobs.get(digest)
        if job is None:
            job = asyncio.ensure_future(self._replicate(digest, origin, tuple(peers), rate))
            self.jobs[digest] = job
            job.add_done_callback(lambda _: self.jobs.pop(digest, None))
        return await asyncio.shield(job)

    async def _replicate(
        self, digest: str, origin: str, peers: tuple[str, ...], rate: float
    ) -> dict[str, Any]:
        assert self.replicas is not None and self.worker is not None
        me = self.worker.address
        try:
            replica, result = await self.replicas.fetch(
                digest,
                origin or self.origin_url,
                [p for p in peers if p != me],
                self._stream_peer,
                progress=self._progress,
                on_bad=lambda bad: self._report_bad(digest, bad),
                rate=rate,
            )
        finally:
            self._fetched.pop(digest, None)
            # a late progress report must not arrive after the final replica report
            await asyncio.gather(*self.pushes, return_exceptions=True)
            await self._push()
        return {**replica.to_dict(), **result.to_dict()}

    async def _stream_peer(self, peer: str, digest: str) -> AsyncGenerator[memoryview, None]:
        """A peer's blob as it arrives: ``omax_blob_stream`` on a pooled comm that
        does not deserialize, so pieces are views of the receive buffers (no copy)."""
        comm = await self.pool.connect(peer)
        try:
            await comm.write({"op": "omax_blob_stream", "digest": digest, "reply": True})
            while True:
                try:  # a peer that stops sending (hung, partitioned) loses its turn
                    msg = await asyncio.wait_for(comm.read(), PEER_IDLE_S)
                except TimeoutError:
                    raise TimeoutError(
                        f"peer {peer} sent nothing of {digest[:19]} for {PEER_IDLE_S:.0f} s"
                    ) from None
                if "data" in msg:
                    for frame in msg["data"].frames:
                        yield memoryview(frame)
                elif "end" in msg:
                    break
                else:
                    raise from_wire(msg if is_wire_error(msg) else str(msg), BlobNotFound)
        except BaseException:
            comm.abort()  # mid-stream: the comm cannot be reused
            raise
        finally:
            self.pool.reuse(peer, comm)

    async def verify_replica(self, digest: str) -> list[str]:
        """Re-hash a replica; bad blobs are deleted and it becomes partial. Return them."""
        assert self.replicas is not None
        bad = await asyncio.to_thread(self.replicas.verify, digest)
        if bad:
            logger.warning("replica %s had %d bad blob(s), dropped them", digest[:19], len(bad))
            await self._push()
        return bad

    async def drop_replica(self, digest: str) -> int:
        """Remove a replica and the blobs only it needed; return the bytes freed.

        Refused (0 freed) while any fetch runs here: a fetch that found a shared blob
        present counts on it, and the drop could delete it under the fetch. Eviction
        asks again on its next round."""
        assert self.replicas is not None
        if self.jobs:
            return 0
        drop = asyncio.ensure_future(asyncio.to_thread(self.replicas.drop, digest))
        self.drops.add(drop)
        try:
            freed = await drop
        finally:
            self.drops.discard(drop)
        await self._push()
        return freed

    def damaged(self, digest: str, err: DigestMismatch) -> DigestMismatch:
        """A load of ``digest`` read a blob that did not verify (called from the
        loading thread). Re-hash the whole replica, quarantine every bad blob, make it
        partial and report it; return the error the load ends with, naming this worker
        (the scheduler fetches the replica again and retries the load)."""
        assert self.replicas is not None and self.worker is not None
        bad = self.replicas.verify(digest)
        where = self.worker.address
        logger.warning(
            "replica %s on %s failed verification at load (%s): %d blob(s) quarantined, "
            "the replica is partial until fetched again",
            digest[:19],
            where,
            err,
            len(bad),
        )
        self.worker.loop.add_callback(self._push)
        first = bad[0] if bad else "?"
        return DigestMismatch(
            f"replica {digest} on {where} is damaged ({len(bad)} blob(s) quarantined, "
            f"e.g. {first}): {err}"
        )

    def _progress(self, digest: str, done: int, total: int) -> None:
        self.fetched_bytes += max(0, done - self._fetched.get(digest, done))
        self._fetched[digest] = done
        self._spawn(self._push_progress(digest, done, total))

    def _report_bad(self, digest: str, bad: BadSource) -> None:
        self._spawn(self._push_bad(digest, bad))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.pushes.add(task)
        task.add_done_callback(self.pushes.discard)

    async def _push_bad(self, digest: str, bad: BadSource) -> None:
        try:
            await self.worker.scheduler.omax_bad_source(  # type: ignore[union-attr]
                worker=self.worker.address,  # type: ignore[union-attr]
                digest=digest,
                **bad.to_dict(),
            )
        except Exception as e:
            logger.warning("could not report bad source %s: %s", bad.source, e)

    async def _push_progress(self, digest: str, done: int, total: int) -> None:
        try:
            await self.worker.scheduler.omax_progress(  # type: ignore[union-attr]
                worker=self.worker.address,  # type: ignore[union-attr]
                digest=digest,
                done=done,
                total=total,
            )
        except Exception:  # progress is best effort
            pass

    async def _push(self) -> None:
        try:
            await self.worker.scheduler.omax_report(  # type: ignore[union-attr]
                worker=self.worker.address,  # type: ignore[union-attr]
                **self.state(),
            )
        except Exception as e:
            logger.warning("could not report replicas to the scheduler: %s", e)


def live_slots(slots: tuple[Slot, ...]) -> tuple[Slot, ...]:
    """``slots`` with free memory and utilisation as the devices report them now
    (GPUs asked again; a CPU slot's numbers are its configured ones)."""
    if not any(s.device == "cuda" for s in slots):
        return slots
    now = {s.id: s for s in detect_slots("cuda", 0)}
    return tuple(now.get(s.id, s) for s in slots)


def plugin_of(worker: Worker) -> OmaxWorkerPlugin:
    """The omax plugin of ``worker``; raises if the worker was started without it."""
    plugin = worker.plugins.get(PLUGIN_NAME)
    if not isinstance(plugin, OmaxWorkerPlugin):
        raise RuntimeError("this worker was started without --preload omax.plugins.worker")
    return plugin


async def dask_setup(worker: Worker) -> None:
    """Preload entry point: ``dask worker ADDR --preload omax.plugins.worker``."""
    from omax.logs import setup_plugin_logging

    setup_plugin_logging()
    _leave_ctrl_c_to_the_nanny(worker)
    await worker.plugin_add(OmaxWorkerPlugin(), name=PLUGIN_NAME)


def _answer_calls_to_gone_actors(worker: Worker) -> None:
    """A call to an actor this worker no longer holds (a model unloaded while a front
    door still had its handle) is answered with the KeyError such a call gets, which
    the front door turns into a retry elsewhere. Dask's handler raises it instead, and
    the worker logs that at ERROR with a traceback: noise in an operator's log for a
    request that succeeds."""
    execute = worker.actor_execute

    async def actor_execute(
        actor: Any = None, function: Any = None, args: Any = (), kwargs: Any = None
    ) -> dict[str, Any]:
        if actor not in worker.state.actors:
            gone = KeyError(f"actor {actor} is not on this worker")
            return {"status": "error", "exception": to_serialize(gone)}
        return await execute(actor=actor, function=function, args=args, kwargs=kwargs)

    worker.handlers["actor_execute"] = actor_execute


def _leave_ctrl_c_to_the_nanny(worker: Worker) -> None:
    """A terminal's Ctrl-C goes to every process of its group: the worker process a
    nanny started died of it with a KeyboardInterrupt traceback while its nanny (in
    ``omax serve`` or ``dask worker``) was closing it cleanly. Under a nanny the worker
    leaves SIGINT to the nanny; a worker without one still stops on it."""
    if worker.nanny and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
