"""Disk budgets with real `dask scheduler` / `dask worker` processes: a worker over
its ``omax.worker.disk-budget`` drops the least recently used replica that is neither
loaded nor needed for a wanted count, and wanted counts survive a scheduler restart."""

import os
import time

import pytest
from distributed import Client

from omax.sharding.catalog import Catalog
from omax.sharding.modelstore import ModelStore
from tests.plugins.dask_procs import start_scheduler, start_worker, stop, tail, worker_records
from tests.plugins.test_replication_cluster import make_model
from tests.tiny import tiny_llama

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def _env(tmp_path, **extra):
    return {
        **os.environ,
        "DASK_OMAX__STORE__URL": str(tmp_path / "origin"),
        "DASK_OMAX__WORKER__STORE": str(tmp_path / "workers" / "{name}"),
        "DASK_OMAX__SERVE__KEEP_ALIVE": "-1",
        **extra,
    }


def _wait(cond, timeout=60, what="condition", procs=()):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if out := cond():
            return out
        time.sleep(0.2)
    raise AssertionError(f"{what} not reached in {timeout}s\n{tail(*procs)}")


def _by_name(client):
    """Worker name -> its registry entry (address, disk_budget, replicas, loaded)."""
    names = {a: w["name"] for a, w in worker_records(client).items()}
    state = client.sync(client.scheduler.omax_cluster)
    return {names.get(w["address"], w["address"]): w for w in state["workers"]}


def _complete(worker):
    return {d for d, r in worker["replicas"].items() if r["complete"]}


def _complete_on(client, name):
    """The complete replicas of worker ``name``; None while the registry lacks it (a
    worker that reconnects is re-registered a moment later)."""
    worker = _by_name(client).get(name)
    return None if worker is None else _complete(worker)


def _held(worker):
    return sum(r["bytes_done"] for r in worker["replicas"].values())


def test_over_budget_worker_drops_lru_unneeded_keeps_loaded_and_wanted(tmp_path):
    origin = str(tmp_path / "origin")
    store = ModelStore(origin)
    store.import_path(tiny_llama(tmp_path / "small"), "small")
    small, manifest = store.resolve("small")
    a, _, size = make_model(origin, 4, 500_000, seed=11)
    b, _, _ = make_model(origin, 4, 500_000, seed=12)
    wanted, _, _ = make_model(origin, 4, 500_000, seed=13)
    # room for the loaded model and one more, not two more
    budget = manifest.total_size + size * 3 // 2
    env = _env(tmp_path)
    sched, addr = start_scheduler(env)
    lean = start_worker(
        addr, {**env, "DASK_OMAX__WORKER__DISK_BUDGET": str(budget)}, "--name", "lean"
    )
    # a slot too small for any model: every load goes to lean
    roomy = start_worker(
        addr, {**env, "DASK_OMAX__WORKER__SLOT_MEMORY": "1 MiB"}, "--name", "roomy"
    )
    try:
        with Client(addr, timeout=30) as client:
            client.wait_for_workers(2, timeout=60)
            _wait(lambda: len(_by_name(client)) == 2, what="both workers registered")
            assert _by_name(client)["lean"]["disk_budget"] == budget
            assert _by_name(client)["roomy"]["disk_budget"] == 0
            lean_addr = _by_name(client)["lean"]["address"]

            reply = client.sync(client.scheduler.omax_ensure, name="small", digest=small)
            assert [x["worker"] for x in reply["actors"]] == [lean_addr], reply

            # a and then b land on lean (as loads elsewhere would leave them): over budget
            for digest in (a, b):
                r = client.sync(client.rpc(lean_addr).omax_replicate, digest=digest)
                assert r["complete"], r
            # the least recently used replica goes; the loaded model's stays, though older
            _wait(lambda: a not in _complete(_by_name(client)["lean"]), what="a evicted")
            time.sleep(2.5)  # another round: nothing more to drop
            held = _by_name(client)["lean"]
            assert _complete(held) == {small, b}
            assert _held(held) <= budget

            # a model wanted on both workers stays at its count; b makes room for it
            r = client.sync(client.scheduler.omax_replicate_model, digest=wanted, target=2)
            assert r["complete"] and len(r["workers"]) == 2, r
            _wait(lambda: b not in _complete(_by_name(client)["lean"]), what="b evicted")
            workers = _by_name(client)
            assert _complete(workers["lean"]) == {small, wanted}
            assert wanted in _complete(workers["roomy"])
            assert _held(workers["lean"]) <= budget
            assert [m["digest"] for m in workers["lean"]["loaded"]] == [small]

            # a dropped replica a later pull needs is fetched again
            r = client.sync(client.scheduler.omax_replicate_model, digest=a)
            assert r["complete"], r
            _wait(lambda: _held(_by_name(client)["lean"]) <= budget, what="lean under budget")
    finally:
        stop(lean, roomy, sched)


def test_wanted_counts_survive_a_scheduler_restart_until_the_model_is_deleted(tmp_path):
    origin = str(tmp_path / "origin")
    pulled, _, size = make_model(origin, 3, 200_000, seed=21)
    stray, _, _ = make_model(origin, 3, 200_000, seed=22)
    Catalog(origin).set("pulled", pulled, size)
    # a budget nothing fits in: only what is wanted may stay
    env = _env(tmp_path, DASK_OMAX__WORKER__DISK_BUDGET="1000")

    def start():
        sched, addr = start_scheduler(env)
        return sched, start_worker(addr, env, "--name", "solo"), addr

    sched, worker, addr = start()
    try:
        with Client(addr, timeout=30) as client:
            client.wait_for_workers(1, timeout=60)
            r = client.sync(client.scheduler.omax_replicate_model, digest=pulled)
            assert r["complete"], r
            solo = r["workers"][0]
            r = client.sync(client.rpc(solo).omax_replicate, digest=stray)
            assert r["complete"], r
            _wait(
                lambda: (held := _complete_on(client, "solo")) is not None and stray not in held,
                what="stray evicted",
                procs=(sched, worker),
            )
            assert pulled in (_complete_on(client, "solo") or ()), tail(sched, worker)
    finally:
        stop(worker, sched)

    sched, worker, addr = start()  # a new scheduler, the same origin store and disk
    try:
        with Client(addr, timeout=30) as client:
            client.wait_for_workers(1, timeout=60)
            _wait(
                lambda: pulled in (_complete_on(client, "solo") or ()),
                what="pulled registered again",
                procs=(sched, worker),
            )
            assert client.sync(client.scheduler.omax_cluster)["wanted"] == {pulled: 1}
            time.sleep(5)  # a few eviction rounds
            assert pulled in (_complete_on(client, "solo") or ()), tail(sched, worker)

            # deleting its last name un-wants it: the budget wins now
            gone = client.sync(client.scheduler.omax_catalog_delete, name="pulled")
            assert gone["entry"]["digest"] == pulled
            assert client.sync(client.scheduler.omax_cluster)["wanted"] == {}
            _wait(
                lambda: _complete_on(client, "solo") == set(),
                what="pulled evicted",
                procs=(sched, worker),
            )
    finally:
        stop(worker, sched)
