"""`dask scheduler` and `dask worker` started as processes with the omax preloads."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from distributed import Client

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

DASK = str(Path(sys.executable).with_name("dask"))


def _wait_for(pattern, proc, timeout=60):
    deadline = time.time() + timeout
    lines = []
    while time.time() < deadline:
        line = proc.stderr.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        lines.append(line)
        m = re.search(pattern, line)
        if m:
            return m
    raise AssertionError(f"{pattern!r} not seen:\n{''.join(lines)}")


@pytest.fixture
def dask_processes(tmp_path):
    env = {
        **os.environ,
        "DASK_OMAX__STORE__URL": str(tmp_path / "origin"),
        "DASK_OMAX__WORKER__STORE": str(tmp_path / "workers" / "{name}"),
    }
    procs = []
    sched = subprocess.Popen(
        [
            DASK,
            "scheduler",
            "--port",
            "0",
            "--dashboard-address",
            ":0",
            "--preload",
            "omax.plugins.scheduler",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    procs.append(sched)
    try:
        addr = _wait_for(r"Scheduler at:\s+(tcp://\S+)", sched).group(1)
        for mem in ("3 GiB", "5 GiB"):
            w = subprocess.Popen(
                [
                    DASK,
                    "worker",
                    addr,
                    "--nthreads",
                    "1",
                    "--no-nanny",
                    "--resources",
                    "GPU=1",
                    "--preload",
                    "omax.plugins.worker",
                ],
                stderr=subprocess.PIPE,
                text=True,
                env={**env, "DASK_OMAX__WORKER__SLOT_MEMORY": mem},
            )
            procs.append(w)
        yield addr, tmp_path
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()


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
