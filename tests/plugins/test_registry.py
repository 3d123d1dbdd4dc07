"""The registry's updates, with plain data: no Dask, no event loop."""

from omax.plugins.registry import Registry
from omax.plugins.state import Loaded

A, B = "sha256:" + "a" * 64, "sha256:" + "b" * 64
W1, W2 = "tcp://w1:1", "tcp://w2:1"


def _replica(digest, complete=True, done=10):
    return {"digest": digest, "complete": complete, "bytes_done": done, "bytes_total": 10}


def _slot():
    return {"id": "cpu", "device": "cpu", "name": "CPU", "memory_total": 100, "memory_free": 100}


def _loaded(key, digest=A, worker=W1, ready=True, last_used=0.0, keep_alive=300.0):
    return Loaded(key, "m:latest", digest, worker, "cpu", 10, 4096, last_used, keep_alive, 0, ready)


def test_report_replaces_a_worker_and_notes_arrivals_and_departures():
    reg = Registry()
    reg.set_progress(W1, A, 5, 10)
    reg.report(W1, 1.0, "h1", [_slot()], {A: _replica(A, complete=False, done=5)})
    assert reg.progress == {(A, W1): (5, 10)} and reg.used == {}
    reg.report(W1, 2.0, "h1", [_slot()], {A: _replica(A)})
    assert reg.progress == {}  # complete: no progress left to show
    assert reg.used == {(A, W1): 2.0}  # arrived: a use
    reg.report(W1, 3.0, "h1", [_slot()], {A: _replica(A)})
    assert reg.used == {(A, W1): 2.0}  # already there: not a new use
    reg.report(W1, 4.0, "h1", [_slot()], {})
    assert reg.used == {} and reg.workers[W1].replicas == {}
    assert reg.workers[W1].slots[0].id == "cpu"


def test_an_update_replaces_the_mapping_instead_of_mutating_it():
    reg = Registry()
    reg.report(W1, 1.0, "h1", [], {A: _replica(A)})
    workers, used = reg.workers, reg.used
    reg.report(W2, 1.0, "h2", [], {A: _replica(A)})
    assert W2 not in workers and (A, W2) not in used  # what a reader kept is unchanged


def test_remove_worker_says_what_left_and_keeps_the_rest():
    reg = Registry()
    reg.report(W1, 1.0, "h1", [], {A: _replica(A), B: _replica(B, complete=False)})
    reg.report(W2, 1.0, "h2", [], {A: _replica(A)})
    reg.add_loaded(_loaded("k1"))
    reg.add_loaded(_loaded("k2", worker=W2))
    reg.set_progress(W1, B, 1, 10)
    gone = reg.remove_worker(W1)
    assert gone.replicas == (A,)  # complete ones only
    assert [m.key for m in gone.models] == ["k1"]
    assert list(reg.workers) == [W2] and list(reg.loaded) == ["k2"]
    assert reg.progress == {} and all(w == W2 for _, w in reg.used)
    assert reg.remove_worker("tcp://unknown:1") == type(gone)()


def test_loaded_models_ready_touch_and_drop():
    reg = Registry()
    reg.add_loaded(_loaded("k1", ready=False))
    assert reg.ready(A) == [] and reg.ps() == []
    assert reg.mark_ready("k1", 5.0).ready
    assert [m.key for m in reg.ready(A)] == ["k1"] and reg.ps()[0]["key"] == "k1"
    assert reg.touch("k1", 6.0, keep_alive=-1, delta=1)
    m = reg.loaded["k1"]
    assert (m.last_used, m.keep_alive, m.in_flight) == (6.0, -1, 1)
    assert not reg.touch("nope", 6.0)
    assert reg.mark_ready("nope", 1.0) is None
    assert reg.drop_loaded("k1").key == "k1" and reg.drop_loaded("k1") is None


def test_last_used_counts_a_loaded_model_and_note_use_keeps_the_latest():
    reg = Registry()
    reg.note_use(A, W1, 5.0)
    reg.note_use(A, W1, 3.0)
    assert reg.used == {(A, W1): 5.0}
    reg.add_loaded(_loaded("k1", digest=B, last_used=9.0))
    assert reg.last_used() == {(A, W1): 5.0, (B, W1): 9.0}


def test_record_replica_notes_a_finished_fetch_of_a_known_worker():
    reg = Registry()
    reg.record_replica(W1, A, _replica(A), 1.0)
    assert reg.workers == {}  # unknown worker: nothing to note
    reg.report(W1, 1.0, "h1", [], {})
    reg.record_replica(W1, A, _replica(A), 2.0)
    assert reg.workers[W1].replicas[A].complete and reg.used == {(A, W1): 2.0}


def test_workers_view_shows_loaded_models_and_fetches_per_worker():
    reg = Registry()
    reg.report(W1, 1.0, "h1", [_slot()], {})
    reg.add_loaded(_loaded("k1"))
    reg.set_progress(W1, B, 3, 10)
    [view] = reg.workers_view()
    assert view["address"] == W1 and [m["key"] for m in view["loaded"]] == ["k1"]
    assert view["replicating"] == [{"digest": B, "completed": 3, "total": 10}]
