"""After the scheduler restarts, the registry is rebuilt from what workers report:
a worker that comes back under the same name finds its replicas and reports them."""

import os
import time

import pytest
from distributed import Client

from omax.sharding.modelstore import ModelStore
from tests.plugins.dask_procs import start_scheduler, start_worker, stop, tail
from tests.tiny import tiny_llama

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def _logged(proc, logger, words):
    return any(logger in line and words in line for line in list(proc.log))


def _start(env):
    sched, addr = start_scheduler(env)
    return sched, start_worker(addr, env, "--name", "gpu-node-1"), addr


def test_registry_is_rebuilt_from_worker_reports(tmp_path):
    store = ModelStore(str(tmp_path / "origin"))
    store.import_path(tiny_llama(tmp_path / "tiny"), "tiny")
    digest, _ = store.resolve("tiny")
    env = {
        **os.environ,
        "DASK_OMAX__STORE__URL": str(tmp_path / "origin"),
        "DASK_OMAX__WORKER__STORE": str(tmp_path / "workers" / "{name}"),
    }
    sched, worker, addr = _start(env)
    try:
        with Client(addr, timeout=30) as client:
            client.wait_for_workers(1, timeout=60)
            reply = client.sync(client.scheduler.omax_replicate_model, digest=digest)
            assert reply["complete"], reply
        # omax's own INFO lines reach the processes' stderr beside Dask's
        deadline = time.time() + 10
        while time.time() < deadline and not _logged(worker, "omax.plugins.replicas", "complete"):
            time.sleep(0.1)
        assert _logged(sched, "omax.plugins.replicator", "replicating"), tail(sched)
        assert _logged(worker, "omax.plugins.replicas", "complete"), tail(worker)
    finally:
        stop(worker, sched)

    sched, worker, addr = _start(env)  # a new scheduler knows nothing yet
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
        stop(worker, sched)
