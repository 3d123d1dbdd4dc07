"""A byte flipped in a loaded model's replica, then the model reloaded.

Real parts: the embedded LocalCluster (scheduler in this process, one worker
process) with the omax plugins, the HTTP app in process over ``ClusterRuntime``, a
tiny random llama. The damage is real: one byte of a chunk blob in the worker's
store is flipped on disk while the model is loaded. After an unload, the next request
loads it again: the load finds the blob does not hash to its name, the worker
quarantines it, the scheduler fetches the replica again from the origin and loads
once more, and the request is answered with the same greedy tokens as before the
damage, not a 400.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import dask.config
import httpx
import pytest

from omax.embedded import start_cluster
from omax.serve.app import build_app
from omax.serve.cluster import ClusterRuntime
from omax.sharding.blobs import BlobStore
from omax.sharding.modelstore import ModelStore
from tests.tiny import tiny_llama

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

GENERATE = {
    "model": "tiny",
    "prompt": "the quick brown fox",
    "raw": True,
    "stream": False,
    "options": {"num_predict": 8, "temperature": 0, "seed": 1},
}


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


def test_a_flipped_byte_is_quarantined_refetched_and_the_model_serves_the_same(tmp_path, caplog):
    origin = ModelStore(str(tmp_path / "origin"), chunk_bytes=1 << 18)
    origin.import_path(tiny_llama(tmp_path / "tiny"), "tiny")
    digest, manifest = origin.resolve("tiny")
    sizes = manifest.blob_sizes()
    victim = max(sizes, key=lambda d: (sizes[d], d))  # a chunk of the embedding
    caplog.set_level(logging.WARNING, logger="omax.plugins")
    config = {
        "omax.store.url": str(tmp_path / "origin"),
        "omax.worker.store": str(tmp_path / "workers" / "{name}"),
        "omax.serve.keep-alive": -1,
        "omax.engine.native-decode": "off",
    }

    async def scenario(runtime):
        transport = httpx.ASGITransport(app=build_app(runtime))
        async with httpx.AsyncClient(transport=transport, base_url="http://omax") as http:
            before = await http.post("/api/generate", json=GENERATE, timeout=120)
            assert before.status_code == 200, before.text
            [worker_store] = (tmp_path / "workers").iterdir()
            blob = BlobStore(str(worker_store))
            _flip(Path(blob.path(victim)), offset=sizes[victim] // 2)
            assert not blob.verify(victim)
            assert await runtime.client.scheduler.omax_unload(digest=digest) == 1
            after = await http.post("/api/generate", json=GENERATE, timeout=120)
            cluster = await runtime.client.scheduler.omax_cluster()
            return before, after, blob, cluster

    async def main():
        with dask.config.set(config):  # the worker process takes it at its start
            cluster = await start_cluster(1, ":0")
            try:
                runtime = await ClusterRuntime.connect(cluster.scheduler_address)
                try:
                    return await scenario(runtime)
                finally:
                    await runtime.close()
            finally:
                await cluster.close()

    before, after, blob, cluster = asyncio.run(main())
    # served, and served the same greedy tokens as before the damage
    assert after.status_code == 200, after.text
    assert after.json()["response"] == before.json()["response"]
    assert after.json()["eval_count"] == before.json()["eval_count"] == 8
    # repaired: good bytes under the name again, the damaged ones set aside
    assert blob.verify(victim)
    assert blob.verify_all() == []
    [moved] = blob.quarantined()
    assert Path(moved).name.startswith(victim[7:])
    # logged, and kept where an operator looks (``omax_cluster``'s bad sources)
    [damage] = [d for d in cluster["bad_sources"] if d["digest"] == digest]
    assert victim[7:19] in damage["reason"] or "damaged" in damage["reason"]
    lines = [r.getMessage() for r in caplog.records if r.name == "omax.plugins.replicator"]
    assert any("failed verification at load" in line for line in lines), lines
