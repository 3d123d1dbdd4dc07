"""A thin handle for calling a ModelActor's methods from a front door.

``distributed.actor.Actor`` registers a Future for its key with the client, which
would keep an actor alive after the scheduler unloads it. The front door only needs
to call methods, so it speaks the worker's ``actor_execute`` RPC directly, over the
client's connection pool (``direct_to_workers``). Every call has a deadline
(``DeadlineExceeded`` past it); an unreachable worker or actor is ``EngineDead``.
"""

from __future__ import annotations

from typing import Any

from distributed import Client
from distributed.protocol import to_serialize

from omax.errors import EngineDead, OmaxError
from omax.serve.upstream import bounded


class ActorHandle:
    def __init__(self, client: Client, worker: str, key: str, timeout: float | None = None) -> None:
        self.client = client
        self.worker = worker
        self.key = key
        self.timeout = timeout  # seconds a call may take; None: no deadline

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """``method(*args, **kwargs)`` on the actor, within the handle's deadline."""
        return await self.call_within(self.timeout, method, *args, **kwargs)

    async def call_within(
        self, timeout: float | None, method: str, *args: Any, **kwargs: Any
    ) -> Any:
        """``method(*args, **kwargs)`` on the actor; ``DeadlineExceeded`` after ``timeout`` s."""
        execute = self.client.rpc(self.worker).actor_execute(
            function=method,
            actor=self.key,
            args=[_wire(a) for a in args],
            kwargs={k: _wire(v) for k, v in kwargs.items()},
        )
        try:
            result = await bounded(f"{method} on model actor {self.key}", execute, timeout)
        except (OSError, KeyError) as e:
            raise EngineDead(f"model actor on {self.worker} is unreachable: {e}") from e
        except RuntimeError as e:  # "ConnectionPool is closed": the client was replaced
            if self.client.status == "running":
                raise
            raise EngineDead(f"model actor on {self.worker}: the client closed ({e})") from e
        if result["status"] == "OK":
            return result["result"]
        exc = result["exception"]
        if isinstance(exc, OmaxError):
            raise exc
        if isinstance(exc, KeyError):  # the worker no longer has this actor
            raise EngineDead(f"model actor {self.key} is gone from {self.worker}")
        raise exc

    def __repr__(self) -> str:
        return f"<ActorHandle {self.key} on {self.worker}>"


def _wire(arg: Any) -> Any:
    """``arg`` as msgpack carries it where it can (numbers, strings, lists of
    strings: a poll's arguments), else pickled."""
    if arg is None or isinstance(arg, (bool, int, float, str)):
        return arg
    if isinstance(arg, list) and all(isinstance(a, str) for a in arg):
        return arg
    return to_serialize(arg)
