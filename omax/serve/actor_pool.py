"""The front door's pool of model actors: which are ready, and how busy each is.

``ActorPool`` asks the scheduler for a model's ready actors (``omax_ensure`` loads
one when none is), caches the answer briefly to keep the scheduler off the
per-request path, and picks the least busy of two (``omax.serve.router.pick``). It
counts the requests on each actor, here and with the scheduler (``omax_touch``: last
use, in flight, keep_alive), and keeps one ``Poller`` per actor while requests use
it. A stale cached actor is found out by ``omax_touch`` (or ``EngineDead``) and
dropped.

An actor found dead is dropped from the pool and reported to the scheduler
(``omax_actor_failed``), which unloads it; the next request loads a fresh one. Found
dead: a call to it raises ``EngineDead`` (its worker or the actor is gone, or its
engine died), or a request ends in an error and the actor's ``stats`` say its engine
died (that request keeps its error; what failed the engine may have been in it).
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

from omax.errors import EngineDead, from_wire, is_wire_error
from omax.serve.actors import ActorHandle
from omax.serve.router import Poller, pick
from omax.serve.upstream import SchedulerLink

logger = logging.getLogger(__name__)

_POLL_WAIT = 0.05  # seconds a poll waits for new chunks: long enough not to spin


class ActorPool:
    """The ready actors of each model (by digest) as one front door routes to them."""

    def __init__(self, link: SchedulerLink, coalesce: float, ttl: float) -> None:
        self.link = link
        self.coalesce = coalesce  # seconds a started stream's tokens may gather per poll
        self.ttl = ttl  # seconds the scheduler's list of a model's actors is trusted
        self._pollers: dict[str, Poller] = {}
        self._outstanding: dict[str, int] = defaultdict(int)  # actor key -> requests
        self._ready: dict[str, tuple[float, list[ActorHandle]]] = {}  # digest -> actors

    def forget_all(self) -> None:
        """Drop every cached actor and poller (the scheduler places models afresh)."""
        self._ready.clear()
        self._pollers.clear()

    async def ensure(
        self, name: str, digest: str, num_ctx: int, keep_alive: float | None
    ) -> list[ActorHandle]:
        """The model's ready actors, as the scheduler names them; it loads one if none is."""
        deadlines = self.link.deadlines
        reply = await self.link.call(
            "omax_ensure",
            timeout=deadlines.start,
            name=name,
            digest=digest,
            num_ctx=num_ctx,
            keep_alive=keep_alive,
        )
        if is_wire_error(reply):
            raise from_wire(reply)
        client = self.link.require()
        return [ActorHandle(client, a["worker"], a["key"], deadlines.rpc) for a in reply["actors"]]

    async def choose(
        self, name: str, digest: str, num_ctx: int, keep_alive: float | None
    ) -> ActorHandle:
        """A ready actor for the model, the least busy of two; loads one if needed."""
        cached = self._ready.get(digest)
        if cached is not None and cached[0] > time.monotonic():
            actors = cached[1]
        else:
            actors = await self.ensure(name, digest, num_ctx, keep_alive)
            self._ready[digest] = (time.monotonic() + self.ttl, actors)
        if not actors:
            raise EngineDead(f"no replica of model '{name}' is loaded")
        return actors[pick([self._outstanding[a.key] for a in actors])]

    def forget(self, digest: str, actor: ActorHandle) -> None:
        """Stop routing to ``actor`` until the scheduler names it again."""
        self._ready.pop(digest, None)
        self._pollers.pop(actor.key, None)

    async def failed(self, digest: str, actor: ActorHandle, reason: str) -> None:
        """Stop routing to ``actor`` and have the scheduler unload it."""
        self.forget(digest, actor)
        await self.link.call("omax_actor_failed", key=actor.key, reason=reason)

    async def check_engine(self, digest: str, actor: ActorHandle) -> None:
        """A request on ``actor`` ended in an error: if its engine died, report it."""
        try:
            dead = (await actor.call("stats")).get("dead")
        except EngineDead as e:
            dead = str(e)
        except Exception as e:  # the report is best effort; the request has its error
            logger.warning("could not ask %s whether its engine died: %s", actor, e)
            return
        if dead:
            with contextlib.suppress(Exception):
                await self.failed(digest, actor, dead)

    def hold(self, actor: ActorHandle) -> Poller:
        """Count a streamed request on ``actor`` (``release`` ends it); return the
        poller that brings its chunks."""
        self._outstanding[actor.key] += 1
        poller = self._pollers.get(actor.key)
        if poller is None:
            poller = self._pollers[actor.key] = Poller(_poll_fn(actor, self.coalesce), actor.key)
        return poller

    async def acquire(
        self, name: str, digest: str, num_ctx: int, keep_alive: float | None
    ) -> ActorHandle:
        """Choose an actor and count a request on it with the scheduler (last use,
        in flight, keep_alive); a cached actor unloaded meanwhile is chosen afresh."""
        actor = await self.choose(name, digest, num_ctx, keep_alive)
        if not await self.link.call("omax_touch", key=actor.key, delta=1, keep_alive=keep_alive):
            self.forget(digest, actor)
            actor = await self.choose(name, digest, num_ctx, keep_alive)
            await self.link.call("omax_touch", key=actor.key, delta=1, keep_alive=keep_alive)
        self._outstanding[actor.key] += 1
        return actor

    async def release(self, actor: ActorHandle, keep_alive: float | None) -> None:
        """The request on ``actor`` ended; per-actor state goes when it is idle."""
        self._outstanding[actor.key] -= 1
        if self._outstanding[actor.key] <= 0:
            self._outstanding.pop(actor.key, None)
            poller = self._pollers.get(actor.key)
            if poller is not None and poller.live == 0:
                self._pollers.pop(actor.key, None)
        with contextlib.suppress(Exception):
            await self.link.call("omax_touch", key=actor.key, delta=-1, keep_alive=keep_alive)


def _poll_fn(actor: ActorHandle, linger: float) -> Callable[[list[str]], Awaitable[Any]]:
    """One call for every live request on ``actor``: it waits briefly for new chunks,
    and lets a started stream's chunks gather for ``linger`` s."""

    async def poll(ids: list[str]) -> Any:
        return pickle.loads(await actor.call("poll_wire", ids, _POLL_WAIT, linger))

    return poll
