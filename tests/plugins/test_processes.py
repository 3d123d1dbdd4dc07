"""`dask scheduler` and `dask worker` started as processes with the omax preloads."""

import os
import time

import pytest
from distributed import Client

from tests.plugins.dask_procs import start_scheduler, start_worker, stop

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture
def dask_processes(tmp_path):
    env = {
        **os.environ,
        "DASK_OMAX__STORE__URL": str(tmp_path / "origin"),
        "DASK_OMAX__WORKER__STORE": str(tmp_path / "workers" / "{name}"),
    }
    sched, addr = start_scheduler(env)
    workers = [
        start_worker(
            addr,
            {**env, "DASK_OMAX__WORKER__SLOT_MEMORY": mem},
            "--no-nanny",
            "--resources",
            "GPU=1",
        )
        for mem in ("3 GiB", "5 GiB")
    ]
    try:
        yield addr, tmp_path
    finally:
        stop(*workers, sched)


def test_preloads_register_and_report_slots(dask_processes):
    addr, tmp_path = dask_processes
    with Client(addr, timeout=30) as client:
        client.wait_for_workers(2, timeout=60)
        info = client.run_on_scheduler(lambda dask_scheduler: sorted(dask_scheduler.plugins))
        assert "omax" in info
        deadline = time.time() + 30
        while time.time() < deadline:
            state = client.sync(client.scheduler.omax_cluster)
            if len(state["workers"]) == 2:
                break
            time.sleep(0.2)
        memories = sorted(w["slots"][0]["memory_total"] for w in state["workers"])
        assert memories == [3 * 2**30, 5 * 2**30]
        assert all(w["slots"][0]["device"] == "cpu" for w in state["workers"])
        assert client.sync(client.scheduler.omax_info)["store_url"] == str(tmp_path / "origin")
        # each worker opened its own local store
        assert len(list((tmp_path / "workers").iterdir())) == 2


def test_scheduler_is_the_catalog_writer(dask_processes):
    from omax.sharding.catalog import Catalog

    addr, tmp_path = dask_processes
    digest = "sha256:" + "ab" * 32
    with Client(addr, timeout=30) as client:
        reply = client.sync(client.scheduler.omax_catalog_set, name="m", digest=digest, size=7)
        assert reply == {"name": "m:latest", "digest": digest}
        assert Catalog(str(tmp_path / "origin")).get("m").digest == digest
        gone = client.sync(client.scheduler.omax_catalog_delete, name="m")
        assert gone["entry"]["digest"] == digest
        missing = client.sync(client.scheduler.omax_catalog_delete, name="m")
        assert missing["status"] == 404
