"""Model names resolved to their digest and manifest, cached briefly by a front door.

Resolving a name reads the catalog, so it runs in a thread and its answer is kept for
``ttl`` s, off the per-request path. Requests that miss the cache together share one
lookup: a burst (ten times the queue at once) would otherwise queue as many catalog
reads on the small thread pool, and even its 503s would wait for them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any


class NameCache:
    """``resolve(name)`` through a short-lived cache; ``clear`` after a rename or delete."""

    def __init__(self, resolve: Callable[[str], tuple[str, Any]], ttl: float) -> None:
        self._lookup = resolve  # blocking: name -> (digest, manifest), or ModelNotFound
        self.ttl = ttl
        self._names: dict[str, tuple[float, tuple[str, Any]]] = {}
        self._resolving: dict[str, asyncio.Future] = {}  # name -> its lookup under way

    def clear(self) -> None:
        self._names.clear()

    async def resolve(self, name: str) -> tuple[str, Any]:
        """``name``'s digest and manifest, from the cache or one shared lookup."""
        hit = self._names.get(name)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        lookup = self._resolving.get(name)
        if lookup is None:
            lookup = asyncio.ensure_future(asyncio.to_thread(self._lookup, name))
            self._resolving[name] = lookup
            lookup.add_done_callback(lambda _: self._resolving.pop(name, None))
        found = await asyncio.shield(lookup)
        self._names[name] = (time.monotonic() + self.ttl, found)
        return found
