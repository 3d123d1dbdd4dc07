"""A model's replication to its workers, as a front door streams its progress.

The scheduler's ``omax_replicate_model`` brings a model to ``omax.replication.target``
workers and answers when the bytes are in place. Meanwhile the front door reads the
cluster state and yields one progress line per (worker, poll) while bytes move, so a
pull or a create shows a bar per worker.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from omax.errors import from_wire, is_wire_error
from omax.serve.runtime import Progress
from omax.serve.upstream import SchedulerLink

_POLL_S = 0.25  # seconds between looks at the cluster state while bytes move


async def replicate(link: SchedulerLink, digest: str, name: str) -> AsyncIterator[Progress]:
    """Bring model ``name`` (``digest``) to its replication target, one progress line
    per (worker, poll) while bytes move, then "success"."""
    # Replication takes as long as the bytes take: no deadline but the connection's.
    job = asyncio.ensure_future(link.call("omax_replicate_model", timeout=None, digest=digest))
    try:
        while not job.done():
            await asyncio.wait({job}, timeout=_POLL_S)
            state = await link.call("omax_cluster")
            for w in state["workers"]:
                for r in w.get("replicating", []):
                    if r["digest"] == digest:
                        yield Progress(
                            f"replicating to {w['address']}", digest, r["total"], r["completed"]
                        )
    finally:
        if not job.done():
            job.cancel()
    reply = job.result()
    if is_wire_error(reply):
        raise from_wire({**reply, "error": f"replicating {name}: {reply['error']}"})
    yield Progress("success")
