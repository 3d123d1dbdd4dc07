"""A model whose engine dies (its batching step raises) is unloaded and reported, and
the next request loads it afresh: a real LocalCluster with the omax plugins, the HTTP
app in process over ``ClusterRuntime``, and a tiny model.

The step fails through ``omax.engine.fault-inject-step`` (test only: a step running a
request whose prompt holds the marker raises, as a broken kernel would)."""

from __future__ import annotations

import asyncio
import logging
import pickle

import dask.config
import httpx
import pytest

from omax.embedded import start_cluster
from omax.engine.fault_injection import FAULT_KEY
from omax.engine.request import GenerateRequest, SamplingOptions
from omax.serve.actors import ActorHandle
from omax.serve.app import build_app
from omax.serve.cluster import ClusterRuntime
from omax.sharding.modelstore import ModelStore
from tests.tiny import tiny_llama

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

MARKER = "EXPLODE"


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dead-engine")
    ModelStore(str(tmp / "origin")).import_path(tiny_llama(tmp / "tiny"), "tiny")
    return tmp


def _config(tmp) -> dict:
    return {
        "omax.store.url": str(tmp / "origin"),
        "omax.worker.store": str(tmp / "workers" / "{name}"),
        "omax.serve.keep-alive": -1,
        "omax.engine.native-decode": "off",
        FAULT_KEY: MARKER,
    }


def _generate(prompt: str) -> dict:
    return {
        "model": "tiny",
        "prompt": prompt,
        "raw": True,
        "stream": False,
        "options": {"num_predict": 3, "temperature": 0},
    }


async def _with_cluster(tmp, scenario):
    with dask.config.set(_config(tmp)):  # the worker processes take it at their start
        cluster = await start_cluster(1, ":0")
        try:
            runtime = await ClusterRuntime.connect(cluster.scheduler_address)
            try:
                return await scenario(runtime)
            finally:
                await runtime.close()
        finally:
            await cluster.close()


def test_a_failed_step_unloads_the_model_and_the_next_request_loads_it_afresh(store_dir, caplog):
    caplog.set_level(logging.ERROR, logger="omax.plugins.lifecycle")

    async def scenario(runtime):
        transport = httpx.ASGITransport(app=build_app(runtime))
        async with httpx.AsyncClient(transport=transport, base_url="http://omax") as http:
            ok = await http.post("/api/generate", json=_generate("hello"), timeout=120)
            assert ok.status_code == 200, ok.text
            [before] = await runtime.client.scheduler.omax_ps()

            failed = await http.post("/api/generate", json=_generate(f"hello {MARKER}"))
            ps_after = (await http.get("/api/ps")).json()
            cluster = await runtime.client.scheduler.omax_cluster()

            again = await http.post("/api/generate", json=_generate("hello"), timeout=120)
            [after] = await runtime.client.scheduler.omax_ps()
            return before, failed, ps_after, cluster, ok.json(), again, after

    before, failed, ps_after, cluster, ok, again, after = asyncio.run(
        _with_cluster(store_dir, scenario)
    )
    assert failed.status_code == 500
    assert "engine step failed" in failed.json()["error"] and FAULT_KEY in failed.json()["error"]
    # unloaded before the failing request was answered: its slot is free
    assert ps_after == {"models": []}
    assert all(not w["loaded"] for w in cluster["workers"])
    [report] = cluster["failed"]
    assert report["name"] == "tiny:latest" and report["worker"] == before["worker"]
    assert FAULT_KEY in report["reason"]
    [line] = [r for r in caplog.records if r.name == "omax.plugins.lifecycle"]
    assert "tiny:latest" in line.getMessage() and before["worker"] in line.getMessage()
    assert FAULT_KEY in line.getMessage()
    # the next request is served by a fresh actor, and says what the first one said
    assert again.status_code == 200, again.text
    assert again.json()["response"] == ok["response"]
    assert after["key"] != before["key"] and after["ready"]


def test_a_request_routed_to_an_engine_that_died_unnoticed_is_retried_on_a_fresh_load(
    store_dir,
):
    """The engine dies with no front door watching (the scheduler still lists it): the
    next request's submit finds it dead, reports it and goes to a fresh actor."""

    async def scenario(runtime):
        digest, _ = await runtime.names.resolve("tiny")
        [dying] = await runtime.actors.ensure("tiny", digest, 512, None)
        opts = SamplingOptions(num_predict=3)
        rid = await dying.call("submit", GenerateRequest("tiny", prompt=MARKER, options=opts))
        chunks: list = []
        while not (chunks and chunks[-1].done):
            reply = pickle.loads(await dying.call("poll_wire", [rid], 1.0))
            chunks += reply.get(rid, [])
        stats = await ActorHandle(runtime.client, dying.worker, dying.key).call("stats")
        listed = await runtime.client.scheduler.omax_ps()

        request = GenerateRequest("tiny", prompt="hello", raw=True, options=opts)
        served = [c async for c in runtime.generate(request)]
        after = await runtime.client.scheduler.omax_ps()
        failed = (await runtime.client.scheduler.omax_cluster())["failed"]
        return dying.key, chunks[-1], stats, listed, served, after, failed

    key, last, stats, listed, served, after, failed = asyncio.run(
        _with_cluster(store_dir, scenario)
    )
    assert last.done_reason == "error" and FAULT_KEY in last.error
    assert stats["dead"] == last.error and stats["live"] == 0
    assert [m["key"] for m in listed] == [key]  # nobody told the scheduler yet
    assert served[-1].done and served[-1].metrics.eval_count == 3 and not served[-1].error
    assert [m["key"] for m in after] != [key] and len(after) == 1
    assert [f["reason"] for f in failed] == [last.error]
