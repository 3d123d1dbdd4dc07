"""Loading a model never stalls its worker's event loop: heartbeats, other actors'
polls and blob streams keep being answered while the weights load.

A real LocalCluster with the omax plugins loads the demo model (the SmolLM2 GGUF
``omax serve`` bundles) from the worker's local replica while a coroutine on the
worker's loop records the longest it waited past a 5 ms sleep. Importing the engine
(torch, transformers) where the worker unpickled the actor's task, on its loop, held
it for 2-4 s on two cores."""

from __future__ import annotations

import asyncio
import time

import dask.config
import pytest
from distributed import Client

from omax.embedded import start_cluster
from omax.sharding.bundled import smollm2_gguf_path
from omax.sharding.modelstore import ModelStore

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

DEMO = "smollm2:135m"
BOUND_S = 1.0  # generous: what remains is GIL hand-over and a busy machine


async def _watch_loop(dask_worker) -> None:
    """Start recording the worker's longest event-loop stall."""
    state = {"max": 0.0}

    async def tick() -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.005)
            state["max"] = max(state["max"], time.perf_counter() - t - 0.005)

    dask_worker._omax_stall = (state, asyncio.ensure_future(tick()))


def _largest_stall(dask_worker) -> float:
    state, task = dask_worker._omax_stall
    task.cancel()
    return state["max"]


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory):
    try:
        path = smollm2_gguf_path()
    except Exception as e:  # the demo package is a dev dependency
        pytest.skip(str(e))
    tmp = tmp_path_factory.mktemp("load-stall")
    store = ModelStore(str(tmp / "origin"))
    store.import_path(path, DEMO)
    return tmp, store.resolve(DEMO)[0]


def test_loading_the_demo_model_never_stalls_the_workers_event_loop(demo_store):
    tmp, digest = demo_store
    config = {
        "omax.store.url": str(tmp / "origin"),
        "omax.worker.store": str(tmp / "workers" / "{name}"),
        "omax.engine.native-decode": "off",  # no compiler in the background meanwhile
    }

    async def scenario() -> tuple[float, dict]:
        with dask.config.set(config):
            cluster = await start_cluster(1, ":0")
        try:
            async with Client(cluster, asynchronous=True) as client:
                replica = await client.scheduler.omax_replicate_model(digest=digest)
                assert replica["complete"], replica
                await client.run(_watch_loop)
                loaded = await client.scheduler.omax_ensure(name=DEMO, digest=digest)
                [stall] = (await client.run(_largest_stall)).values()
                return stall, loaded
        finally:
            await cluster.close()

    stall, loaded = asyncio.run(scenario())
    assert "actors" in loaded, loaded
    assert stall < BOUND_S, f"the worker's event loop stalled {stall:.2f} s during the load"
