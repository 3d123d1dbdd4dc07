"""Replication across real Dask worker processes with the omax preloads.

One LocalCluster (three worker processes, nanny-restarted when killed) for the
module; a fourth ``dask worker`` process with its own store where a test must kill
a worker and start it again on the same disk.
"""

import asyncio
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from omax.plugins.worker import plugin_of
from omax.sharding.blobs import BlobStore
from omax.sharding.manifest import Manifest, TensorEntry
from tests.cluster import omax_cluster
from tests.plugins.dask_procs import worker_records

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

DASK = str(Path(sys.executable).with_name("dask"))


def make_model(url, n_blobs, size, seed):
    """A manifest of ``n_blobs`` random blobs of distinct sizes; its digest and bytes."""
    store = BlobStore(url)
    rng = random.Random(seed)
    chunks = {}
    for i in range(n_blobs):
        data = rng.randbytes(size + 1000 * i)
        chunks[f"c/{i}"] = (store.put_bytes(data), len(data))
    tensor = TensorEntry(
        "w",
        (n_blobs,),
        "uint8",
        (n_blobs,),
        "uint8",
        (1,),
        chunks,
        sum(s for _, s in chunks.values()),
    )
    manifest = Manifest(
        format="safetensors", family="test", config={"seed": seed}, tensors=(tensor,)
    )
    raw = manifest.to_json()
    return store.put_bytes(raw), manifest, sum(s for _, s in chunks.values()) + len(raw)


def holders(client, digest):
    state = client.sync(client.scheduler.omax_cluster)
    return sorted(
        w["address"] for w in state["workers"] if w["replicas"].get(digest, {}).get("complete")
    )


def on(client, addr, fn, *args):
    return client.run(fn, *args, workers=[addr])[addr]


def _store_of(dask_worker):
    return str(plugin_of(dask_worker).replicas.path)


def _served(dask_worker):
    return plugin_of(dask_worker).served_bytes


def _verify_all(dask_worker):
    return plugin_of(dask_worker).replicas.store.verify_all()


def _flip_byte(blob, dask_worker):
    path = plugin_of(dask_worker).replicas.store.path(blob)
    with open(path, "r+b") as f:
        f.seek(100)
        b = f.read(1)
        f.seek(100)
        f.write(bytes([b[0] ^ 0xFF]))


async def _die():
    asyncio.get_running_loop().call_later(0.1, os._exit, 1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("replication")
    settings = {
        "omax.store.url": str(tmp / "origin"),
        # by address: a worker its nanny restarts starts on an empty disk
        "omax.worker.store": str(tmp / "w" / "{address}"),
        "omax.replication.target": 2,
    }
    with omax_cluster(settings, n_workers=3) as client:
        _wait(lambda: len(client.sync(client.scheduler.omax_cluster)["workers"]) == 3)
        yield client, tmp


def _wait(cond, timeout=60, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} not reached in {timeout}s")


def test_a_damaged_source_is_reported_and_the_target_still_verifies(cluster):
    client, tmp = cluster
    digest, manifest, total = make_model(str(tmp / "origin"), 10, 200_000, seed=1)
    r = client.sync(client.scheduler.omax_replicate_model, digest=digest, target=2)
    assert r["complete"], r
    first, second = r["workers"]
    # the largest blob is planned to come from the first holder: damage it there
    sizes = manifest.blob_sizes()
    victim = max(sizes, key=lambda d: (sizes[d], d))
    on(client, first, _flip_byte, victim)
    r = client.sync(client.scheduler.omax_replicate_model, digest=digest, target=3)
    assert r["complete"], r
    (target,) = set(r["workers"]) - {first, second}
    assert on(client, target, _verify_all) == []
    state = client.sync(client.scheduler.omax_cluster)
    assert any(b["source"] == first and b["blob"] == victim for b in state["bad_sources"])
    # the scheduler had the source re-verify: it dropped the bad blob and was repaired
    _wait(lambda: first in holders(client, digest), what="source repaired")
    assert on(client, first, _verify_all) == []


def test_a_killed_target_resumes_without_refetching_verified_blobs(cluster):
    client, tmp = cluster
    digest, manifest, total = make_model(str(tmp / "origin"), 24, 1 << 20, seed=2)
    r = client.sync(client.scheduler.omax_replicate_model, digest=digest, target=1)
    (source,) = r["workers"]
    before = set(worker_records(client))
    store = tmp / "target"
    root = str(Path(__file__).resolve().parents[2])  # so it can unpickle this module's functions
    env = {**os.environ, "DASK_OMAX__WORKER__STORE": str(store), "PYTHONPATH": root}
    cmd = [DASK, "worker", client.scheduler.address, "--no-nanny", "--nthreads", "1"]
    cmd += ["--preload", "omax.plugins.worker"]

    def start():
        proc = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
        _wait(lambda: set(worker_records(client)) - before, what="worker joined")
        (addr,) = set(worker_records(client)) - before
        return proc, addr

    proc, target = start()
    try:
        errors = []

        def slow_fetch():  # about 3 s at 8 MB/s
            try:
                client.sync(
                    client.rpc(target).omax_replicate, digest=digest, peers=[source], rate=8e6
                )
            except Exception as e:
                errors.append(e)

        t = threading.Thread(target=slow_fetch)
        t.start()

        def progressed():
            state = client.sync(client.scheduler.omax_cluster)
            for w in state["workers"]:
                for p in w.get("replicating", []) if w["address"] == target else []:
                    if p["digest"] == digest and p["completed"] > 0.3 * total:
                        return True
            return False

        _wait(progressed, what="30% fetched")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        t.join(30)
        assert errors, "the fetch should have died with its worker"
        kept = [p for p in (store / "blobs" / "sha256").rglob("*") if p.is_file()]
        kept_bytes = sum(p.stat().st_size for p in kept)
        assert 0.2 * total < kept_bytes < total
        assert not any((store / "replicas").glob("*.complete"))
        assert any((store / "replicas").glob("*.partial"))

        before = set(worker_records(client))
        proc, target = start()
        served = on(client, source, _served)
        r = client.sync(client.rpc(target).omax_replicate, digest=digest, peers=[source])
        assert r["complete"] and r["present"] == kept_bytes
        assert r["fetched_bytes"] == total - kept_bytes  # nothing verified was fetched again
        assert on(client, source, _served) - served == r["fetched_bytes"]
        assert on(client, target, _verify_all) == []
    finally:
        proc.kill()
        proc.wait(10)


def test_losing_one_of_two_required_replicas_restores_the_count(cluster):
    client, tmp = cluster
    digest, _, _ = make_model(str(tmp / "origin"), 6, 300_000, seed=3)
    r = client.sync(client.scheduler.omax_replicate_model, digest=digest)  # target 2
    assert r["target"] == 2 and len(r["workers"]) == 2, r
    doomed = r["workers"][0]
    client.run(_die, workers=[doomed])  # its nanny starts a fresh worker on an empty disk
    _wait(
        lambda: (h := holders(client, digest)) and len(h) == 2 and doomed not in h,
        what="two replicas again",
    )


def test_a_drop_is_refused_while_a_fetch_runs_and_allowed_after(cluster):
    """A fetch counts on the blobs it found present; a drop meanwhile could delete
    shared ones under it, so the worker refuses drops until its fetches end."""
    client, tmp = cluster
    origin = str(tmp / "origin")
    kept, _, _ = make_model(origin, 2, 100_000, seed=31)
    slow, _, _ = make_model(origin, 4, 250_000, seed=32)
    worker = sorted(worker_records(client))[0]
    assert client.sync(client.rpc(worker).omax_replicate, digest=kept)["complete"]

    async def race():
        rpc = client.rpc(worker)
        fetch = asyncio.ensure_future(rpc.omax_replicate(digest=slow, rate=400_000))
        await asyncio.sleep(0.5)  # ~2.5 s at 400 kB/s: still fetching
        refused = await rpc.omax_drop_replica(digest=kept)
        still_fetching = not fetch.done()
        done = await fetch
        return refused, still_fetching, done, await rpc.omax_drop_replica(digest=kept)

    refused, still_fetching, done, freed = client.sync(race)
    assert still_fetching and refused == 0
    assert done["complete"] and freed >= 200_000
    _wait(lambda: worker not in holders(client, kept), what="kept dropped")
    assert worker in holders(client, slow)
