import asyncio
import uuid
from pathlib import Path

import numpy as np
import pytest
import zarr

from omax.errors import DigestMismatch
from omax.sharding.blobs import BlobStore
from omax.sharding.manifest import Manifest
from omax.sharding.zarrstore import (
    ManifestStore,
    open_group,
    read_raw,
    read_tensor,
    read_tensors,
    write_tensor,
)


@pytest.fixture
def blobs():
    return BlobStore(f"memory://zarr-{uuid.uuid4().hex}")


def test_roundtrip_dtypes_and_edges(blobs):
    rng = np.random.default_rng(0)
    arrays = {
        "f32": rng.standard_normal((1001, 37)).astype(np.float32),
        "f16": rng.standard_normal((7, 5, 3)).astype(np.float16),
        "i64": np.arange(10, dtype=np.int64),
        "scalar": np.array(3.5, dtype=np.float32),
    }
    entries = [write_tensor(blobs, k, v, chunk_bytes=4096) for k, v in arrays.items()]
    bf = rng.integers(0, 2**16, (33, 8), dtype=np.uint16)
    entries.append(write_tensor(blobs, "bf16", bf, dtype="bfloat16", chunk_bytes=64))
    m = Manifest(format="safetensors", family="t", config={}, tensors=tuple(entries))
    assert m.tensor("f32").chunk_grid == (38, 1)
    assert m.tensor("bf16").codec == "zstd"
    group = open_group(blobs, m)
    for name, arr in arrays.items():
        assert np.array_equal(group[name][...], arr)
        raw = read_tensor(blobs, m, name)
        assert raw.data.dtype == arr.dtype and raw.shape == arr.shape
    raw = read_tensor(blobs, m, "bf16")
    assert raw.dtype == "bfloat16" and raw.data.dtype == np.uint16
    assert np.array_equal(raw.data, bf)
    assert group["bf16"].attrs["dtype"] == "bfloat16"
    assert np.array_equal(group["f32"][500:502, 3], arrays["f32"][500:502, 3])


def test_async_api(blobs):
    a = np.arange(1000, dtype=np.float32).reshape(100, 10)
    m = Manifest(
        format="safetensors",
        family="t",
        config={},
        tensors=(write_tensor(blobs, "a", a, chunk_bytes=400),),
    )

    async def read():
        g = await zarr.api.asynchronous.open_group(store=ManifestStore(blobs, m), mode="r")
        arr = await g.getitem("a")
        return await arr.getitem(slice(None))

    assert np.array_equal(asyncio.run(read()), a)


def test_identical_chunks_stored_once(blobs):
    a = np.zeros((64, 256), dtype=np.float32)  # 16 identical 4 KiB chunks
    e1 = write_tensor(blobs, "a", a, chunk_bytes=4096)
    e2 = write_tensor(blobs, "b", a, chunk_bytes=4096)
    assert len(e1.chunks) == 16
    assert len({d for d, _ in (*e1.chunks.values(), *e2.chunks.values())}) == 1
    assert len(list(blobs.iter_digests())) == 1


def test_store_is_read_only(blobs):
    m = Manifest(format="safetensors", family="t", config={}, tensors=())
    store = ManifestStore(blobs, m)
    assert store.read_only
    with pytest.raises(Exception):  # noqa: B017  (zarr or omax read-only error)
        zarr.open_group(store=store, mode="w")


def test_read_tensors_reads_raw_chunks_as_zarr_does(blobs):
    """Uncompressed tensors are read chunk by chunk straight into their arrays
    (``read_raw``); the result is zarr's, edge chunks (stored padded) included."""
    rng = np.random.default_rng(1)
    arrays = {
        "f32": rng.standard_normal((1001, 37)).astype(np.float32),  # 38 chunks, a short edge
        "u8": rng.integers(0, 256, (64, 3, 18), dtype=np.uint8),  # rows of 3-D blocks
        "one": np.arange(5, dtype=np.int64),
        "scalar": np.array(2.5, dtype=np.float32),  # 0-d: through zarr
    }
    entries = [write_tensor(blobs, k, v, chunk_bytes=1024) for k, v in arrays.items()]
    entries.append(write_tensor(blobs, "bf16", arrays["u8"].view(np.uint16), dtype="bfloat16"))
    m = Manifest(format="gguf", family="t", config={}, tensors=tuple(entries))
    assert read_raw(blobs, m.tensor("f32")) is not None
    assert read_raw(blobs, m.tensor("scalar")) is None and read_raw(blobs, m.tensor("bf16")) is None
    got = {t.name: t.data for t in read_tensors(blobs, m)}
    group = open_group(blobs, m)
    for name in [*arrays, "bf16"]:
        want = np.asarray(group[name][...])
        assert got[name].dtype == want.dtype and np.array_equal(got[name], want), name


def test_read_tensors_refuses_a_damaged_raw_chunk(tmp_path):
    blobs = BlobStore(str(tmp_path))
    a = np.arange(4096, dtype=np.float32).reshape(64, 64)
    entry = write_tensor(blobs, "a", a, chunk_bytes=4096)
    m = Manifest(format="gguf", family="t", config={}, tensors=(entry,))
    digest, _ = entry.chunks["c/1/0"]
    path = blobs.path(digest)
    good = Path(path).read_bytes()
    with open(path, "r+b") as f:
        f.seek(100)
        f.write(bytes([good[100] ^ 1]))
    with pytest.raises(DigestMismatch):
        list(read_tensors(blobs, m))
    with open(path, "wb") as f:  # its bytes, and one more
        f.write(good + b"\x00")
    with pytest.raises(DigestMismatch, match="not the 4096 bytes"):
        list(read_tensors(blobs, m))
    with open(path, "wb") as f:
        f.write(good)
    (got,) = read_tensors(blobs, m)
    assert np.array_equal(got.data, a)
