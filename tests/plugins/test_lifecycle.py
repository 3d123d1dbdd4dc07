"""Model lifecycle without a cluster: unload, failure reports, the reaper, errors on
the wire. Loading an actor for real is covered by test_control and the e2e tests."""

import asyncio
import dataclasses
import logging
import uuid

from omax.config import settings
from omax.errors import BlobNotFound, from_wire
from omax.plugins import lifecycle
from omax.plugins.lifecycle import Lifecycle
from omax.plugins.registry import Registry
from omax.plugins.replicator import Replicator
from omax.plugins.state import Loaded
from omax.plugins.tasks import Tasks

A = "sha256:" + "a" * 64
W = "tcp://w:1"


class FakeRpc:
    def __init__(self):
        self.closed: list[str] = []

    def __call__(self, address):
        fake = self

        class Rpc:
            async def actor_execute(self, actor, function, args, kwargs):
                assert function == "close"
                fake.closed.append(actor)

        return Rpc()


def _lifecycle():
    cfg = dataclasses.replace(settings(), store_url=f"memory://omax-lc-{uuid.uuid4().hex}")
    reg, tasks, rpc = Registry(), Tasks(), FakeRpc()
    settled = []

    async def settle():
        settled.append(True)

    life = Lifecycle(cfg, reg, tasks, Replicator(cfg, reg, tasks, rpc), rpc, settle)
    return life, reg, rpc, settled


def _loaded(key, keep_alive=300.0, last_used=0.0, in_flight=0):
    return Loaded(key, "m:latest", A, W, "cpu", 10, 4096, last_used, keep_alive, in_flight, True)


def test_a_failed_actor_is_reported_once_and_unloaded(caplog):
    life, reg, rpc, _ = _lifecycle()
    reg.add_loaded(_loaded("k1", last_used=7.0))
    caplog.set_level(logging.ERROR, logger="omax.plugins.lifecycle")

    async def main():
        first = await life.actor_failed("k1", reason="engine step failed: boom")
        second = await life.actor_failed("k1", reason="again")
        return first, second

    assert asyncio.run(main()) == (True, False)
    assert reg.loaded == {} and rpc.closed == ["k1"]
    [report] = life.failed
    assert report["name"] == "m:latest" and report["reason"] == "engine step failed: boom"
    [line] = caplog.records
    assert "m:latest" in line.getMessage() and W in line.getMessage()
    assert reg.used == {(A, W): 7.0}  # its replica was used until then


def test_touch_counts_requests_and_unload_by_digest_or_key():
    life, reg, rpc, _ = _lifecycle()
    reg.add_loaded(_loaded("k1"))
    reg.add_loaded(_loaded("k2"))
    assert life.touch("k1", delta=1) and reg.loaded["k1"].in_flight == 1
    assert not life.touch("nope", delta=1)
    assert asyncio.run(life.unload(key="k1")) == 1
    assert asyncio.run(life.unload(digest=A)) == 1
    assert reg.loaded == {} and rpc.closed == ["k1", "k2"]


def test_the_reaper_unloads_expired_idle_models_only(monkeypatch):
    monkeypatch.setattr(lifecycle, "REAP_EVERY_S", 0.01)
    life, reg, rpc, _ = _lifecycle()
    reg.add_loaded(_loaded("idle", keep_alive=0.0))
    reg.add_loaded(_loaded("busy", keep_alive=0.0, in_flight=1))
    reg.add_loaded(_loaded("forever", keep_alive=-1.0))

    async def main():
        reaper = life.tasks.spawn(life.reap_forever(), name="reaper")
        await asyncio.sleep(0.1)
        await life.tasks.cancel_all()
        return reaper

    assert asyncio.run(main()).cancelled()
    assert sorted(reg.loaded) == ["busy", "forever"] and rpc.closed == ["idle"]


def test_ensure_answers_a_failed_load_as_a_typed_wire_error():
    life, reg, _, settled = _lifecycle()
    reply = asyncio.run(life.ensure("m", A))  # no manifest in the store
    assert settled == [True]  # waited for joining workers before deciding
    err = from_wire(reply)
    assert type(err) is BlobNotFound and err.status == 404 and life.loading == {}


def test_ensure_serves_ready_actors_and_refreshes_their_keep_alive():
    life, reg, _, settled = _lifecycle()
    reg.add_loaded(_loaded("k1", keep_alive=5.0))
    life.cfg = dataclasses.replace(life.cfg, loaded_replicas=1)
    reply = asyncio.run(life.ensure("m", A, keep_alive=60.0))
    assert reply == {"actors": [{"worker": W, "key": "k1"}]} and settled == []
    assert reg.loaded["k1"].keep_alive == 60.0
