"""Replication orchestration against a fake worker RPC: no Dask, one event loop."""

import asyncio
import dataclasses
import uuid

from omax.config import settings
from omax.errors import OmaxError, from_wire, is_wire_error
from omax.plugins.registry import Registry
from omax.plugins.replicator import Replicator
from omax.plugins.tasks import Tasks
from omax.sharding.wanted import read_wanted, write_wanted

A = "sha256:" + "a" * 64
W1, W2 = "tcp://w1:1", "tcp://w2:1"


class FakeWorkers:
    """Each worker's ``omax_replicate``: waits for ``gate``, then answers or fails."""

    def __init__(self, fail=()):
        self.calls: list[tuple[str, str, list[str]]] = []
        self.gate = asyncio.Event()
        self.fail = set(fail)

    def __call__(self, address):
        fake = self

        class Rpc:
            async def omax_replicate(self, digest, origin, peers):
                fake.calls.append((address, digest, peers))
                await fake.gate.wait()
                if address in fake.fail:
                    raise OSError(f"{address} cannot fetch")
                return {"digest": digest, "complete": True, "bytes_done": 1, "bytes_total": 1}

        return Rpc()


def _replicator(rpc, target=1):
    url = f"memory://omax-replicator-{uuid.uuid4().hex}"
    cfg = dataclasses.replace(settings(), store_url=url, replication_target=target)
    reg = Registry()
    for w in (W1, W2):
        reg.report(w, 0.0, w, [], {})
    return Replicator(cfg, reg, Tasks(), rpc), reg


def test_a_load_and_a_plan_share_one_fetch_per_replica():
    async def main():
        rpc = FakeWorkers()
        rep, reg = _replicator(rpc)
        first = asyncio.ensure_future(rep.fetch(A, W1))
        await asyncio.sleep(0)
        second = asyncio.ensure_future(rep.fetch(A, W1))  # a second load joins
        rep.wanted = {A: 1}
        rep.start_replication()  # the plan sees the fetch running: nothing new
        await asyncio.sleep(0)
        assert list(rep.replicating) == [(A, W1)]
        rpc.gate.set()
        results = await asyncio.gather(first, second)
        return rpc.calls, results, reg, rep

    calls, results, reg, rep = asyncio.run(main())
    assert calls == [(W1, A, [])]
    assert all(r["complete"] for r in results)
    assert reg.workers[W1].replicas[A].complete and (A, W1) in reg.used
    assert rep.replicating == {}


def test_a_failed_fetch_raises_to_its_caller_and_rests_its_worker():
    async def main():
        rpc = FakeWorkers(fail={W1})
        rpc.gate.set()
        rep, _ = _replicator(rpc)
        try:
            await rep.fetch(A, W1)
        except OSError as e:
            return str(e), rep.retry_after

    message, retry_after = asyncio.run(main())
    assert message == f"{W1} cannot fetch" and (A, W1) in retry_after


def test_replicate_model_reaches_its_count_or_answers_a_wire_error():
    async def main():
        ok = FakeWorkers()
        ok.gate.set()
        rep, _ = _replicator(ok, target=2)
        done = await rep.replicate_model(A)
        saved = read_wanted(rep.cfg.store_url)
        bad = FakeWorkers(fail={W1, W2})
        bad.gate.set()
        rep2, _ = _replicator(bad)
        failed = await rep2.replicate_model(A, target=1)
        return done, saved, failed

    done, saved, failed = asyncio.run(main())
    assert done == {"digest": A, "target": 2, "workers": [W1, W2], "complete": True}
    assert saved == {A: 2}  # kept next to the catalog
    assert failed["complete"] is False and is_wire_error(failed)
    err = from_wire(failed)
    assert type(err) is OmaxError and err.status == 500 and "cannot fetch" in str(err)


def test_saved_counts_merge_under_those_wanted_since_start_and_unwant_saves():
    async def main():
        rep, _ = _replicator(FakeWorkers())
        write_wanted(rep.cfg.store_url, {A: 3, "sha256:old": 1})
        rep.wanted = {A: 1}
        await rep.load_wanted()
        merged = dict(rep.wanted)
        await rep.unwant("sha256:old")
        return merged, read_wanted(rep.cfg.store_url)

    merged, saved = asyncio.run(main())
    assert merged == {A: 1, "sha256:old": 1}
    assert saved == {A: 1}


def test_lost_replicas_are_wanted_back_at_the_target():
    async def main():
        rpc = FakeWorkers()
        rep, _ = _replicator(rpc, target=2)
        rep.wanted = {"sha256:kept": 5}
        rep.lost((A, "sha256:kept"))
        wanted = dict(rep.wanted)
        await rep.tasks.cancel_all()
        return wanted

    assert asyncio.run(main()) == {A: 2, "sha256:kept": 5}
