"""A real cluster for the dashboard and metrics tests: a LocalCluster (worker
processes, the omax preloads) with the demo model loaded, traffic on demand and a
deliberately slow replication of a second, synthetic model under way."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dask
import pytest
from distributed import Client, LocalCluster

from omax.engine.request import GenerateRequest, SamplingOptions
from omax.plugins.worker import plugin_of
from omax.serve.cluster import ClusterRuntime
from omax.sharding.modelstore import ModelStore
from tests.plugins.test_replication_cluster import make_model

DEMO = "smollm2:135m"
SLOW_RATE = 1 << 20  # bytes/s of the slow fetch: ~24 s for the synthetic model


@dataclass
class Observed:
    client: Client
    dashboard: str  # http://127.0.0.1:PORT
    worker: str
    worker_http: str  # the worker's own HTTP server (its /metrics)
    demo: str  # digest of the loaded demo model
    slow: str  # digest of the model being fetched slowly


async def _start_slow_fetch(digest: str, rate: int, dask_worker) -> None:
    plugin = plugin_of(dask_worker)
    task = asyncio.ensure_future(plugin.replicate(digest, rate=rate))
    plugin.pushes.add(task)  # owned by the plugin: awaited by its next report
    task.add_done_callback(plugin.pushes.discard)


def generate(address: str, n: int = 3, tokens: int = 16) -> list:
    """``n`` generations of the demo model through the front door's runtime."""

    async def run() -> list:
        runtime = await ClusterRuntime.connect(address)
        try:
            out = []
            for i in range(n):
                req = GenerateRequest(
                    model=DEMO,
                    prompt=f"Count to ten, take {i}:",
                    options=SamplingOptions(num_predict=tokens, temperature=0),
                )
                out.append([c async for c in runtime.generate(req)])
            return out
        finally:
            await runtime.close()

    # in a thread: Playwright's sync API keeps an event loop running in this one
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, run()).result()


def wait_for(cond, timeout: float = 30, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what} not reached in {timeout}s")


@contextlib.contextmanager
def observed_cluster(tmp: Path) -> Iterator[Observed]:
    from omax.sharding.bundled import smollm2_gguf_path

    try:
        path = smollm2_gguf_path()
    except Exception as e:  # the demo package is a dev dependency
        pytest.skip(str(e))
    origin = str(tmp / "origin")
    store = ModelStore(origin)
    store.import_path(path, DEMO)
    demo = store.resolve(DEMO)[0]
    slow, _, _ = make_model(origin, 12, 2 << 20, seed=7)
    config = {
        "omax.store.url": origin,
        "omax.worker.store": str(tmp / "workers" / "{name}"),
        "omax.engine.native-decode": "off",
    }
    # set while the scheduler plugin and the workers start (they read it then), not
    # for the rest of the session
    with dask.config.set(config):
        cluster = LocalCluster(
            n_workers=1,
            threads_per_worker=2,
            processes=True,
            dashboard_address="127.0.0.1:0",
            scheduler_kwargs={"preload": ["omax.plugins.scheduler"]},
            preload=["omax.plugins.worker"],
            memory_limit=0,
        )
    # not the default client: a later test's actor handles would bind to it
    with cluster, Client(cluster, set_as_default=False) as client:
        client.wait_for_workers(1, timeout=60)
        [worker] = client.scheduler_info()["workers"]
        info = client.scheduler_info()["workers"][worker]
        host = worker.split("://")[1].rsplit(":", 1)[0]
        reply = client.sync(client.scheduler.omax_replicate_model, digest=demo)
        assert reply["complete"], reply
        loaded = client.sync(client.scheduler.omax_ensure, name=DEMO, digest=demo)
        assert "actors" in loaded, loaded
        client.run(_start_slow_fetch, slow, SLOW_RATE)
        dashboard = cluster.dashboard_link.rsplit("/", 1)[0]
        yield Observed(
            client=client,
            dashboard=dashboard,
            worker=worker,
            worker_http=f"http://{host}:{info['services']['dashboard']}",
            demo=demo,
            slow=slow,
        )
