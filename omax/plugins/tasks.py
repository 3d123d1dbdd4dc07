"""Background tasks a plugin owns: each kept, named, its failure logged, and all
cancelled when the plugin closes.

``asyncio`` holds only a weak reference to a task, and an exception nobody awaits
is reported (if at all) when the task is garbage collected. ``Tasks.spawn`` keeps
the reference until the task ends and logs a failure the moment it happens, at the
level the caller chose: ERROR (with the traceback) for a loop that must not stop,
lower where someone awaits the result and answers the failure too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Tasks:
    """A set of running tasks. Not thread-safe: use it on one event loop."""

    def __init__(self) -> None:
        self._running: set[asyncio.Task[Any]] = set()

    def spawn(
        self, coro: Coroutine[Any, Any, T], name: str, level: int = logging.ERROR
    ) -> asyncio.Task[T]:
        """Start ``coro`` as a task named ``name``; a failure is logged at ``level``."""
        task = asyncio.create_task(coro, name=name)
        self._running.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._running.discard(t)
            if t.cancelled() or t.exception() is None:
                return
            exc = t.exception()
            trace = exc if level >= logging.ERROR else None
            logger.log(level, "%s failed: %s", t.get_name(), exc, exc_info=trace)

        task.add_done_callback(done)
        return task

    def __len__(self) -> int:
        return len(self._running)

    def names(self) -> list[str]:
        return sorted(t.get_name() for t in self._running)

    async def cancel_all(self, timeout: float = 5.0) -> None:
        """Cancel every running task and wait (bounded) for them to end."""
        running = list(self._running)
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(running, timeout=timeout)
