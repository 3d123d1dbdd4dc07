"""``gc`` on the origin store while a replication copies a model nobody names.

Real parts: a LocalCluster (scheduler in this process, one worker process) with the
omax plugins and a tiny llama cut into many chunks. The model's name is deleted and
its blobs are made look old, so only the replication's lease keeps ``gc`` off them;
``gc`` runs (removing for real, no grace) while the worker copies them slowly. The
replication completes, every blob verifies, and the model loads from the replica.
(``gc`` during a long import: ``tests/sharding/test_durable.py``.)
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from omax.sharding import leases
from omax.sharding.modelstore import ModelStore
from tests.cluster import omax_cluster
from tests.tiny import tiny_llama

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def _verify_replica(dask_worker):
    from omax.plugins.worker import plugin_of

    return plugin_of(dask_worker).replicas.store.verify_all()


def test_gc_during_a_replication_loses_nothing(tmp_path):
    url = str(tmp_path / "origin")
    origin = ModelStore(url, chunk_bytes=1 << 16)
    origin.import_path(tiny_llama(tmp_path / "tiny", seed=5), "tiny")
    digest, manifest = origin.resolve("tiny")
    total = manifest.total_size
    origin.delete("tiny")  # nothing names it: only a lease protects it now
    old = time.time() - 7200
    for path in (tmp_path / "origin" / "blobs" / "sha256").rglob("*"):
        if path.is_file():
            os.utime(path, (old, old))
    assert len(origin.gc(dry_run=True, grace_s=0)[0]) == len(manifest.blob_digests()) + 1

    settings = {"omax.store.url": url, "omax.worker.store": str(tmp_path / "w" / "{name}")}
    with omax_cluster(settings) as client:
        [worker] = client.scheduler_info()["workers"]
        replies: list = []

        def replicate() -> None:  # about 3 s at this rate
            call = client.rpc(worker).omax_replicate
            replies.append(client.sync(call, digest=digest, rate=total / 3))

        thread = threading.Thread(target=replicate)
        thread.start()
        deadline = time.time() + 30
        while time.time() < deadline and not leases.read_leases(origin.blobs):
            time.sleep(0.02)
        [lease] = leases.read_leases(origin.blobs)
        assert lease.manifests == (digest,)
        removed, _ = ModelStore(url).gc(dry_run=False, grace_s=0)
        assert removed == []  # the lease names the model: nothing of it goes
        thread.join(60)
        [reply] = replies
        assert reply["complete"] and reply["bytes_done"] == total, reply
        assert client.run(_verify_replica)[worker] == []
        assert leases.read_leases(origin.blobs) == []  # released with the fetch

        loaded = client.sync(client.scheduler.omax_ensure, name="tiny", digest=digest, num_ctx=256)
        assert [a["worker"] for a in loaded["actors"]] == [worker], loaded
