"""Garbage collection of a model store: blobs no cataloged model references.

``find`` lists them, ``remove`` deletes them; ``ModelStore.gc`` runs both. Kept besides
the referenced blobs: blobs younger than a grace period, and whatever a live lease
protects (an import, create, pull or replication in progress, however long it runs:
``omax.sharding.leases``), both the blobs a lease names (manifests expanded to their
blobs) and every blob written since a live lease began. The catalog is read after the
leases, so a model published meanwhile is either leased or referenced.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from omax.errors import BlobNotFound, InvalidRequest
from omax.sharding.blobs import BlobStore
from omax.sharding.leases import SLACK_S, TTL_S, LeaseInfo, read_leases
from omax.sharding.manifest import Manifest

GC_GRACE_S = 3600.0


@dataclass(frozen=True)
class Garbage:
    """What ``find`` found: the blobs to remove (sorted) and their bytes."""

    digests: list[str]
    nbytes: int
    began: float  # time.time() when the search began: a blob modified since is kept


def find(
    blobs: BlobStore,
    referenced: Callable[[], set[str]],
    manifest: Callable[[str], Manifest],
    grace_s: float = GC_GRACE_S,
) -> Garbage:
    """Blobs of ``blobs`` that neither ``referenced()`` (the catalog's models and their
    blobs) nor a live lease keeps, older than ``grace_s``; ``manifest`` reads one."""
    began = time.time()
    leases = read_leases(blobs, began)
    keep = referenced() | _leased(leases, manifest)
    since = min((lease.started for lease in leases), default=began) - SLACK_S
    victims: list[str] = []
    total = 0
    for digest in blobs.iter_digests():
        if digest in keep or _younger(blobs, digest, began, grace_s):
            continue
        if leases and _modified(blobs, digest, default=began) >= since:
            continue  # written (or rewritten) since a live lease began
        victims.append(digest)
        total += blobs.size(digest)
    return Garbage(sorted(victims), total, began)


def remove(blobs: BlobStore, garbage: Garbage, grace_s: float = GC_GRACE_S) -> list[str]:
    """Delete ``garbage``'s blobs, and temporary files crashed writes left once older
    than ``leases.TTL_S``; return the digests deleted."""
    removed = []
    for digest in garbage.digests:
        # a write that began after the leases were read rewrote it: keep it
        if _modified(blobs, digest, default=0.0) >= garbage.began:
            continue
        blobs.delete(digest)
        removed.append(digest)
    blobs.clean_tmp(older_than_s=max(grace_s, TTL_S))
    return removed


def _modified(blobs: BlobStore, digest: str, default: float) -> float:
    """The blob's modified time; ``default`` when the store cannot say."""
    try:
        return float(blobs.fs.modified(blobs.path(digest)).timestamp())
    except (NotImplementedError, OSError, AttributeError):
        return default


def _leased(leases: list[LeaseInfo], manifest: Callable[[str], Manifest]) -> set[str]:
    """The blobs live leases name, manifests expanded to their blobs."""
    out: set[str] = set()
    for lease in leases:
        out |= set(lease.blobs) | set(lease.manifests)
        for digest in lease.manifests:
            with contextlib.suppress(BlobNotFound, InvalidRequest, ValueError):
                out |= manifest(digest).blob_digests()
    return out


def _younger(blobs: BlobStore, digest: str, now: float, grace_s: float) -> bool:
    if grace_s <= 0:
        return False
    return now - _modified(blobs, digest, default=0.0) < grace_s
