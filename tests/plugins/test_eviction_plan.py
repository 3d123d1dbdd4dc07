"""Disk budgets in the replication policy, and the saved wanted counts: plain data."""

from omax.plugins.replication_plan import Drop, Job, budgets, plan, plan_evictions
from omax.plugins.state import Replica, WorkerInfo
from omax.sharding.wanted import read_wanted, write_wanted

A, B, C = ("sha256:" + c * 64 for c in "abc")


def w(addr, budget=0, **replicas):
    reps = {}
    for name, (done, total) in replicas.items():
        d = {"A": A, "B": B, "C": C}[name]
        reps[d] = Replica(d, done == total, done, total)
    return WorkerInfo(addr, "h", (), reps, disk_budget=budget)


def test_budgets_leave_out_workers_without_a_limit():
    assert budgets([w("w1", 100), w("w2"), w("w3", 5)]) == {"w1": 100, "w3": 5}


def test_plan_puts_a_new_replica_where_the_budget_has_room():
    ws = [w("w1", 15, B=(10, 10)), w("w2", 100, B=(10, 10), C=(20, 20)), w("w3", A=(10, 10))]
    # w1 holds the fewest bytes but A would take it over its budget: w2 has room
    assert plan(ws, {A: 2}) == [Job(A, "w2", ("w3",))]
    # when no worker has room, the target still wins
    tight = [w("w1", 15, B=(10, 10)), w("w3", A=(10, 10))]
    assert plan(tight, {A: 2}) == [Job(A, "w1", ("w3",))]
    # a partial replica only needs the rest of its bytes
    resume = [w("w1", 15, A=(8, 10)), w("w2", 100, C=(5, 5)), w("w3", A=(10, 10))]
    assert plan(resume, {A: 2}) == [Job(A, "w1", ("w3",))]


def test_evictions_never_touch_a_loaded_or_fetching_replica_and_keep_the_target():
    ws = [w("w1", 10, A=(10, 10), B=(10, 10), C=(10, 10)), w("w2", B=(10, 10))]
    last = {(A, "w1"): 1.0, (B, "w1"): 2.0, (C, "w1"): 3.0}
    # A is loaded (though least recently used), C is being fetched, B keeps one copy
    drops, jobs = plan_evictions(
        ws, budgets(ws), {B: 1}, loaded={(A, "w1")}, last_used=last, busy={(C, "w1")}
    )
    assert drops == [Drop(B, "w1")] and jobs == []
    # with B wanted twice, nothing on w1 may go: it stays over its budget
    drops, jobs = plan_evictions(
        ws, budgets(ws), {B: 2}, loaded={(A, "w1")}, last_used=last, busy={(C, "w1")}
    )
    assert drops == [] and jobs == []


def test_evictions_with_thousands_of_workers_touch_only_those_over_budget():
    ws = [w(f"w{i:04d}", 100, A=(10, 10), B=(10, 10)) for i in range(2000)]
    ws += [w("full", 15, A=(10, 10), B=(10, 10))]
    drops, jobs = plan_evictions(ws, budgets(ws), {A: 2, B: 2}, last_used={(B, "full"): 9.0})
    assert drops == [Drop(A, "full")] and jobs == []


def test_wanted_counts_round_trip_through_the_store(tmp_path):
    url = str(tmp_path / "origin")
    assert read_wanted(url) == {}
    write_wanted(url, {A: 2, B: 1})
    write_wanted(url, {A: 3})
    assert read_wanted(url) == {A: 3}
    assert [p.name for p in (tmp_path / "origin" / "replication").iterdir()] == ["wanted.json"]
    write_wanted("memory://omax-eviction-test", {C: 1})
    assert read_wanted("memory://omax-eviction-test") == {C: 1}
