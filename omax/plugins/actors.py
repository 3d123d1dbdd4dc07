"""The scheduler's calls to a ModelActor on its worker: start it, ask it, close it.

Plumbing only: which model loads where, and when one unloads, is ``lifecycle``'s to
decide. An actor is started with ``client.submit(ModelActor, actor=True,
workers=[addr])`` and lives as long as its future is held. It is asked through its
worker's ``actor_execute`` RPC rather than ``distributed.actor.Actor``, which would
register a future of its own and keep the actor alive after the scheduler let it go.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Any

from distributed import Client
from distributed.protocol import Serialized, deserialize

from omax.config import Settings
from omax.errors import DeadlineExceeded
from omax.plugins.memory import PREFIX_ROWS
from omax.plugins.state import Loaded

logger = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 10
STATS_TIMEOUT_S = 5.0


def actor_parts() -> tuple[Any, Any]:
    """The actor class and its weights hook. Call it in a thread: the hook's module
    imports zarr, which would hold the scheduler's event loop up the first time."""
    from omax.engine.actor import ModelActor
    from omax.plugins.source import local_source

    return ModelActor, local_source


def submit_actor(client: Client, cfg: Settings, entry: Loaded, parts: tuple[Any, Any]) -> Any:
    """Submit the ModelActor ``entry`` describes, pinned to its worker and slot, with
    ``parts`` from ``actor_parts``; return the future that keeps it alive."""
    model_actor, local_source = parts
    return client.submit(
        model_actor,
        entry.digest,
        load_source=functools.partial(local_source, entry.digest),
        device=entry.slot,
        dtype=cfg.engine_dtype,
        engine_options={
            "quant": cfg.engine_quant,
            "prefix_rows": PREFIX_ROWS[cfg.prefix_cache],
            "max_batch": cfg.parallel,
            "max_ctx": entry.num_ctx,  # the granted context (/api/ps shows it)
        },
        actor=True,
        workers=[entry.worker],
        allow_other_workers=False,
        pure=False,
        key=entry.key,
    )


async def wait_loaded(future: Any, entry: Loaded, timeout: float) -> None:
    """Wait until the actor of ``future`` started and loaded its weights.

    A load that hangs (a stalled disk, a wedged worker) must not hold every later
    request for this model: past ``timeout`` (omax.serve.start-timeout) for either
    step it fails with DeadlineExceeded."""
    try:
        actor = await asyncio.wait_for(future, timeout)
        await asyncio.wait_for(actor.load(), timeout)
    except TimeoutError:
        raise DeadlineExceeded(
            f"loading '{entry.name}' on {entry.worker} took longer than "
            f"{timeout:.0f} s (omax.serve.start-timeout)"
        ) from None


async def actor_stats(
    rpc: Callable[[str], Any], m: Loaded, timeout: float = STATS_TIMEOUT_S
) -> dict[str, Any] | None:
    """The actor's ``stats``, or None when it cannot be reached within ``timeout`` s."""
    try:
        call = rpc(m.worker).actor_execute(actor=m.key, function="stats", args=(), kwargs={})
        reply = await asyncio.wait_for(call, timeout)
    except Exception as e:
        logger.debug("stats of actor %s: %s", m.key, e)
        return None
    if reply.get("status") != "OK":
        return None
    result = reply.get("result")
    if isinstance(result, Serialized):  # the scheduler's comms leave replies packed
        result = deserialize(result.header, result.frames)
    return result if isinstance(result, dict) else None


async def close_actor(rpc: Callable[[str], Any], worker: str, key: str) -> None:
    """Stop the actor's batching thread and free its memory; failures are logged only
    (a worker that left took the actor with it)."""
    try:
        call = rpc(worker).actor_execute(actor=key, function="close", args=(), kwargs={})
        await asyncio.wait_for(call, CLOSE_TIMEOUT_S)
    except Exception as e:
        logger.debug("closing actor %s: %s", key, e)


async def release(future: Any) -> None:
    """Cancel the actor's future, which releases the actor on its worker."""
    try:
        await future.cancel()
    except Exception:
        pass
