"""Request leases: a generation nobody polls is cancelled; one that is polled runs on."""

from __future__ import annotations

import asyncio
import time

from omax.engine.actor import ModelActor
from omax.engine.request import GenerateRequest, SamplingOptions
from omax.engine.request_leases import RequestLeases

from .test_actor import tiny_source


def test_leases_expire_unless_renewed():
    leases = RequestLeases(now=0.0)
    leases.renew(["a", "b"], now=1.0)
    assert leases.idle_for(5.0) == 0.0  # held leases: busy
    leases.renew(["a"], now=9.0)
    assert leases.expired(now=12.0, ttl=10.0) == ["b"]
    assert len(leases) == 1
    leases.end("a", now=13.0)
    assert leases.expired(now=100.0, ttl=10.0) == []
    assert leases.idle_for(20.0) == 7.0


def test_an_unpolled_generation_is_cancelled_and_a_polled_one_finishes(caplog):
    async def main():
        actor = ModelActor(
            "sha256:tiny",
            load_source=tiny_source,
            engine_options={"max_batch": 4, "max_ctx": 256},
            request_lease=0.2,
        )
        await actor.load()
        try:
            long = SamplingOptions(temperature=0.0, num_predict=240)
            orphan = await actor.submit(GenerateRequest(model="t", prompt="a b c", options=long))
            kept = await actor.submit(GenerateRequest(model="t", prompt="x y z", options=long))
            chunks = []
            started = time.monotonic()
            while not (chunks and chunks[-1].done):
                chunks += (await actor.poll([kept], timeout=0.1)).get(kept, [])
                assert time.monotonic() - started < 120
            assert chunks[-1].done_reason == "length"  # ran to its end under its lease
            for _ in range(40):  # the orphan went at its lease (0.2 s) and left nothing
                stats = await actor.stats()
                if stats["live"] == 0 and stats["leases"] == 0 and not actor._unread:
                    break
                await asyncio.sleep(0.1)
            assert stats["live"] == 0 and stats["leases"] == 0
            assert not actor._unread
            assert actor.engine.poll([orphan], 0.0) == {}
            await asyncio.sleep(0.3)
            assert (await actor.stats())["idle_s"] >= 0.2
        finally:
            await actor.close()

    asyncio.run(main())
    assert any("not polled" in r.message and "cancelled" in r.message for r in caplog.records)
