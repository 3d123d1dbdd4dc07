"""A worker's local replicas: which manifests it holds whole, and fetching the rest.

A replica is complete only when every blob of its manifest is in the local store
(each verified as it was written) and the marker ``replicas/<hex>.complete`` was
written last. A fetch interrupted by a crash leaves a ``.partial`` marker and the
blobs it already verified, so the next fetch resumes without refetching them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

from omax.plugins.state import Replica
from omax.sharding.blobs import BlobStore
from omax.sharding.manifest import Manifest

logger = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]


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

    def fetch(self, digest: str, origin_url: str, progress: Progress | None = None) -> Replica:
        """Copy every blob of manifest ``digest`` from the origin store, verifying each."""
        if self.is_complete(digest):
            total = json.loads(self._marker(digest, "complete").read_text())["total"]
            return Replica(digest, True, total, total)
        origin = BlobStore(origin_url)
        raw = origin.get(digest)  # verified against its name
        manifest = Manifest.from_json(raw)
        sizes = manifest.blob_sizes()
        total = sum(sizes.values()) + len(raw)
        partial = self._marker(digest, "partial")
        done = len(raw)
        partial.write_text(json.dumps({"total": total, "done": done}))
        self.store.put_bytes(raw)
        for i, (blob, size) in enumerate(sorted(sizes.items())):
            if not self.store.has(blob):
                with origin.open(blob) as src:
                    self.store.put_stream(iter(lambda src=src: src.read(1 << 22), b""), blob)
            done += size
            if progress is not None and (i % 8 == 0 or done == total):
                progress(digest, done, total)
                partial.write_text(json.dumps({"total": total, "done": done}))
        self._marker(digest, "complete").write_text(json.dumps({"total": total}))
        partial.unlink(missing_ok=True)
        logger.info("replica %s complete (%d bytes)", digest[:19], total)
        return Replica(digest, True, total, total)
