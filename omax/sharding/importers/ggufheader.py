"""A GGUF file's header: its metadata and tensor table, read from a memory map.

Nothing here touches tensor data; ``GGUFFile.tensor_bytes`` hands out zero-copy views.
Numeric metadata arrays (token scores, token types) are read as numpy arrays in one
step. String arrays (the vocabulary, the merges) are walked once with ``struct``: each
string's length prefix says where the next one starts, so the walk is sequential by
format; it is the only per-element loop, and it only slices bytes (``gguf.GGUFReader``
builds numpy views per element instead, which made large vocabularies slow to open).

Metadata values are ``int``, ``float``, ``bool``, ``str``, numpy arrays for numeric
arrays, and lists for arrays of strings or of arrays.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Any

import numpy as np

from omax.errors import ImportFailed

MAGIC = b"GGUF"
VERSIONS = (2, 3)  # v1 counted in 32 bits; llama.cpp stopped writing it in 2023
DEFAULT_ALIGNMENT = 32

STRING, ARRAY = 8, 9
SCALAR_FORMATS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
ARRAY_DTYPES: dict[int, np.dtype] = {
    0: np.dtype("<u1"),
    1: np.dtype("<i1"),
    2: np.dtype("<u2"),
    3: np.dtype("<i2"),
    4: np.dtype("<u4"),
    5: np.dtype("<i4"),
    6: np.dtype("<f4"),
    7: np.dtype("?"),
    10: np.dtype("<u8"),
    11: np.dtype("<i8"),
    12: np.dtype("<f8"),
}
_U64 = struct.Struct("<Q")


class _Corrupt(Exception):
    """The header does not parse; the message says where."""


@dataclass(frozen=True)
class TensorInfo:
    """One tensor table entry. ``dims`` are in ggml order (fastest-moving first);
    ``offset`` is absolute in the file."""

    name: str
    type_id: int
    dims: tuple[int, ...]
    offset: int

    @property
    def shape(self) -> tuple[int, ...]:
        """The row-major (numpy, torch) shape."""
        return tuple(reversed(self.dims))

    @property
    def n_elements(self) -> int:
        return prod(self.dims)


class GGUFFile:
    """An open GGUF file: ``metadata`` in file order, ``tensors`` in table order."""

    def __init__(
        self,
        path: Path,
        buffer: mmap.mmap,
        metadata: dict[str, Any],
        tensors: tuple[TensorInfo, ...],
    ) -> None:
        self.path = path
        self.size = len(buffer)
        self.metadata = metadata
        self.tensors = tensors
        self._buffer = buffer

    def tensor_bytes(self, info: TensorInfo, n_bytes: int) -> np.ndarray:
        """A read-only ``uint8`` view of the tensor's data (the caller checked bounds)."""
        return np.frombuffer(self._buffer, dtype=np.uint8, count=n_bytes, offset=info.offset)


def open_gguf(path: Path) -> GGUFFile:
    """Parse the header of the GGUF file at ``path``; ImportFailed names what is wrong."""
    try:
        with open(path, "rb") as f:
            buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as err:  # ValueError: an empty file cannot be mapped
        raise ImportFailed(f"{path}: cannot read: {err}") from err
    try:
        metadata, tensors = _Parser(buffer).header()
    except _Corrupt as err:
        raise ImportFailed(f"{path}: corrupt or truncated GGUF: {err}") from None
    return GGUFFile(path, buffer, metadata, tensors)


class _Parser:
    """A cursor over the mapped file; every read checks that it stays inside."""

    def __init__(self, buffer: mmap.mmap) -> None:
        self.buf = buffer
        self.pos = 0

    def header(self) -> tuple[dict[str, Any], tuple[TensorInfo, ...]]:
        if self.buf[:4] != MAGIC:
            raise _Corrupt("bad magic")
        self.pos = 4
        version = self.scalar("<I")
        if version not in VERSIONS:
            if version & 0xFFFF == 0:
                raise _Corrupt("big-endian GGUF files are not supported")
            raise _Corrupt(f"unsupported GGUF version {version}")
        n_tensors, n_kv = self.scalar("<Q"), self.scalar("<Q")
        self.expect_count(n_kv, 13, "metadata entries")
        metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = self.string()
            if key in metadata:
                raise _Corrupt(f"duplicate metadata key {key!r}")
            metadata[key] = self.value(self.scalar("<I"), key)
        alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise _Corrupt(f"general.alignment {alignment!r} is not a power of two")
        self.expect_count(n_tensors, 24, "tensors")
        table = [self.tensor_entry() for _ in range(n_tensors)]
        data_start = -(-self.pos // alignment) * alignment
        names = [t[0] for t in table]
        if len(set(names)) != len(names):
            raise _Corrupt("duplicate tensor names")
        tensors = tuple(
            TensorInfo(name, type_id, dims, data_start + offset)
            for name, type_id, dims, offset in table
        )
        return metadata, tensors

    def expect_count(self, count: int, min_bytes: int, what: str) -> None:
        if count * min_bytes > len(self.buf) - self.pos:
            raise _Corrupt(f"{count} {what} cannot fit in the file")

    def take(self, n: int) -> int:
        start = self.pos
        if n < 0 or start + n > len(self.buf):
            raise _Corrupt(f"read of {n} bytes at offset {start} runs past the end")
        self.pos = start + n
        return start

    def scalar(self, fmt: str) -> Any:
        start = self.take(struct.calcsize(fmt))
        return struct.unpack_from(fmt, self.buf, start)[0]

    def string(self) -> str:
        n = self.scalar("<Q")
        start = self.take(n)
        return self.decode(self.buf[start : start + n], start)

    def decode(self, raw: bytes, at: int) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise _Corrupt(f"string at offset {at} is not UTF-8: {err.reason}") from None

    def value(self, type_id: int, key: str) -> Any:
        if type_id in SCALAR_FORMATS:
            return self.scalar(SCALAR_FORMATS[type_id])
        if type_id == STRING:
            return self.string()
        if type_id == ARRAY:
            item_type, count = self.scalar("<I"), self.scalar("<Q")
            return self.array(item_type, count, key)
        raise _Corrupt(f"{key}: unknown value type {type_id}")

    def array(self, item_type: int, count: int, key: str) -> Any:
        dtype = ARRAY_DTYPES.get(item_type)
        if dtype is not None:
            start = self.take(count * dtype.itemsize)
            return np.frombuffer(self.buf, dtype=dtype, count=count, offset=start).copy()
        self.expect_count(count, 8, f"{key} items")
        if item_type == STRING:
            return self.strings(count)
        return [self.value(item_type, key) for _ in range(count)]

    def strings(self, count: int) -> list[str]:
        """``count`` length-prefixed strings, decoded in one pass over their bytes."""
        buf, pos, end = self.buf, self.pos, len(self.buf)
        unpack = _U64.unpack_from
        raw: list[bytes] = []
        append = raw.append
        for _ in range(count):
            if pos + 8 > end:
                raise _Corrupt(f"string array runs past the end at offset {pos}")
            (n,) = unpack(buf, pos)
            pos += 8 + n
            append(buf[pos - n : pos])
        if pos > end:
            raise _Corrupt(f"string array runs past the end at offset {pos}")
        start, self.pos = self.pos, pos
        try:
            return list(map(bytes.decode, raw))
        except UnicodeDecodeError as err:
            raise _Corrupt(f"string array at offset {start} is not UTF-8: {err.reason}") from None

    def tensor_entry(self) -> tuple[str, int, tuple[int, ...], int]:
        name = self.string()
        n_dims = self.scalar("<I")
        if n_dims > 8:
            raise _Corrupt(f"tensor {name} has {n_dims} dimensions")
        start = self.take(8 * n_dims)
        dims = struct.unpack_from(f"<{n_dims}Q", self.buf, start)
        type_id, offset = self.scalar("<I"), self.scalar("<Q")
        return name, type_id, tuple(dims), offset
