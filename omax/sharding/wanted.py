"""Wanted replica counts, saved next to the catalog: ``<store>/replication/wanted.json``.

The scheduler plugin is the file's only writer, so a restarted scheduler keeps
pulled models at their count. The file is replaced in one step: a reader sees the
old document or the new one, never a mix.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable, Mapping

logger = logging.getLogger(__name__)

WANTED_PATH = "replication/wanted.json"


def read_wanted(url: str) -> dict[str, int]:
    """The wanted replica counts saved in the origin store at ``url``; {} if none."""
    from omax.sharding.blobs import open_fs

    fs, root = open_fs(url)
    try:
        doc = json.loads(fs.cat_file(f"{root}/{WANTED_PATH}"))
    except FileNotFoundError:
        return {}
    return {str(d): int(n) for d, n in doc["wanted"].items()}


def write_wanted(url: str, wanted: Mapping[str, int]) -> None:
    """Replace the saved counts in one step: readers see the old or the new file."""
    from omax.sharding.blobs import open_fs
    from omax.sharding.manifest import canonical_json

    fs, root = open_fs(url)
    path = f"{root}/{WANTED_PATH}"
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    fs.makedirs(f"{root}/replication", exist_ok=True)
    fs.pipe_file(tmp, canonical_json({"wanted": dict(wanted)}))
    fs.mv(tmp, path)  # a rename locally; on object stores the destination appears whole


class WantedFile:
    """The saved counts of one origin store, read once and written when they change.

    A save waits for the load: counts wanted since start must not overwrite the
    saved ones before they were merged.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._saved: dict[str, int] = {}  # as in the origin store
        self._lock = asyncio.Lock()

    async def load(self, merge: Callable[[dict[str, int]], None]) -> None:
        """Read the saved counts and hand them to ``merge`` before any save runs."""
        async with self._lock:
            try:
                saved = await asyncio.to_thread(read_wanted, self.url)
            except Exception as e:
                logger.warning("could not read the wanted replica counts: %s", e)
                return
            self._saved = saved
            merge(saved)
        if saved:
            logger.info("%d model(s) wanted at their replica count since before", len(saved))

    async def save(self, current: Callable[[], Mapping[str, int]]) -> None:
        """Write ``current()`` (read once the lock is held) when it differs."""
        async with self._lock:
            wanted = dict(current())
            if wanted == self._saved:
                return
            try:
                await asyncio.to_thread(write_wanted, self.url, wanted)
                self._saved = wanted
            except Exception as e:
                logger.warning("could not save the wanted replica counts: %s", e)
