"""A blob upload (``POST /api/blobs/<digest>``) stored as it arrives, in one pass.

The event loop receives the body; a thread hashes and writes it into the blob store
(``BlobStore.put_stream``: verified against the digest, fsynced, then named). Received
pieces travel to that thread in batches of ``BATCH`` bytes, so the loop hands work over
a few dozen times for a model file rather than once per network read, and no temporary
copy of the file is written and read back.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Iterator

from omax.sharding.blobs import BlobStore

BATCH = 4 << 20
QUEUED = 4  # batches received ahead of the writer: what an upload holds in memory


class _Aborted(Exception):
    """The upload stopped before its end (the client went away, the loop was cancelled)."""


class _Feed:
    """Batches from the event loop to the writer's thread, at most ``QUEUED`` ahead."""

    def __init__(self) -> None:
        self.queue: queue.Queue[bytes | None | _Aborted] = queue.Queue(maxsize=QUEUED)
        self.finished = threading.Event()  # the writer stopped: nothing takes from it

    def pieces(self) -> Iterator[bytes]:
        while (item := self.queue.get()) is not None:
            if isinstance(item, _Aborted):
                raise item
            yield item

    def offer(self, item: bytes | None | _Aborted) -> None:
        """Hand ``item`` over (blocking), unless the writer has stopped."""
        while not self.finished.is_set():
            try:
                self.queue.put(item, timeout=0.05)
                return
            except queue.Full:
                continue


def _start_writer(blobs: BlobStore, digest: str, feed: _Feed) -> asyncio.Future[tuple[str, bool]]:
    """``put_stream`` of the feed's pieces on a thread of its own (not the loop's
    executor: uploads waiting on their writers there could take every thread and leave
    none to feed them); its result, or error, as a future of the running loop."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[tuple[str, bool]] = loop.create_future()

    def settle(result: tuple[str, bool] | None, error: BaseException | None) -> None:
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)  # type: ignore[arg-type]

    def write() -> None:
        result, error = None, None
        try:
            result = blobs.put_stream(feed.pieces(), digest)
        except BaseException as err:
            error = err
        feed.finished.set()
        loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=write, name="omax-upload", daemon=True).start()
    return done


async def store_upload(blobs: BlobStore, digest: str, chunks: AsyncIterator[bytes]) -> bool:
    """Store the body ``chunks`` as blob ``digest``; return whether it was new.

    A body that does not hash to ``digest`` raises DigestMismatch, and an upload cut
    short leaves nothing behind: ``put_stream`` removes its partial file either way."""
    feed = _Feed()
    writer = _start_writer(blobs, digest, feed)
    try:
        batch: list[bytes] = []
        size = 0
        async for chunk in chunks:
            batch.append(chunk)
            size += len(chunk)
            if size >= BATCH:
                await asyncio.to_thread(feed.offer, b"".join(batch))
                batch, size = [], 0
                if writer.done():  # it failed: its error is the answer
                    break
        if batch:
            await asyncio.to_thread(feed.offer, b"".join(batch))
        await asyncio.to_thread(feed.offer, None)
    except BaseException:
        feed.offer(_Aborted())  # never blocks long: the writer takes it or has stopped
        await asyncio.shield(asyncio.wait([writer]))
        writer.exception()  # retrieved: the error raised is the upload's own
        raise
    _, created = await writer
    return created
