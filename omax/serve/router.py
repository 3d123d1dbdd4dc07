"""Routing policy and the per-actor poller that carries tokens to the front door.

``pick`` chooses among a model's replicas by least outstanding work (power of two
random choices, which stays good with many replicas and stale counts). ``Poller``
runs one task per actor that polls all of that actor's live requests in one call
per step and hands each request its chunks, so a step costs one round trip per
actor, not one per stream.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from omax.engine.request import GenerateChunk
from omax.errors import EngineDead

logger = logging.getLogger(__name__)


def pick(outstanding: Sequence[int], rng: random.Random | None = None) -> int:
    """Index of the replica to use: the less loaded of two random choices."""
    if not outstanding:
        raise ValueError("no replicas")
    if len(outstanding) == 1:
        return 0
    r = rng or random
    a, b = r.sample(range(len(outstanding)), 2)
    return a if outstanding[a] <= outstanding[b] else b


PollFn = Callable[[list[str]], Awaitable[dict[str, list[GenerateChunk]]]]


class Poller:
    """Polls one actor for every live request it serves, one call per step."""

    def __init__(self, poll: PollFn, name: str) -> None:
        self._poll = poll
        self._name = name
        self._queues: dict[str, asyncio.Queue[Any]] = {}
        self._task: asyncio.Task | None = None

    def register(self, request_id: str) -> asyncio.Queue[Any]:
        q: asyncio.Queue[Any] = asyncio.Queue()
        self._queues[request_id] = q
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"poll-{self._name}")
        return q

    def forget(self, request_id: str) -> None:
        self._queues.pop(request_id, None)

    @property
    def live(self) -> int:
        return len(self._queues)

    async def _run(self) -> None:
        while self._queues:
            ids = list(self._queues)
            try:
                result = await self._poll(ids)
            except Exception as e:  # the actor or its worker is gone
                err = e if isinstance(e, EngineDead) else EngineDead(str(e) or repr(e))
                for q in self._queues.values():
                    q.put_nowait(err)
                self._queues.clear()
                return
            for rid, chunks in result.items():
                queue = self._queues.get(rid)
                if queue is None:
                    continue
                for c in chunks:
                    queue.put_nowait(c)
                    if c.done:
                        self._queues.pop(rid, None)
