"""A worker's local replicas: which manifests it holds whole, and fetching the rest.

A replica is complete only when every blob of its manifest is in the local store
(each verified as it was written, and on disk before its name) and the marker
``replicas/<hex>.complete`` was written last. Markers are written atomically
(temporary file, fsync, rename, directory fsync), so after a power loss a marker is
the old one or the new one, whole. A fetch interrupted by a crash leaves a
``.partial`` marker and the blobs it already verified, so the next fetch resumes
without refetching them (the ``.partial`` marker's byte count is a hint for reports;
what counts is the blobs). Fetching itself is ``omax.sharding.replication``: peers
first, the origin last.

``recover`` runs when the worker starts: it clears temporary files a crash left,
drops markers that cannot be read, and turns a complete replica with a blob missing
or of the wrong size back into a partial one, so the next fetch repairs it. Damage
that keeps a blob's size is found when a load re-hashes it (``damaged``): the bad
blobs are quarantined and the replica becomes partial until fetched again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from omax.errors import DigestMismatch
from omax.plugins.state import Replica
from omax.sharding import replication
from omax.sharding.blobs import BlobStore
from omax.sharding.durable import is_temporary, write_atomic
from omax.sharding.leases import held_async
from omax.sharding.manifest import Manifest

logger = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
MARKER_EVERY_S = 0.25


class LocalReplicas:
    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.markers = self.path / "replicas"
        self.markers.mkdir(exist_ok=True)
        self.store = BlobStore(str(self.path))

    def _marker(self, digest: str, kind: str) -> Path:
        return self.markers / f"{digest.split(':', 1)[1]}.{kind}"

    def _write_marker(
        self, digest: str, kind: str, info: dict[str, Any], sync: bool = True
    ) -> None:
        write_atomic(self._marker(digest, kind), json.dumps(info).encode(), sync=sync)

    def _read_marker(self, digest: str, kind: str) -> dict[str, Any] | None:
        """A marker's document; None when absent or unreadable (cut short)."""
        try:
            info = json.loads(self._marker(digest, kind).read_text())
            return info if isinstance(info, dict) and isinstance(info.get("total"), int) else None
        except (OSError, ValueError):
            return None

    def scan(self) -> dict[str, Replica]:
        """Complete and partial replicas, from the markers on disk."""
        out: dict[str, Replica] = {}
        for marker in self.markers.iterdir():
            if is_temporary(marker.name):
                continue
            hexdigest, _, kind = marker.name.partition(".")
            digest = f"sha256:{hexdigest}"
            if kind not in ("complete", "partial"):
                continue
            info = self._read_marker(digest, kind)
            if info is None:
                continue
            if kind == "complete":
                out[digest] = Replica(digest, True, info["total"], info["total"])
            elif digest not in out:
                out[digest] = Replica(digest, False, info.get("done", 0), info["total"])
        return out

    def is_complete(self, digest: str) -> bool:
        """Whether a whole, readable complete marker says so."""
        return self._read_marker(digest, "complete") is not None

    def recover(self) -> dict[str, list[str]]:
        """Repair what a crash or power loss left; run before the worker reports.

        Removes temporary files (blob writes and marker writes cut short), drops
        unreadable markers, and turns a complete replica whose manifest or blobs are
        missing or of the wrong size (quarantined) into a partial one. Answers what it
        did, by kind, for the log and tests."""
        done: dict[str, list[str]] = {"tmp": [], "markers": [], "demoted": []}
        done["tmp"] = self.store.clean_tmp()
        for marker in list(self.markers.iterdir()):
            hexdigest, _, kind = marker.name.partition(".")
            if is_temporary(marker.name):
                marker.unlink(missing_ok=True)
                done["tmp"].append(marker.name)
                continue
            if kind not in ("complete", "partial"):
                continue
            digest = f"sha256:{hexdigest}"
            if self._read_marker(digest, kind) is None:
                logger.warning("replica marker %s is unreadable (cut short): dropped", marker)
                marker.unlink(missing_ok=True)
                done["markers"].append(marker.name)
        for digest in [d for d, r in self.scan().items() if r.complete]:
            if not self._blobs_intact(digest):
                self.drop_marker(digest, partial=True)
                done["demoted"].append(digest)
        if any(done.values()):
            logger.warning(
                "local store %s recovered: %d temporary file(s) removed, %d unreadable "
                "marker(s) dropped, %d complete replica(s) with missing or cut-short blobs "
                "made partial (the next fetch repairs them)",
                self.path,
                len(done["tmp"]),
                len(done["markers"]),
                len(done["demoted"]),
            )
        return done

    def _blobs_intact(self, digest: str) -> bool:
        """Cheap check (stats, one manifest read): every blob stored at its size."""
        try:
            sizes = self.manifest(digest).blob_sizes()
        except Exception as err:  # missing or damaged manifest
            if self.store.has(digest):
                self.store.quarantine(digest, str(err))
            return False
        return all(self.store.intact(b, n) for b, n in sizes.items())

    def manifest(self, digest: str) -> Manifest:
        return Manifest.from_json(self.store.get(digest))

    def open_blob(self, digest: str) -> BinaryIO:
        """A local blob opened for reading (unverified: the reader verifies).

        Raises FileNotFoundError when this store lacks it.
        """
        return open(self.store.path(digest), "rb")  # noqa: SIM115 - the caller closes it

    async def fetch(
        self,
        digest: str,
        origin_url: str,
        peers: Sequence[str] = (),
        stream_peer: replication.PeerStream | None = None,
        progress: Progress | None = None,
        on_bad: Callable[[replication.BadSource], None] | None = None,
        rate: float = 0.0,
        concurrency: int = 8,
    ) -> tuple[Replica, replication.FetchResult]:
        """Make this store hold a complete, verified replica of manifest ``digest``.

        Blobs come from ``peers`` (through ``stream_peer``) and fall back to the origin
        store at ``origin_url`` (none when empty).
        """
        info = self._read_marker(digest, "complete")
        if info is not None:
            total = info["total"]
            return Replica(digest, True, total, total), replication.FetchResult(total, total)
        origin = BlobStore(origin_url) if origin_url else None
        if origin is None:
            return await self._fetch(
                digest, None, peers, stream_peer, progress, on_bad, rate, concurrency
            )
        # gc on the origin leaves this model's blobs alone while they are copied, even
        # if its name is deleted meanwhile
        what = f"replicate {digest[:19]} to {self.path}"
        async with held_async(origin, what, [digest], required=False):
            return await self._fetch(
                digest, origin, peers, stream_peer, progress, on_bad, rate, concurrency
            )

    async def _fetch(
        self,
        digest: str,
        origin: BlobStore | None,
        peers: Sequence[str],
        stream_peer: replication.PeerStream | None,
        progress: Progress | None,
        on_bad: Callable[[replication.BadSource], None] | None,
        rate: float,
        concurrency: int = 8,
    ) -> tuple[Replica, replication.FetchResult]:
        raw = await replication.fetch_one(self.store, digest, peers, stream_peer, origin)
        sizes = Manifest.from_json(raw).blob_sizes()
        sizes[digest] = len(raw)
        total = sum(sizes.values())
        partial = self._marker(digest, "partial")
        last = [0.0]

        def note(done: int, total: int) -> None:
            now = time.monotonic()
            if now - last[0] >= MARKER_EVERY_S or done == total:
                last[0] = now
                # a hint for reports, rewritten often: atomic, not worth an fsync
                self._write_marker(digest, "partial", {"total": total, "done": done}, False)
                if progress is not None:
                    progress(digest, done, total)

        await asyncio.to_thread(self._write_marker, digest, "partial", {"total": total, "done": 0})
        result = await replication.fetch_blobs(
            self.store,
            sizes,
            peers,
            stream_peer,
            origin,
            concurrency=concurrency,
            rate=rate,
            on_progress=note,
            on_bad=on_bad,
        )
        # every blob verified as it landed and is on disk; the marker goes last
        await asyncio.to_thread(self._write_marker, digest, "complete", {"total": total})
        partial.unlink(missing_ok=True)
        logger.info(
            "replica %s complete (%d bytes, %d fetched: %s)",
            digest[:19],
            total,
            result.fetched_bytes,
            result.fetched,
        )
        return Replica(digest, True, total, total), result

    def verify(self, digest: str) -> list[str]:
        """Re-hash a replica's blobs (its manifest included); quarantine bad ones and
        make the replica partial, so the next fetch replaces them. Return them."""
        bad: list[str] = []
        try:
            sizes = self.manifest(digest).blob_sizes()
        except DigestMismatch as err:
            self.store.quarantine(digest, str(err))
            sizes, bad = {}, [digest]
        except Exception:
            sizes = {}
        bad += [b for b in sizes if self.store.has(b) and not self.store.check(b)]
        if bad:
            self.drop_marker(digest, partial=True)
        return bad

    def drop_marker(self, digest: str, partial: bool = False) -> None:
        """Forget a replica is complete (``partial``: keep it as a partial one)."""
        complete = self._marker(digest, "complete")
        info = self._read_marker(digest, "complete")
        if partial and info is not None:
            self._write_marker(digest, "partial", {**info, "done": 0})
        complete.unlink(missing_ok=True)
        if not partial:
            self._marker(digest, "partial").unlink(missing_ok=True)

    def drop(self, digest: str) -> int:
        """Remove a replica and the blobs no other replica here needs; return bytes freed."""
        try:
            mine = self.manifest(digest).blob_sizes()
        except Exception:
            mine = {}
        mine[digest] = 0
        self.drop_marker(digest)
        keep: set[str] = set()
        for other in self.scan():
            try:
                keep |= self.manifest(other).blob_digests() | {other}
            except Exception:
                continue
        freed = 0
        for blob in mine:
            if blob not in keep:
                try:
                    freed += self.store.size(blob)
                except Exception:
                    continue
                self.store.delete(blob)
        return freed
