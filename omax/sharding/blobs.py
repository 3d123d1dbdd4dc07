"""Content-addressed blobs over any fsspec filesystem.

A blob is immutable bytes named ``sha256:<64 hex>`` of its content, stored at
``<root>/blobs/sha256/<hex[:2]>/<hex>``. Writes go to a temporary name under
``<root>/blobs/tmp/`` and are renamed into place only after the hash has been checked,
so a reader never sees a partial or wrong blob under a digest name (on object stores
the rename is a server-side copy whose destination appears whole). On a local disk
the temporary file is fsynced before the rename and the directory after it, so a
power loss cannot leave a digest name over bytes that never reached the disk.

A blob that exists is not trusted for being there: a write whose bytes verified
replaces whatever the name holds (equal names mean equal bytes, so this is safe, and
it heals a blob damaged on disk), ``intact`` checks the size cheaply, and reads
re-hash by default. On a local disk a read skips the re-hash of a file this process
has hashed already (written, read or checked) while the file stats the same: inode,
size, modified and changed times (``_Hashed``). Any write to the file changes its
changed time, so a blob modified since is hashed again; bytes that rot on the disk
without a write are found by ``check``/``verify``, which always re-hash (``omax
verify``, and a worker's check of a replica whose load failed). A load of a model
replicated by this worker so reads its ~240 MB without spending ~0.15 s re-hashing
what it hashed as it wrote them. A blob found damaged is ``quarantine``d: moved to
``<root>/blobs/quarantine/`` (kept for inspection, never read again) and logged, so the
next fetch or write puts good bytes under its name.

Errors: ``InvalidRequest`` for a malformed digest, ``BlobNotFound``, ``DigestMismatch``,
and ``StoreError`` for any failure of the underlying filesystem.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import fsspec
from fsspec.core import url_to_fs

from omax.errors import BlobNotFound, DigestMismatch, InvalidRequest, StoreError
from omax.sharding.durable import fsync_dir
from omax.sharding.durable import makedirs as durable_makedirs

logger = logging.getLogger(__name__)

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


class _Hashed:
    """Local blob files this process hashed and found right, by path: the file's
    (inode, size, mtime, ctime) when it did (``os.stat`` before the read, so a write
    during the read makes the next read hash again). Thread-safe: a dict's get and set
    are atomic."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[int, int, int, int]] = {}

    @staticmethod
    def stamp(path: str) -> tuple[int, int, int, int] | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def unchanged(self, path: str, stamp: tuple[int, int, int, int] | None) -> bool:
        return stamp is not None and self._seen.get(path) == stamp

    def record(self, path: str, stamp: tuple[int, int, int, int] | None) -> None:
        if stamp is not None:
            self._seen[path] = stamp

    def forget(self, path: str) -> None:
        self._seen.pop(path, None)


_HASHED = _Hashed()


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
        bytes hash to another name. ``created`` is False when the name existed already
        (deduplicated); the new bytes, which verified, replace the old ones even then,
        so a damaged blob is healed rather than trusted, and its modified time says the
        blob was just needed (``gc`` and its leases rely on that).
        """
        if expected_digest is not None:
            check_digest(expected_digest)
        tmp = f"{self.root}/blobs/tmp/{uuid.uuid4().hex}"
        h = hashlib.sha256()
        try:
            self._makedirs(f"{self.root}/blobs/tmp")
            if self._local:
                with open(tmp, "wb") as f:
                    for chunk in chunks:
                        h.update(chunk)
                        f.write(chunk)
                    f.flush()
                    os.fsync(f.fileno())  # the bytes are on disk before the name is
            else:
                with self.fs.open(tmp, "wb") as fo:
                    for chunk in chunks:
                        h.update(chunk)
                        fo.write(chunk)
            digest = "sha256:" + h.hexdigest()
            if expected_digest is not None:
                _check_match(digest, expected_digest)
            final = self.path(digest)
            existed = self.fs.exists(final)
            folder = final.rsplit("/", 1)[0]
            self._makedirs(folder)
            if self._local:
                os.replace(tmp, final)
                fsync_dir(folder)  # and the name is on disk before anyone counts on it
                _HASHED.record(final, _HASHED.stamp(final))  # the bytes just hashed
            else:
                self.fs.mv(tmp, final)
            return digest, not existed
        except BaseException as err:
            self._rm_quiet(tmp)
            if isinstance(err, OSError):
                raise StoreError(f"cannot write blob to {self.url}: {err}") from err
            raise

    def intact(self, digest: str, size: int) -> bool:
        """Whether the blob is stored with ``size`` bytes: a cheap check (one stat) for
        resuming. A blob of another size (cut short by a crash) is quarantined."""
        try:
            actual = int(self.fs.size(self.path(digest)))
        except FileNotFoundError:
            return False
        except OSError as err:
            raise StoreError(f"cannot stat blob {digest}: {err}") from err
        if actual == size:
            return True
        self.quarantine(digest, f"{actual} bytes, not {size}")
        return False

    def check(self, digest: str) -> bool:
        """Re-hash one blob: True when stored and intact; a damaged one is quarantined
        (False), so a later write or fetch replaces it."""
        try:
            if self.verify(digest):
                return True
        except BlobNotFound:
            return False
        self.quarantine(digest, "its bytes do not hash to its name")
        return False

    def quarantine(self, digest: str, reason: str = "") -> str | None:
        """Move a damaged blob out of its name into ``blobs/quarantine/`` and log it;
        return where it went (None when it was not there)."""
        hexd = check_digest(digest)[7:]
        dest = f"{self.root}/blobs/quarantine/{hexd}.{time.time_ns()}"
        _HASHED.forget(self.path(digest))
        try:
            self._makedirs(f"{self.root}/blobs/quarantine")
            self.fs.mv(self.path(digest), dest)
        except FileNotFoundError:
            return None
        except OSError as err:
            raise StoreError(f"cannot quarantine blob {digest}: {err}") from err
        logger.warning(
            "blob %s in %s is damaged (%s): quarantined to %s", digest, self.url, reason, dest
        )
        return dest

    def quarantined(self) -> list[str]:
        """Paths of the quarantined blobs, oldest first."""
        try:
            return sorted(self.fs.find(f"{self.root}/blobs/quarantine"), key=_stamp)
        except FileNotFoundError:
            return []

    def clean_tmp(self, older_than_s: float = 0.0) -> list[str]:
        """Remove temporary files (writes a crash interrupted) older than
        ``older_than_s``; return them. Only safe at ages no live write reaches."""
        try:
            paths = self.fs.find(f"{self.root}/blobs/tmp")
        except FileNotFoundError:
            return []
        now = time.time()
        removed: list[str] = []
        for p in paths:
            if older_than_s > 0:
                try:
                    if now - self.fs.modified(p).timestamp() < older_than_s:
                        continue
                except (NotImplementedError, OSError, AttributeError):
                    continue
            self._rm_quiet(p)
            removed.append(p)
        return removed

    def get(self, digest: str, verify: bool = True) -> bytes:
        """Return the blob's bytes, re-hashed against its name unless ``verify`` is False
        (or this process hashed the unchanged file before: module doc)."""
        path = self.path(digest)
        stamp = _HASHED.stamp(path) if verify and self._local else None
        try:
            data = self.fs.cat_file(path)
        except FileNotFoundError:
            raise BlobNotFound(f"blob {digest} not found") from None
        except OSError as err:
            raise StoreError(f"cannot read blob {digest}: {err}") from err
        if verify:
            self._verify_read(path, stamp, data, digest)
        return data

    def _verify_read(
        self, path: str, stamp: tuple[int, int, int, int] | None, data: Any, digest: str
    ) -> None:
        if _HASHED.unchanged(path, stamp):
            return
        _check_match(digest_bytes(data), digest, what="stored blob")
        _HASHED.record(path, stamp)

    def read_into(self, digest: str, out: memoryview, verify: bool = True) -> None:
        """Read the blob into ``out``, exactly its size, re-hashed unless ``verify`` is
        False: one copy from the file into the caller's array, where ``get`` returns new
        bytes for the caller to copy again. A blob of another size is DigestMismatch."""
        path = self.path(digest)
        stamp = _HASHED.stamp(path) if verify and self._local else None
        try:
            with self.fs.open(path, "rb") as f:
                got = 0
                while got < len(out):
                    n = f.readinto(out[got:])
                    if not n:
                        break
                    got += n
                longer = bool(f.read(1))
        except FileNotFoundError:
            raise BlobNotFound(f"blob {digest} not found") from None
        except OSError as err:
            raise StoreError(f"cannot read blob {digest}: {err}") from err
        if got != len(out) or longer:
            raise DigestMismatch(f"stored blob {digest} is not the {len(out)} bytes expected")
        if verify:
            self._verify_read(path, stamp, out, digest)

    def open(self, digest: str) -> IO[bytes]:
        """A binary file object over the blob (not verified; use ``get`` or ``verify``)."""
        try:
            return self.fs.open(self.path(digest), "rb")
        except FileNotFoundError:
            raise BlobNotFound(f"blob {digest} not found") from None

    def delete(self, digest: str) -> bool:
        """Remove the blob; return whether it existed."""
        path = self.path(digest)
        _HASHED.forget(path)
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
        """Re-hash one blob, always; return whether its bytes match its name."""
        path = self.path(digest)
        stamp = _HASHED.stamp(path) if self._local else None
        h = hashlib.sha256()
        with self.open(digest) as f:
            for block in iter(lambda: f.read(COPY_BLOCK), b""):
                h.update(block)
        if "sha256:" + h.hexdigest() != digest:
            _HASHED.forget(path)
            return False
        _HASHED.record(path, stamp)
        return True

    def verify_all(self) -> list[str]:
        """Re-hash every blob; return the digests whose bytes no longer match."""
        return [d for d in self.iter_digests() if not self.verify(d)]

    def _makedirs(self, path: str) -> None:
        if self._local:
            durable_makedirs(path)
        elif "memory" in _protocols(self.fs):
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


def _stamp(path: str) -> int:
    tail = path.rsplit(".", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def _check_match(actual: str, expected: str, what: str = "uploaded bytes") -> None:
    if actual != expected:
        raise DigestMismatch(f"{what} hash to {actual}, not {expected}")
