"""Content-addressed blobs over any fsspec filesystem.

A blob is immutable bytes named ``sha256:<64 hex>`` of its content, stored at
``<root>/blobs/sha256/<hex[:2]>/<hex>``. Writes go to a temporary name under
``<root>/blobs/tmp/`` and are renamed into place only after the hash has been checked,
so a reader never sees a partial or wrong blob under a digest name (on object stores
the rename is a server-side copy whose destination appears whole). Reads re-hash by
default: bytes are verified whenever they cross a disk or process boundary.

Errors: ``InvalidRequest`` for a malformed digest, ``BlobNotFound``, ``DigestMismatch``,
and ``StoreError`` for any failure of the underlying filesystem.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import fsspec
from fsspec.core import url_to_fs

from omax.errors import BlobNotFound, DigestMismatch, InvalidRequest, StoreError

DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
COPY_BLOCK = 8 << 20


def check_digest(digest: str) -> str:
    """Return ``digest`` if it is ``sha256:<64 lowercase hex>``; raise InvalidRequest otherwise."""
    if not isinstance(digest, str) or not DIGEST_RE.match(digest):
        raise InvalidRequest(f"invalid digest {digest!r}: expected sha256:<64 hex>")
    return digest


def digest_bytes(data: bytes | memoryview) -> str:
    """Return the ``sha256:<hex>`` name of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def open_fs(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return ``(filesystem, root path)`` for a local path or fsspec URL."""
    if "://" not in url:
        url = str(Path(url).expanduser().resolve())
    try:
        fs, root = url_to_fs(url)
    except Exception as err:  # fsspec raises many types for a bad URL or missing backend
        raise StoreError(f"cannot open store {url!r}: {err}") from err
    return fs, root.rstrip("/")


class BlobStore:
    """Blobs under ``url`` (local path, ``file://``, ``memory://``, ``s3://``, ...).

    Thread-safe: every write lands under a unique temporary name, and the rename
    into place is idempotent because equal names mean equal bytes.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.fs, self.root = open_fs(url)
        self._local = "file" in _protocols(self.fs)

    def __repr__(self) -> str:
        return f"BlobStore({self.url!r})"

    def path(self, digest: str) -> str:
        """The filesystem path of ``digest`` (whether or not it exists)."""
        hexd = check_digest(digest)[7:]
        return f"{self.root}/blobs/sha256/{hexd[:2]}/{hexd}"

    def has(self, digest: str) -> bool:
        return self._call(self.fs.exists, self.path(digest))

    def size(self, digest: str) -> int:
        try:
            return int(self.fs.size(self.path(digest)))
        except FileNotFoundError:
            raise BlobNotFound(f"blob {digest} not found") from None
        except OSError as err:
            raise StoreError(f"cannot stat blob {digest}: {err}") from err

    def put_bytes(self, data: bytes | memoryview) -> str:
        """Store ``data``; return its digest. Storing existing bytes again is a no-op."""
        digest, _ = self.put_stream([data])
        return digest

    def put_file(self, path: str | Path, expected_digest: str | None = None) -> tuple[str, bool]:
        """Store a local file's bytes; return ``(digest, created)``."""
        with open(path, "rb") as f:
            return self.put_stream(iter(lambda: f.read(COPY_BLOCK), b""), expected_digest)

    def put_stream(
        self, chunks: Iterable[bytes | memoryview], expected_digest: str | None = None
    ) -> tuple[str, bool]:
        """Store the concatenation of ``chunks``; return ``(digest, created)``.

        With ``expected_digest``, raise DigestMismatch (leaving nothing behind) when the
        bytes hash to another name. ``created`` is False when the blob already existed
        (deduplicated); nothing is written then.
        """
        if expected_digest is not None:
            check_digest(expected_digest)
            if self.has(expected_digest):
                digest = _hash_only(chunks)
                _check_match(digest, expected_digest)
                return digest, False
        tmp = f"{self.root}/blobs/tmp/{uuid.uuid4().hex}"
        h = hashlib.sha256()
        try:
            self._makedirs(f"{self.root}/blobs/tmp")
            with self.fs.open(tmp, "wb") as f:
                for chunk in chunks:
                    h.update(chunk)
                    f.write(chunk)
            digest = "sha256:" + h.hexdigest()
            if expected_digest is not None:
                _check_match(digest, expected_digest)
            final = self.path(digest)
            if self.fs.exists(final):
                self._rm_quiet(tmp)
                return digest, False
            self._makedirs(final.rsplit("/", 1)[0])
            self.fs.mv(tmp, final)
            return digest, True
        except BaseException as err:
            self._rm_quiet(tmp)
            if isinstance(err, OSError):
                raise StoreError(f"cannot write blob to {self.url}: {err}") from err
            raise

    def get(self, digest: str, verify: bool = True) -> bytes:
        """Return the blob's bytes, re-hashed against its name unless ``verify`` is False."""
        try:
            data = self.fs.cat_file(self.path(digest))
        except FileNotFoundError:
            raise BlobNotFound(f"blob {digest} not found") from None
        except OSError as err:
            raise StoreError(f"cannot read blob {digest}: {err}") from err
        if verify:
            _check_match(digest_bytes(data), digest, what="stored blob")
        return data

    def open(self, digest: str) -> IO[bytes]:
        """A binary file object over the blob (not verified; use ``get`` or ``verify``)."""
        try:
            return self.fs.open(self.path(digest), "rb")
        except FileNotFoundError:
            raise BlobNotFound(f"blob {digest} not found") from None

    def delete(self, digest: str) -> bool:
        """Remove the blob; return whether it existed."""
        path = self.path(digest)
        try:
            self.fs.rm_file(path)
            return True
        except FileNotFoundError:
            return False
        except OSError as err:
            raise StoreError(f"cannot delete blob {digest}: {err}") from err

    def iter_digests(self) -> Iterator[str]:
        """Every stored digest, in no particular order."""
        base = f"{self.root}/blobs/sha256"
        try:
            paths = self.fs.find(base)
        except FileNotFoundError:
            return
        for p in paths:
            name = p.rsplit("/", 1)[-1]
            digest = "sha256:" + name
            if DIGEST_RE.match(digest):
                yield digest

    def verify(self, digest: str) -> bool:
        """Re-hash one blob; return whether its bytes match its name."""
        h = hashlib.sha256()
        with self.open(digest) as f:
            for block in iter(lambda: f.read(COPY_BLOCK), b""):
                h.update(block)
        return "sha256:" + h.hexdigest() == digest

    def verify_all(self) -> list[str]:
        """Re-hash every blob; return the digests whose bytes no longer match."""
        return [d for d in self.iter_digests() if not self.verify(d)]

    def _makedirs(self, path: str) -> None:
        if self._local or "memory" in _protocols(self.fs):
            self.fs.makedirs(path, exist_ok=True)

    def _rm_quiet(self, path: str) -> None:
        with contextlib.suppress(Exception):
            self.fs.rm_file(path)

    def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except OSError as err:
            raise StoreError(f"store {self.url}: {err}") from err


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    proto = fs.protocol
    return (proto,) if isinstance(proto, str) else tuple(proto)


def _hash_only(chunks: Iterable[bytes | memoryview]) -> str:
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
    return "sha256:" + h.hexdigest()


def _check_match(actual: str, expected: str, what: str = "uploaded bytes") -> None:
    if actual != expected:
        raise DigestMismatch(f"{what} hash to {actual}, not {expected}")
