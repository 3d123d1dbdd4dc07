"""Leases: what keeps ``gc`` away from the blobs of an import or a replication in progress.

An operation that writes blobs before any catalog entry names them (an import, a
create, a pull) or reads blobs no catalog entry may name any more (a replication of
a model deleted meanwhile, or asked for by digest) holds a lease while it runs: a
small document ``<root>/leases/<id>.json`` in the origin store,

    {"id", "what", "started", "renewed", "blobs", "manifests"}

renewed every ``RENEW_S`` by a thread while the operation runs and removed when it
ends. A lease is live while ``renewed`` is younger than ``TTL_S``; one left by a
process that died expires by itself. ``gc`` keeps, for every live lease:

- every blob modified at or after ``started - SLACK_S``: an import writes (or, when
  deduplicated, rewrites: ``BlobStore.put_stream`` always renames its verified bytes
  into place) every blob it will reference, so each one's modified time is after the
  lease began, whether or not the lease's last renewal listed it;
- every blob in ``blobs``, and every manifest in ``manifests`` with all its blobs:
  what the operation relies on without writing it (files uploaded for a create, the
  model a create starts from, the model a replication copies).

A lease that cannot be read (being written on a store without atomic replace) but is
younger than ``TTL_S`` protects everything: ``gc`` removes nothing rather than guess.

Taking a lease is best effort for readers (a worker whose credentials cannot write
to the origin logs it and replicates anyway); an import needs one and fails without.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omax.errors import StoreError
from omax.sharding.blobs import BlobStore
from omax.sharding.durable import write_atomic

logger = logging.getLogger(__name__)

LEASES = "leases"
TTL_S = 120.0  # a lease not renewed for this long belongs to a process that died
RENEW_S = 20.0
SLACK_S = 60.0  # clock skew tolerated between the lease holder and the store's mtimes


@dataclass(frozen=True)
class LeaseInfo:
    """A lease as ``gc`` reads it. ``started`` 0 protects every blob."""

    id: str
    what: str
    started: float
    renewed: float
    blobs: tuple[str, ...] = ()
    manifests: tuple[str, ...] = ()

    def live(self, now: float) -> bool:
        return now - self.renewed < TTL_S


@dataclass
class Lease:
    """One operation's lease on the origin store at ``blobs``; use ``held(...)``."""

    blobs: BlobStore
    what: str
    manifests: set[str] = field(default_factory=set)
    held_blobs: set[str] = field(default_factory=set)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    started: float = field(default_factory=time.time)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def path(self) -> str:
        return f"{self.blobs.root}/{LEASES}/{self.id}.json"

    def add(self, blobs: Iterable[str] = (), manifests: Iterable[str] = ()) -> None:
        """Also protect ``blobs``, and ``manifests`` with every blob they name."""
        with self._lock:
            self.held_blobs |= set(blobs)
            self.manifests |= set(manifests)

    def write(self) -> None:
        """Write or renew the lease document (raises StoreError when it cannot)."""
        with self._lock:
            doc = {
                "id": self.id,
                "what": self.what,
                "started": self.started,
                "renewed": time.time(),
                "blobs": sorted(self.held_blobs),
                "manifests": sorted(self.manifests),
            }
        data = json.dumps(doc).encode()
        fs = self.blobs.fs
        try:
            if self.blobs._local:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
                write_atomic(self.path, data)
            else:
                with contextlib.suppress(Exception):
                    fs.makedirs(f"{self.blobs.root}/{LEASES}", exist_ok=True)
                fs.pipe_file(self.path, data)  # one PUT: whole or absent
        except OSError as err:
            raise StoreError(f"cannot write lease {self.path}: {err}") from err

    def open(self, required: bool = True) -> None:
        """Write the lease and start renewing it every ``RENEW_S`` in a thread.

        ``required=False``: a lease that cannot be written is logged and the caller
        goes on without one (a reader with read-only access to the origin)."""
        try:
            self.write()
        except StoreError as err:
            if required:
                raise
            logger.warning("%s runs without a gc lease: %s", self.what, err)
            return
        self._thread = threading.Thread(
            target=self._renew, name=f"omax lease {self.id[:8]}", daemon=True
        )
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(RENEW_S):
            try:
                self.write()
            except Exception as err:  # the next renewal tries again; TTL_S leaves room
                logger.warning("could not renew the gc lease of %s: %s", self.what, err)

    def close(self) -> None:
        """Stop renewing and remove the lease."""
        thread = self._thread
        if thread is None:
            return
        self._stop.set()
        thread.join()
        self._thread = None
        with contextlib.suppress(Exception):
            self.blobs.fs.rm_file(self.path)


@contextlib.contextmanager
def held(
    blobs: BlobStore, what: str, manifests: Iterable[str] = (), required: bool = True
) -> Iterator[Lease]:
    """Hold a lease on ``blobs`` for the ``with`` block (see ``Lease.open``)."""
    lease = Lease(blobs, what, set(manifests))
    lease.open(required)
    try:
        yield lease
    finally:
        lease.close()


@contextlib.asynccontextmanager
async def held_async(
    blobs: BlobStore, what: str, manifests: Iterable[str] = (), required: bool = True
) -> AsyncIterator[Lease]:
    """``held`` for a coroutine: the lease's writes run in a thread."""
    lease = Lease(blobs, what, set(manifests))
    await asyncio.to_thread(lease.open, required)
    try:
        yield lease
    finally:
        await asyncio.to_thread(lease.close)


def read_leases(blobs: BlobStore, now: float | None = None) -> list[LeaseInfo]:
    """The live leases on ``blobs``; expired ones are removed as they are found."""
    now = time.time() if now is None else now
    fs = blobs.fs
    try:
        paths = fs.find(f"{blobs.root}/{LEASES}")
    except FileNotFoundError:
        return []
    out: list[LeaseInfo] = []
    for path in paths:
        name = path.rsplit("/", 1)[-1]
        if not name.endswith(".json") or name.startswith("."):
            continue
        try:
            doc: dict[str, Any] = json.loads(fs.cat_file(path))
            info = LeaseInfo(
                id=str(doc["id"]),
                what=str(doc.get("what", "")),
                started=float(doc["started"]),
                renewed=float(doc["renewed"]),
                blobs=tuple(str(d) for d in doc.get("blobs", ())),
                manifests=tuple(str(d) for d in doc.get("manifests", ())),
            )
        except FileNotFoundError:
            continue  # released meanwhile
        except (OSError, ValueError, KeyError, TypeError):
            info = LeaseInfo(name, "unreadable lease", 0.0, _mtime(blobs, path, now))
        if info.live(now):
            out.append(info)
        else:
            logger.info("removing the expired gc lease of %s (%s)", info.what, path)
            with contextlib.suppress(Exception):
                fs.rm_file(path)
    return out


def _mtime(blobs: BlobStore, path: str, default: float) -> float:
    try:
        return float(blobs.fs.modified(path).timestamp())
    except (NotImplementedError, OSError, AttributeError):
        return default
