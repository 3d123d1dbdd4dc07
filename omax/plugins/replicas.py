"""A worker's local replicas: which manifests it holds whole, and fetching the rest.

A replica is complete only when every blob of its manifest is in the local store
(each verified as it was written) and the marker ``replicas/<hex>.complete`` was
written last. A fetch interrupted by a crash leaves a ``.partial`` marker and the
blobs it already verified, so the next fetch resumes without refetching them (the
``.partial`` marker's byte count is a hint for reports; what counts is the blobs).
Fetching itself is ``omax.sharding.replication``: peers first, the origin last.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from omax.plugins.state import Replica
from omax.sharding import replication
from omax.sharding.blobs import BlobStore
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

    def scan(self) -> dict[str, Replica]:
        """Complete and partial replicas, from the markers on disk."""
        out: dict[str, Replica] = {}
        for marker in self.markers.iterdir():
            hexdigest, _, kind = marker.name.partition(".")
            digest = f"sha256:{hexdigest}"
            try:
                info = json.loads(marker.read_text())
            except (OSError, ValueError):
                continue
            if kind == "complete":
                out[digest] = Replica(digest, True, info["total"], info["total"])
            elif kind == "partial" and digest not in out:
                out[digest] = Replica(digest, False, info.get("done", 0), info["total"])
        return out

    def is_complete(self, digest: str) -> bool:
        return self._marker(digest, "complete").exists()

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
        if self.is_complete(digest):
            total = json.loads(self._marker(digest, "complete").read_text())["total"]
            return Replica(digest, True, total, total), replication.FetchResult(total, total)
        origin = BlobStore(origin_url) if origin_url else None
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
                partial.write_text(json.dumps({"total": total, "done": done}))
                if progress is not None:
                    progress(digest, done, total)

        partial.write_text(json.dumps({"total": total, "done": 0}))
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
        # every blob verified as it landed; the marker goes last
        self._marker(digest, "complete").write_text(json.dumps({"total": total}))
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
        """Re-hash a replica's blobs; drop bad ones and its complete marker. Return them."""
        try:
            sizes = self.manifest(digest).blob_sizes()
        except Exception:
            sizes = {}
        bad = [b for b in sizes if self.store.has(b) and not self.store.verify(b)]
        if bad:
            for b in bad:
                self.store.delete(b)
            self.drop_marker(digest, partial=True)
        return bad

    def drop_marker(self, digest: str, partial: bool = False) -> None:
        """Forget a replica is complete (``partial``: keep it as a partial one)."""
        complete = self._marker(digest, "complete")
        if partial and complete.exists():
            info: dict[str, Any] = json.loads(complete.read_text())
            self._marker(digest, "partial").write_text(json.dumps({**info, "done": 0}))
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
