"""A thin handle for calling a ModelActor's methods from a front door.

``distributed.actor.Actor`` registers a Future for its key with the client, which
would keep an actor alive after the scheduler unloads it. The front door only needs
to call methods, so it speaks the worker's ``actor_execute`` RPC directly, over the
client's connection pool (``direct_to_workers``).
"""

from __future__ import annotations

from typing import Any

from distributed import Client
from distributed.protocol import to_serialize

from omax.errors import EngineDead, OmaxError


class ActorHandle:
    def __init__(self, client: Client, worker: str, key: str) -> None:
        self.client = client
        self.worker = worker
        self.key = key

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            result = await self.client.rpc(self.worker).actor_execute(
                function=method,
                actor=self.key,
                args=[_wire(a) for a in args],
                kwargs={k: _wire(v) for k, v in kwargs.items()},
            )
        except (OSError, KeyError) as e:
            raise EngineDead(f"model actor on {self.worker} is unreachable: {e}") from e
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
