"""The catalog as a front door sees it in a cluster: reads go to the origin store,
writes go through the scheduler plugin, the catalog's single writer.

``ModelStore`` methods run in worker threads (``asyncio.to_thread``); a write hops
onto the event loop that owns the Dask client and waits for the scheduler's answer,
within the link's rpc deadline (``Unavailable`` while the scheduler is away).
"""

from __future__ import annotations

import asyncio
from typing import Any

from omax.errors import from_wire, is_wire_error
from omax.serve.upstream import SchedulerLink
from omax.sharding.catalog import Catalog, CatalogEntry


class SchedulerCatalog(Catalog):
    def __init__(self, url: str, link: SchedulerLink, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(url)
        self._link = link
        self._loop = loop

    def _call(self, handler: str, **kwargs: Any) -> dict[str, Any]:
        call = self._link.call(handler, **kwargs)  # bounded by the link's rpc deadline
        reply = asyncio.run_coroutine_threadsafe(call, self._loop).result()
        if is_wire_error(reply):
            raise from_wire(reply)  # its own type: ModelNotFound, CatalogConflict, ...
        return reply

    def set(self, name: str, digest: str, size: int) -> None:
        self._call("omax_catalog_set", name=name, digest=digest, size=int(size))

    def delete(self, name: str) -> CatalogEntry:
        reply = self._call("omax_catalog_delete", name=name)
        return CatalogEntry(**reply["entry"])
