"""Replication policy with plain data: no Dask, no disks."""

from omax.plugins.replication_plan import Drop, Job, holders, plan, plan_evictions, sources_for
from omax.plugins.state import Replica, WorkerInfo

A, B = "sha256:" + "a" * 64, "sha256:" + "b" * 64


def w(addr, **replicas):
    reps = {}
    for digest, (done, total) in replicas.items():
        d = {"A": A, "B": B}[digest]
        reps[d] = Replica(d, done == total, done, total)
    return WorkerInfo(addr, "h", (), reps)


def test_plan_brings_a_model_to_its_target_from_its_holders():
    ws = [w("w1", A=(10, 10)), w("w2"), w("w3", B=(5, 5))]
    jobs = plan(ws, {A: 2})
    assert jobs == [Job(A, "w2", ("w1",))]  # w2 holds fewer bytes than w3
    assert plan(ws, {A: 1}) == []
    assert plan(ws, {A: 3}) == [Job(A, "w2", ("w1",)), Job(A, "w3", ("w1",))]
    assert len(plan(ws, {A: 10})) == 2  # never more than the workers there are


def test_plan_prefers_a_partial_replica_counts_running_fetches_and_skips_bad_sources():
    ws = [w("w1", A=(10, 10)), w("w2"), w("w3", A=(4, 10)), w("w4", A=(10, 10))]
    assert plan(ws, {A: 3}) == [Job(A, "w3", ("w1", "w4"))]
    assert plan(ws, {A: 3}, busy={(A, "w2")}) == []
    assert plan(ws, {A: 3}, bad={(A, "w1")}) == [Job(A, "w3", ("w4",))]
    assert sources_for(ws, A, "w4") == ("w1",)
    assert holders(ws, A) == ["w1", "w4"]


def test_plan_with_thousands_of_workers_spreads_new_replicas():
    ws = [w(f"w{i:04d}") for i in range(2000)] + [w("src", A=(10, 10), B=(10, 10))]
    jobs = plan(ws, {A: 50, B: 50})
    assert len(jobs) == 98
    assert len({j.worker for j in jobs}) == 98  # each new replica on another worker


def test_evictions_drop_unneeded_lru_first_and_copy_needed_ones_off():
    ws = [w("w1", A=(10, 10), B=(10, 10)), w("w2", B=(10, 10)), w("w3")]
    last = {(A, "w1"): 5.0, (B, "w1"): 1.0}
    drops, jobs = plan_evictions(ws, {"w1": 10}, {A: 1, B: 1}, last_used=last)
    assert drops == [Drop(B, "w1")] and jobs == []  # B stays on w2; A is still needed
    drops, jobs = plan_evictions(ws, {"w1": 0}, {A: 1, B: 1}, last_used=last)
    assert drops == [Drop(B, "w1")]
    assert jobs == [Job(A, "w3", ("w1",))]  # copied to the emptiest worker first
    drops, _ = plan_evictions(ws, {"w1": 0}, {B: 1}, loaded={(A, "w1")}, last_used=last)
    assert drops == [Drop(B, "w1")]  # A is loaded there: kept
