"""Copying one manifest's blobs into a local store, from peers and the origin.

Two layers:

- ``plan_sources`` is the policy, a pure function of plain data: for every blob the
  local store lacks, the sources to try in order. Blobs are spread over the peers
  that hold them so each serves about the same number of bytes (largest blob first
  to the least loaded peer); the other peers follow, and the origin store comes last.
  A (blob, source) pair that already delivered bad bytes is never planned again.
- ``fetch_blobs`` is the plumbing: an asyncio loop with at most ``concurrency`` blobs
  in flight and at most ``per_peer`` of them on any one peer. Peer bytes arrive as a
  stream of pieces through a ``PeerStream`` callable (one Dask comm per blob in the
  worker plugin, no round trip per piece); origin bytes are read in a thread. Each
  blob is hashed and written by ``BlobStore.put_stream(..., expected_digest=...)`` in
  a thread *while* its next pieces arrive (at most ``DEPTH`` pieces buffered), so it
  lands under its name only after it verified; bytes that do not verify are fetched
  again from the next source and the bad source is reported through ``on_bad``.

Resuming is cheap: a blob already in the local store verified when it was written
(and reached the disk before its name did), so a fetch after a crash or restart skips
it once a stat shows its size; one of another size is quarantined and fetched again.
Damage that keeps the size is caught where bytes are read (every read re-hashes) and
repaired by quarantining the blob and fetching again. ``fetch_blobs`` never marks
anything complete; the caller writes its completion marker after it returns.

Errors: ``StoreError`` when some blob could be fetched from no source (the message
names it and what each source answered). Everything else is caught per source.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import time
from collections.abc import AsyncGenerator, Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from omax.errors import BlobNotFound, DigestMismatch, StoreError
from omax.sharding.blobs import BlobStore

logger = logging.getLogger(__name__)

ORIGIN = "origin"
PIECE = 16 << 20  # bytes per origin read
DEPTH = 8  # pieces of one blob received but not yet hashed and written

Buffer = bytes | memoryview
# (peer, digest) -> the blob's bytes as they arrive, piece by piece (unverified)
PeerStream = Callable[[str, str], AsyncGenerator[Buffer, None]]


@dataclass(frozen=True)
class BadSource:
    """A source that delivered bytes that do not hash to the blob's name."""

    source: str
    blob: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FetchResult:
    """What one ``fetch_blobs`` call did: bytes per source, bytes skipped, bad sources."""

    total: int = 0  # bytes of every distinct blob the manifest needs
    present: int = 0  # of those, bytes already in the local store at the start
    fetched: dict[str, int] = field(default_factory=dict)  # source -> verified bytes
    bad: list[BadSource] = field(default_factory=list)

    @property
    def fetched_bytes(self) -> int:
        return sum(self.fetched.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "present": self.present,
            "fetched": dict(self.fetched),
            "fetched_bytes": self.fetched_bytes,
            "bad_sources": [b.to_dict() for b in self.bad],
        }


def plan_sources(
    sizes: Mapping[str, int],
    present: Collection[str],
    peers: Sequence[str],
    bad: Collection[tuple[str, str]] = (),
    origin: bool = True,
) -> dict[str, tuple[str, ...]]:
    """For each blob of ``sizes`` not in ``present``: the sources to try, in order.

    ``peers`` hold every blob (complete replicas); ``bad`` holds (blob, source) pairs
    never to try again. The result is ordered largest blob first, the order in which
    to start fetches so the last one to finish is small.
    """
    rank = {p: i for i, p in enumerate(peers)}
    load = dict.fromkeys(peers, 0)
    bad_set = set(bad)
    missing = sorted(((b, s) for b, s in sizes.items() if b not in present), key=_largest)
    out: dict[str, tuple[str, ...]] = {}
    for blob, size in missing:
        ok = sorted((p for p in rank if (blob, p) not in bad_set), key=lambda p: (load[p], rank[p]))
        if ok:
            load[ok[0]] += size
        tail = (ORIGIN,) if origin and (blob, ORIGIN) not in bad_set else ()
        out[blob] = (*ok, *tail)
    return out


def _largest(item: tuple[str, int]) -> tuple[int, str]:
    return (-item[1], item[0])


class _Rate:
    """A byte-rate limit shared by every fetch of one call (0 = unlimited)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.next = time.monotonic()

    async def take(self, n: int) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        start = max(now, self.next)
        self.next = start + n / self.rate
        if start > now:
            await asyncio.sleep(start - now)


async def fetch_blobs(
    store: BlobStore,
    sizes: Mapping[str, int],
    peers: Sequence[str],
    stream_peer: PeerStream | None,
    origin: BlobStore | None,
    *,
    concurrency: int = 8,
    per_peer: int = 2,
    rate: float = 0.0,
    on_progress: Callable[[int, int], None] | None = None,
    on_bad: Callable[[BadSource], None] | None = None,
) -> FetchResult:
    """Make ``store`` hold every blob of ``sizes``; return what moved from where.

    ``on_progress(done, total)`` runs on the event loop after each blob verified;
    ``on_bad`` after a source delivered bytes that did not verify.
    """
    present = await asyncio.to_thread(lambda: {b for b, n in sizes.items() if store.intact(b, n)})
    result = FetchResult(
        total=sum(sizes.values()), present=sum(s for b, s in sizes.items() if b in present)
    )
    if on_progress is not None:
        on_progress(result.present, result.total)
    plan = plan_sources(sizes, present, peers if stream_peer else (), (), origin is not None)
    run = _Fetch(
        store,
        sizes,
        plan,
        stream_peer,
        origin,
        result,
        peer_slots={p: asyncio.Semaphore(per_peer) for p in peers},
        limit=_Rate(rate),
        on_progress=on_progress,
        on_bad=on_bad,
    )
    todo: asyncio.Queue[str] = asyncio.Queue()
    for blob in plan:
        todo.put_nowait(blob)

    async def worker() -> None:
        while not todo.empty():
            await run.one(todo.get_nowait())

    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(plan))))))
    if run.failed:
        blob, errors = next(iter(run.failed.items()))
        raise StoreError(
            f"{len(run.failed)} blob(s) could not be fetched from any source; "
            f"{blob}: {'; '.join(errors) or 'no source holds it'}"
        )
    return result


@dataclass
class _Fetch:
    """One ``fetch_blobs`` call: what to fetch from where, and what came of it so far.

    Its blob fetches run concurrently on one event loop and share this state."""

    store: BlobStore
    sizes: Mapping[str, int]
    plan: dict[str, tuple[str, ...]]
    stream_peer: PeerStream | None
    origin: BlobStore | None
    result: FetchResult
    peer_slots: dict[str, asyncio.Semaphore]  # at most ``per_peer`` blobs from each peer
    limit: _Rate
    on_progress: Callable[[int, int], None] | None
    on_bad: Callable[[BadSource], None] | None
    bad: set[tuple[str, str]] = field(default_factory=set)  # (blob, source) not to retry
    failed: dict[str, list[str]] = field(default_factory=dict)  # blob -> what sources said
    done: int = field(init=False)  # bytes the store holds, verified

    def __post_init__(self) -> None:
        self.done = self.result.present

    async def one(self, blob: str) -> None:
        """Fetch ``blob`` from its planned sources in turn until one delivers it."""
        errors = []
        for source in self.plan[blob]:
            if (blob, source) in self.bad:
                continue
            try:
                await self._copy(source, blob)
            except DigestMismatch as err:
                self._bad_source(source, blob, err)
                errors.append(f"{source}: {err}")
                continue
            except Exception as err:  # a peer that left or lacks it, a store error: next source
                logger.debug("blob %s from %s failed: %r", blob[:19], source, err)
                errors.append(f"{source}: {err!r}")
                continue
            self.result.fetched[source] = self.result.fetched.get(source, 0) + self.sizes[blob]
            self.done += self.sizes[blob]
            if self.on_progress is not None:
                self.on_progress(self.done, self.result.total)
            return
        self.failed[blob] = errors

    async def _copy(self, source: str, blob: str) -> None:
        if source == ORIGIN:
            assert self.origin is not None
            await self.limit.take(self.sizes[blob])
            await asyncio.to_thread(_copy_blob, self.origin, self.store, blob)
        else:
            assert self.stream_peer is not None
            async with self.peer_slots[source]:
                pieces = self.stream_peer(source, blob)
                await _store_stream(self.store, pieces, blob, self.sizes[blob], self.limit)

    def _bad_source(self, source: str, blob: str, err: DigestMismatch) -> None:
        self.bad.add((blob, source))
        report = BadSource(source, blob, str(err))
        self.result.bad.append(report)
        logger.warning("blob %s from %s did not verify: %s", blob[:19], source, err)
        if self.on_bad is not None:
            self.on_bad(report)


async def fetch_one(
    store: BlobStore,
    digest: str,
    peers: Sequence[str],
    stream_peer: PeerStream | None,
    origin: BlobStore | None,
) -> bytes:
    """The verified bytes of one blob of unknown size (a manifest), stored locally too.

    A local copy that does not verify is quarantined and fetched again."""
    try:
        return await asyncio.to_thread(store.get, digest)
    except BlobNotFound:
        pass
    except DigestMismatch as err:
        await asyncio.to_thread(store.quarantine, digest, str(err))
    errors = []
    for source in [*(peers if stream_peer else ()), *([ORIGIN] if origin else [])]:
        try:
            if source == ORIGIN:
                assert origin is not None
                data = await asyncio.to_thread(origin.get, digest, False)
            else:
                assert stream_peer is not None
                async with contextlib.aclosing(stream_peer(source, digest)) as pieces:
                    data = b"".join([p async for p in pieces])
            await asyncio.to_thread(store.put_stream, [data], digest)
            return data
        except Exception as err:
            errors.append(f"{source}: {err!r}")
    raise StoreError(f"blob {digest} could not be fetched: {'; '.join(errors) or 'no source'}")


class _Abort(Exception):
    """Raised inside the writer thread when the stream feeding it failed."""


async def _store_stream(
    store: BlobStore, pieces: AsyncGenerator[Buffer, None], blob: str, size: int, limit: _Rate
) -> None:
    """Write a peer's stream of ``blob`` into ``store``, hashing in a thread as it lands.

    The event loop keeps receiving while the thread hashes and writes; at most
    ``DEPTH`` pieces wait in between. A stream that fails, sends more or fewer than
    ``size`` bytes, or hashes to another name leaves nothing behind.
    """
    loop = asyncio.get_running_loop()
    inbox: queue.SimpleQueue[Buffer | None | _Abort] = queue.SimpleQueue()
    room = asyncio.Semaphore(DEPTH)

    def chunks() -> Iterator[Buffer]:
        while True:
            item = inbox.get()
            if item is None:
                return
            if isinstance(item, _Abort):
                raise item
            yield item
            loop.call_soon_threadsafe(room.release)

    writer = asyncio.ensure_future(asyncio.to_thread(store.put_stream, chunks(), blob))

    def unblock(_: object) -> None:  # a writer that fails early must not leave us waiting
        for _ in range(DEPTH):
            room.release()

    writer.add_done_callback(unblock)
    got = 0
    try:
        async with contextlib.aclosing(pieces):
            async for piece in pieces:
                got += len(piece)
                if got > size:
                    raise DigestMismatch(f"peer sent more than the {size} bytes of {blob}")
                await limit.take(len(piece))
                await room.acquire()
                if writer.done():
                    break
                inbox.put(piece)
        if not writer.done() and got != size:
            raise DigestMismatch(f"peer sent {got} of the {size} bytes of {blob}")
    except BaseException:
        inbox.put(_Abort())
        await asyncio.gather(writer, return_exceptions=True)  # the thread removes its temp file
        raise
    inbox.put(None)
    await writer


def _copy_blob(origin: BlobStore, store: BlobStore, blob: str) -> None:
    with origin.open(blob) as src:
        store.put_stream(iter(lambda: src.read(PIECE), b""), blob)
