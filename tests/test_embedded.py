"""The embedded cluster keeps Dask's housekeeping off the cores a CPU model decodes on."""

from __future__ import annotations

import asyncio

import dask.config
from distributed import Client

from omax.embedded import start_cluster


def _settings() -> tuple[bool, str]:
    return (
        dask.config.get("distributed.worker.profile.enabled"),
        dask.config.get("distributed.admin.tick.interval"),
    )


def test_embedded_workers_skip_the_profiler_and_tick_slowly_unless_the_user_set_them():
    async def worker_settings() -> tuple[bool, str]:
        cluster = await start_cluster(1, ":0")
        try:
            async with Client(cluster, asynchronous=True) as client:
                return next(iter((await client.run(_settings)).values()))
        finally:
            await cluster.close()

    assert asyncio.run(worker_settings()) == (False, "1s")
    with dask.config.set({"distributed.admin.tick.interval": "50ms"}):
        assert asyncio.run(worker_settings()) == (False, "50ms")  # the user's value wins


def test_one_worker_per_gpu_sees_only_its_device_and_keeps_its_name(monkeypatch):
    """The embedded cluster on a machine with two GPUs (counted by a stand-in for
    torch.cuda here, which has no GPU): each worker process gets its own device."""
    import omax.embedded

    monkeypatch.setattr(omax.embedded, "gpu_count", lambda: 2)

    async def main() -> list:
        cluster = await start_cluster(None, ":0")
        try:
            async with Client(cluster, asynchronous=True) as client:
                info = client.scheduler_info()["workers"].values()
                assert all(w["resources"] == {"GPU": 1} for w in info)
                return sorted((await client.run(_device_of)).values())
        finally:
            await cluster.close()

    assert asyncio.run(main()) == [("gpu0", "0"), ("gpu1", "1")]


def _device_of(dask_worker) -> tuple[str, str]:
    import os

    return dask_worker.name, os.environ.get("CUDA_VISIBLE_DEVICES", "")
