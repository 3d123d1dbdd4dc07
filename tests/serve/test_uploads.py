"""``store_upload``: a blob upload stored in one pass, into a real blob store."""

import asyncio
import hashlib
import os

import pytest

from omax.errors import DigestMismatch
from omax.serve import uploads
from omax.sharding.blobs import BlobStore


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def _pieces(data: bytes, size: int = 65536, fail_at: int | None = None):
    for at in range(0, len(data), size):
        if fail_at is not None and at >= fail_at:
            raise ConnectionResetError("client went away")
        yield data[at : at + size]
        await asyncio.sleep(0)


def _leftovers(blobs: BlobStore) -> list[str]:
    tmp = os.path.join(blobs.root, "blobs", "tmp")
    return os.listdir(tmp) if os.path.isdir(tmp) else []


@pytest.fixture
def blobs(tmp_path):
    return BlobStore(str(tmp_path / "store"))


def test_an_upload_of_many_batches_is_stored_and_verified(blobs):
    data = os.urandom(uploads.BATCH * 3 + 12345)
    digest = _digest(data)
    assert asyncio.run(uploads.store_upload(blobs, digest, _pieces(data))) is True
    assert blobs.get(digest) == data
    # the same bytes again: verified and kept, not new
    assert asyncio.run(uploads.store_upload(blobs, digest, _pieces(data))) is False
    assert _leftovers(blobs) == []


def test_bytes_that_hash_to_another_name_leave_nothing(blobs):
    data = os.urandom(uploads.BATCH + 7)
    wrong = _digest(b"something else")
    with pytest.raises(DigestMismatch):
        asyncio.run(uploads.store_upload(blobs, wrong, _pieces(data)))
    assert not blobs.has(wrong)
    assert _leftovers(blobs) == []


def test_an_upload_cut_short_leaves_nothing(blobs):
    data = os.urandom(uploads.BATCH * 2)
    digest = _digest(data)
    cut = _pieces(data, fail_at=uploads.BATCH + 65536)
    with pytest.raises(ConnectionResetError, match="client went away"):
        asyncio.run(uploads.store_upload(blobs, digest, cut))
    assert not blobs.has(digest)
    assert _leftovers(blobs) == []


def test_an_empty_upload(blobs):
    digest = _digest(b"")
    assert asyncio.run(uploads.store_upload(blobs, digest, _pieces(b""))) is True
    assert blobs.get(digest) == b""


def test_many_uploads_at_once_finish(blobs):
    """More uploads than the event loop's executor has threads: each writer runs on a
    thread of its own, so none starves waiting for its feed."""
    import concurrent.futures

    data = [os.urandom(uploads.BATCH * 2 + i) for i in range(12)]

    async def all_at_once():
        loop = asyncio.get_running_loop()
        loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(max_workers=4))
        return await asyncio.wait_for(
            asyncio.gather(
                *(uploads.store_upload(blobs, _digest(d), _pieces(d, 1 << 20)) for d in data)
            ),
            timeout=120,
        )

    assert asyncio.run(all_at_once()) == [True] * len(data)
    assert all(blobs.get(_digest(d)) == d for d in data)
