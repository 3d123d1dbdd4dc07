"""The front door's link to its scheduler: one Dask client, kept connected, and
every remote wait bounded.

``SchedulerLink`` owns the ``distributed.Client``. A supervisor task watches it:
when the scheduler goes away, Dask's client tries to reconnect by itself for
``distributed.comm.timeouts.connect`` and then closes for good; the supervisor then
makes a new client against the same address, retrying with backoff until one
connects, and tells its listeners (the runtime drops what it cached about actors).

While the link is down a call fails at once with ``Unavailable`` (503), never
waiting on a connect. A call that starts but gets no answer within its deadline
fails with ``DeadlineExceeded`` (504); a connection lost mid-call is ``Unavailable``.
Each failure is logged with the call it ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from distributed import Client

from omax.errors import DeadlineExceeded, Unavailable

logger = logging.getLogger(__name__)

T = TypeVar("T")

_CHECK_S = 0.25  # how often the supervisor looks at the client


@dataclass(frozen=True)
class Deadlines:
    """Bounds on the front door's remote waits, in seconds (``omax.serve.*``)."""

    rpc: float = 10.0  # short calls: scheduler control RPCs, actor submit/poll/cancel
    start: float = 600.0  # a model load, then a request's first token or embedding
    reconnect_min: float = 0.5  # first wait between reconnect tries
    reconnect_max: float = 5.0  # longest wait between reconnect tries

    @classmethod
    def from_settings(cls) -> Deadlines:
        from omax.config import settings

        cfg = settings()
        return cls(cfg.rpc_timeout, cfg.start_timeout, cfg.reconnect_min, cfg.reconnect_max)


async def bounded(what: str, awaitable: Awaitable[T], timeout: float | None) -> T:
    """``awaitable``'s result, or ``DeadlineExceeded`` naming ``what`` after ``timeout`` s."""
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except TimeoutError:
        logger.warning("%s: no answer within %.1f s", what, timeout)
        raise DeadlineExceeded(f"{what}: no answer within {timeout:g} s") from None


class SchedulerLink:
    """A Dask client to ``address`` that reconnects by itself; see the module docstring."""

    def __init__(self, address: str, client: Client, deadlines: Deadlines | None = None) -> None:
        self.address = address
        self.deadlines = deadlines or Deadlines()
        self._client = client
        self._listeners: list[Callable[[], None]] = []
        self._closing = False
        self._down_since: float | None = None
        self._task: asyncio.Task | None = None

    @classmethod
    async def connect(
        cls, scheduler: str | Client, deadlines: Deadlines | None = None
    ) -> SchedulerLink:
        """Connect (or adopt ``scheduler`` when it is a Client) and start supervising."""
        if isinstance(scheduler, Client):
            client = scheduler
        else:
            client = await Client(scheduler, asynchronous=True, direct_to_workers=True)
        link = cls(client.scheduler.address, client, deadlines)
        link.start()
        return link

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._supervise(), name="omax-scheduler-link")
            self._task.add_done_callback(_log_end)

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        # A client still retrying a lost scheduler must not hold the shutdown up.
        with contextlib.suppress(TimeoutError, OSError):
            await asyncio.wait_for(self._client.close(), self.deadlines.rpc)

    # ---- state ------------------------------------------------------------------

    @property
    def client(self) -> Client:
        """The current client, connected or not (a new one replaces it on reconnect)."""
        return self._client

    @property
    def connected(self) -> bool:
        return self._client.status == "running"

    def on_reconnect(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` each time the link is up again after being down."""
        self._listeners.append(listener)

    def unavailable(self) -> Unavailable:
        down = (
            "" if self._down_since is None else f" for {time.monotonic() - self._down_since:.0f} s"
        )
        return Unavailable(f"scheduler {self.address} is unreachable{down}; reconnecting")

    def require(self) -> Client:
        """The client if the link is up, else ``Unavailable`` at once."""
        if not self.connected:
            raise self.unavailable()
        return self._client

    # ---- calls ------------------------------------------------------------------

    async def call(self, handler: str, *, timeout: float | None = 0, **kwargs: Any) -> Any:
        """The scheduler's answer to RPC ``handler``. ``timeout`` 0 means the rpc
        deadline; None waits as long as the connection lives."""
        client = self.require()
        limit = self.deadlines.rpc if timeout == 0 else timeout
        try:
            return await bounded(
                f"scheduler call {handler}", getattr(client.scheduler, handler)(**kwargs), limit
            )
        except OSError as e:  # CommClosedError included: the scheduler went away mid-call
            logger.warning("scheduler call %s failed: %s", handler, e)
            raise Unavailable(f"scheduler {self.address} is unreachable: {e}") from e
        except RuntimeError as e:  # "ConnectionPool is closed": the client closed meanwhile
            if client.status == "running":
                raise
            raise self.unavailable() from e

    # ---- the supervisor -----------------------------------------------------------

    async def _supervise(self) -> None:
        while not self._closing:
            try:
                await self._watch()
            except Exception:  # never leave the front door without a supervisor
                logger.exception("scheduler link supervisor failed; restarting it")
                await asyncio.sleep(self.deadlines.reconnect_min)

    async def _watch(self) -> None:
        delay = self.deadlines.reconnect_min
        while not self._closing:
            status = self._client.status
            if status == "running":
                if self._down_since is not None:
                    self._up()
                delay = self.deadlines.reconnect_min
                await asyncio.sleep(_CHECK_S)
                continue
            if self._down_since is None:
                self._down_since = time.monotonic()
                logger.warning(
                    "lost the scheduler %s (client %s); answering 503 until it is back",
                    self.address,
                    status,
                )
            if status in ("newly-created", "connecting"):  # Dask's client is retrying
                await asyncio.sleep(_CHECK_S)
                continue
            if await self._replace():
                continue
            logger.info("scheduler %s still unreachable; next try in %.1f s", self.address, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max(self.deadlines.reconnect_max, self.deadlines.reconnect_min))

    async def _replace(self) -> bool:
        """Put a new client in place of the closed one; False if none connected."""
        client = Client(
            self.address,
            asynchronous=True,
            direct_to_workers=True,
            timeout=self.deadlines.rpc,
            set_as_default=False,
        )
        try:
            await asyncio.wait_for(client, self.deadlines.rpc + 1)  # type: ignore[arg-type]
        except (OSError, TimeoutError) as e:
            logger.debug("connecting to %s: %s", self.address, e)
            with contextlib.suppress(Exception):
                await client.close()
            return False
        old, self._client = self._client, client
        with contextlib.suppress(Exception):
            await old.close()
        return True

    def _up(self) -> None:
        assert self._down_since is not None
        logger.warning(
            "scheduler %s is back after %.1f s", self.address, time.monotonic() - self._down_since
        )
        self._down_since = None
        for listener in self._listeners:
            try:
                listener()
            except Exception:
                logger.exception("a reconnect listener failed")


def _log_end(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("the scheduler link's supervisor died", exc_info=task.exception())
