"""Tensors as zarr v3 arrays whose chunks are blobs named by a manifest.

``ManifestStore`` is a read-only ``zarr.abc.store.Store``: the root ``zarr.json`` is a
group, ``<tensor>/zarr.json`` is generated from the manifest's ``TensorEntry`` and
``<tensor>/c/<i>/<j>`` resolves to the chunk's blob. So the ordinary zarr API works::

    group = zarr.open_group(store=ManifestStore(blobs, manifest), mode="r")
    group["blk.0.attn_q.weight"][:]

The write side, ``write_tensor``, cuts an array into row chunks along axis 0, encodes
each exactly as zarr would (little-endian C-order bytes of the full chunk shape, edge
chunks padded with zeros, optionally zstd) and stores each chunk as a blob, so identical
chunks are stored once across all models.

Chunk size and compression were chosen by measurement (benchmarks/RESULTS.md):
``CHUNK_BYTES`` rows per chunk; zstd only for float dtypes where it saves space,
raw for GGUF quantised blocks, which do not compress.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import numpy as np
import zarr
from numcodecs import Zstd
from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, Store
from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype

from omax.errors import InvalidRequest, StoreError
from omax.sharding.blobs import BlobStore
from omax.sharding.manifest import Manifest, TensorEntry, canonical_json
from omax.sharding.tensors import RawTensor

# 16 MiB by benchmarks/chunk_bench.py (its numbers are in benchmarks/RESULTS.md): it
# balanced tensor writes and verified reads of whole models best over SmolLM2 and
# MiniLM; 4 MiB came close, 1 MiB paid a per-blob overhead on every read, and 64 MiB
# was slowest on MiniLM. Smaller chunks dedupe and replicate finer, so nothing larger
# is worth it.
CHUNK_BYTES = 16 << 20
ZSTD_LEVEL = 1
# Stored dtypes worth compressing (see benchmarks/RESULTS.md); the rest stay raw.
COMPRESS_REAL_DTYPES = frozenset({"bfloat16"})


def chunk_key(coords: Iterable[int]) -> str:
    return "/".join(["c", *map(str, coords)])


def array_metadata(entry: TensorEntry) -> dict[str, Any]:
    """The zarr v3 ``zarr.json`` of one tensor."""
    codecs: list[dict[str, Any]] = [{"name": "bytes", "configuration": {"endian": "little"}}]
    if entry.codec == "zstd":
        codecs.append({"name": "zstd", "configuration": {"level": ZSTD_LEVEL, "checksum": False}})
    attributes: dict[str, Any] = {"dtype": entry.dtype, "shape": list(entry.shape)}
    if entry.ggml_type:
        attributes["ggml_type"] = entry.ggml_type
    return {
        "zarr_format": 3,
        "node_type": "array",
        "shape": list(entry.stored_shape),
        "data_type": entry.stored_dtype,
        "chunk_grid": {
            "name": "regular",
            "configuration": {"chunk_shape": list(entry.chunk_shape)},
        },
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": 0,
        "codecs": codecs,
        "attributes": attributes,
        "storage_transformers": [],
    }


class ManifestStore(Store):
    """Read-only zarr store over one manifest's blobs. Chunk reads are hash-verified
    unless ``verify=False`` and run in threads, so zarr fetches chunks concurrently."""

    supports_writes = False
    supports_deletes = False
    supports_partial_writes = False
    supports_listing = True

    def __init__(self, blobs: BlobStore, manifest: Manifest, *, verify: bool = True) -> None:
        super().__init__(read_only=True)
        self.blobs = blobs
        self.manifest = manifest
        self.verify = verify
        self._meta: dict[str, bytes] = {
            "zarr.json": canonical_json(
                {
                    "zarr_format": 3,
                    "node_type": "group",
                    "attributes": {"format": manifest.format, "family": manifest.family},
                }
            )
        }
        self._chunks: dict[str, str] = {}
        for t in manifest.tensors:
            self._meta[f"{t.name}/zarr.json"] = canonical_json(array_metadata(t))
            for key, (digest, _) in t.chunks.items():
                self._chunks[f"{t.name}/{key}"] = digest

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ManifestStore)
            and other.blobs.url == self.blobs.url
            and other.manifest == self.manifest
        )

    def __hash__(self) -> int:
        return id(self)

    def with_read_only(self, read_only: bool = False) -> ManifestStore:
        if not read_only:
            raise StoreError("ManifestStore is read-only")
        return self

    def _bytes(self, key: str) -> bytes | None:
        if key in self._meta:
            return self._meta[key]
        digest = self._chunks.get(key)
        if digest is None:
            return None
        return self.blobs.get(digest, verify=self.verify)

    async def get(
        self,
        key: str,
        prototype: BufferPrototype | None = None,
        byte_range: ByteRequest | None = None,
    ) -> Buffer | None:
        prototype = prototype or default_buffer_prototype()
        if key in self._meta:
            data = self._meta[key]
        elif key in self._chunks:
            data = await asyncio.to_thread(self._bytes, key)  # type: ignore[arg-type]
        else:
            return None
        if data is None:
            return None
        return prototype.buffer.from_bytes(_slice(data, byte_range))

    async def get_partial_values(
        self,
        prototype: BufferPrototype,
        key_ranges: Iterable[tuple[str, ByteRequest | None]],
    ) -> list[Buffer | None]:
        return list(await asyncio.gather(*(self.get(k, prototype, r) for k, r in key_ranges)))

    async def exists(self, key: str) -> bool:
        return key in self._meta or key in self._chunks

    async def set(self, key: str, value: Buffer) -> None:
        raise StoreError("ManifestStore is read-only")

    async def delete(self, key: str) -> None:
        raise StoreError("ManifestStore is read-only")

    async def list(self) -> AsyncIterator[str]:
        for key in (*self._meta, *self._chunks):
            yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        for key in (*self._meta, *self._chunks):
            if key.startswith(prefix):
                yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        prefix = prefix.rstrip("/")
        seen: set[str] = set()
        for key in (*self._meta, *self._chunks):
            if prefix:
                if not key.startswith(prefix + "/"):
                    continue
                key = key[len(prefix) + 1 :]
            head = key.split("/", 1)[0]
            if head not in seen:
                seen.add(head)
                yield head


def _slice(data: bytes, byte_range: ByteRequest | None) -> bytes:
    if byte_range is None:
        return data
    if isinstance(byte_range, RangeByteRequest):
        return data[byte_range.start : byte_range.end]
    if isinstance(byte_range, OffsetByteRequest):
        return data[byte_range.offset :]
    return data[len(data) - byte_range.suffix :]


def choose_codec(real_dtype: str, stored: np.ndarray) -> str:
    """``zstd`` where measurement showed it pays (see benchmarks/RESULTS.md), else ``raw``."""
    return "zstd" if real_dtype in COMPRESS_REAL_DTYPES else "raw"


def rows_per_chunk(shape: tuple[int, ...], itemsize: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    if not shape:
        return 1
    row = itemsize * int(np.prod(shape[1:], dtype=np.int64))
    return max(1, min(max(shape[0], 1), chunk_bytes // max(row, 1)))


def write_tensor(
    blobs: BlobStore,
    name: str,
    array: np.ndarray,
    *,
    dtype: str | None = None,
    shape: tuple[int, ...] | None = None,
    ggml_type: str | None = None,
    codec: str | None = None,
    chunk_bytes: int = CHUNK_BYTES,
    on_chunk: Any = None,
) -> TensorEntry:
    """Store ``array`` (exactly the bytes to keep) as chunk blobs; return its entry.

    ``dtype``/``shape`` are the logical tensor when they differ from the stored array
    (``"bfloat16"`` over a uint16 view, ``"quantized"`` over uint8 GGUF blocks).
    ``on_chunk(nbytes, created)`` is called for each chunk, for progress and dedup
    accounting.
    """
    if not name or "/" in name or name.startswith("__") or name in (".", ".."):
        raise InvalidRequest(f"invalid tensor name {name!r}")
    stored = np.asarray(array)
    if stored.dtype.byteorder == ">":
        stored = stored.astype(stored.dtype.newbyteorder("<"))
    if stored.dtype.kind not in "biuf":
        raise InvalidRequest(f"tensor {name}: cannot store dtype {stored.dtype}")
    real = dtype or stored.dtype.name
    codec = codec or choose_codec(real, stored)
    if codec not in ("raw", "zstd"):
        raise InvalidRequest(f"unknown codec {codec!r}")
    rows = rows_per_chunk(stored.shape, stored.dtype.itemsize, chunk_bytes)
    chunk_shape = (rows, *(max(1, s) for s in stored.shape[1:])) if stored.shape else ()
    zstd = Zstd(level=ZSTD_LEVEL) if codec == "zstd" else None
    chunks: dict[str, tuple[str, int]] = {}
    for coords, block in _row_chunks(stored, rows):
        data = memoryview(np.ascontiguousarray(block)).cast("B")  # type: ignore[arg-type]
        if zstd is not None:
            data = memoryview(zstd.encode(data))
        digest, created = blobs.put_stream([data])
        chunks[chunk_key(coords)] = (digest, len(data))
        if on_chunk is not None:
            on_chunk(len(data), created)
    return TensorEntry(
        name=name,
        shape=tuple(int(s) for s in (shape if shape is not None else stored.shape)),
        dtype=real,
        stored_shape=tuple(int(s) for s in stored.shape),
        stored_dtype=stored.dtype.name,
        chunk_shape=tuple(int(c) for c in chunk_shape),
        chunks=chunks,
        nbytes=int(stored.nbytes),
        codec=codec,
        ggml_type=ggml_type,
    )


def _row_chunks(a: np.ndarray, rows: int) -> Iterator[tuple[tuple[int, ...], np.ndarray]]:
    """Full-shape chunks along axis 0; the edge chunk is zero-padded as zarr stores it."""
    if a.ndim == 0:
        yield (), a
        return
    if a.size == 0:
        return
    tail = (0,) * (a.ndim - 1)
    for i, start in enumerate(range(0, a.shape[0], rows)):
        block = a[start : start + rows]
        if block.shape[0] < rows:
            padded = np.zeros((rows, *a.shape[1:]), dtype=a.dtype)
            padded[: block.shape[0]] = block
            block = padded
        yield (i, *tail), block


def open_group(blobs: BlobStore, manifest: Manifest, *, verify: bool = True) -> zarr.Group:
    """The model as a read-only zarr group, one array per tensor."""
    return zarr.open_group(store=ManifestStore(blobs, manifest, verify=verify), mode="r")


def read_tensor(
    blobs: BlobStore, manifest: Manifest, name: str, *, group: zarr.Group | None = None
) -> RawTensor:
    """Read one tensor through zarr as the engine receives it."""
    entry = manifest.tensor(name)
    group = group if group is not None else open_group(blobs, manifest)
    data = np.asarray(group[name][...])  # type: ignore[index]
    return RawTensor(
        name=name, data=data, dtype=entry.dtype, shape=entry.shape, ggml_type=entry.ggml_type
    )


def read_tensors(blobs: BlobStore, manifest: Manifest) -> Iterator[RawTensor]:
    """Every tensor of ``manifest`` in manifest order, as zarr reads it, verified.

    An uncompressed tensor (codec ``raw``: GGUF blocks, fp32, fp16) is read chunk by
    chunk straight into its array (``read_raw``): a chunk blob is exactly zarr's
    encoding of its rows, so this is zarr's result with one copy instead of three
    (a model's cold load spent ~0.3 s of its ~2.5 s in zarr's read path for Gemma 3's
    241 MB). Compressed tensors go through zarr.
    """
    group: zarr.Group | None = None
    for entry in manifest.tensors:
        data = read_raw(blobs, entry)
        if data is None:
            group = group if group is not None else open_group(blobs, manifest)
            yield read_tensor(blobs, manifest, entry.name, group=group)
            continue
        yield RawTensor(
            name=entry.name,
            data=data,
            dtype=entry.dtype,
            shape=entry.shape,
            ggml_type=entry.ggml_type,
        )


def read_raw(blobs: BlobStore, entry: TensorEntry) -> np.ndarray | None:
    """An uncompressed tensor's stored array, its chunks read (and re-hashed) into it;
    None for a tensor only zarr reads: compressed, 0-d or empty, or with chunks zarr
    would fill in (absent) or not cut along rows alone."""
    shape, chunk = entry.stored_shape, entry.chunk_shape
    if entry.codec != "raw" or not shape or 0 in shape or tuple(chunk[1:]) != tuple(shape[1:]):
        return None
    rows = chunk[0]
    tail = (0,) * (len(shape) - 1)
    keys = [chunk_key((i, *tail)) for i in range(-(-shape[0] // rows))]
    if len(entry.chunks) != len(keys) or any(k not in entry.chunks for k in keys):
        return None
    out = np.empty(shape, dtype=np.dtype(entry.stored_dtype).newbyteorder("<"))
    flat = memoryview(out.reshape(-1).view(np.uint8))  # type: ignore[arg-type]
    step = out.nbytes // shape[0] * rows
    for i, key in enumerate(keys):
        digest, size = entry.chunks[key]
        part = flat[i * step : (i + 1) * step]
        if size == len(part):
            blobs.read_into(digest, part)
        else:  # the edge chunk, stored padded to whole chunk rows
            part[:] = memoryview(blobs.get(digest))[: len(part)]
    return out
