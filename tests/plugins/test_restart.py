"""After the scheduler restarts, the registry is rebuilt from what workers report:
a worker that comes back under the same name finds its replicas and reports them."""

import os
import subprocess
import time

import pytest
from distributed import Client

from omax.sharding.modelstore import ModelStore
from tests.plugins.test_processes import DASK, _wait_for
from tests.tiny import tiny_llama

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def _start(tmp, env):
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
    addr = _wait_for(r"Scheduler at:\s+(tcp://\S+)", sched).group(1)
    worker = subprocess.Popen(
        [
            DASK,
            "worker",
            addr,
            "--name",
            "gpu-node-1",
            "--nthreads",
            "1",
            "--preload",
            "omax.plugins.worker",
        ],
        stderr=subprocess.DEVNULL,
        env=env,
    )
    return sched, worker, addr


def _stop(*procs):
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()


def test_registry_is_rebuilt_from_worker_reports(tmp_path):
    store = ModelStore(str(tmp_path / "origin"))
    store.import_path(tiny_llama(tmp_path / "tiny"), "tiny")
    digest, _ = store.resolve("tiny")
    env = {
        **os.environ,
        "DASK_OMAX__STORE__URL": str(tmp_path / "origin"),
        "DASK_OMAX__WORKER__STORE": str(tmp_path / "workers" / "{name}"),
    }
    sched, worker, addr = _start(tmp_path, env)
    try:
        with Client(addr, timeout=30) as client:
            client.wait_for_workers(1, timeout=60)
            reply = client.sync(client.scheduler.omax_replicate_model, digest=digest)
            assert reply["complete"], reply
    finally:
        _stop(worker, sched)

    sched, worker, addr = _start(tmp_path, env)  # a new scheduler knows nothing yet
    try:
        with Client(addr, timeout=30) as client:
            client.wait_for_workers(1, timeout=60)
            deadline = time.time() + 30
            replicas = {}
            while time.time() < deadline and digest not in replicas:
                workers = client.sync(client.scheduler.omax_cluster)["workers"]
                replicas = workers[0]["replicas"] if workers else {}
                time.sleep(0.2)
            assert replicas[digest]["complete"]
            assert replicas[digest]["bytes_done"] == replicas[digest]["bytes_total"] > 0
    finally:
        _stop(worker, sched)
