"""Placement policy, with plain data: fit, locality, spread, eviction, refusal, speed."""

import random
import time

from omax.plugins.memory import estimate_memory
from omax.plugins.placement import Need, Place, Refuse, expired, place
from omax.plugins.state import Loaded, Replica, Slot, WorkerInfo

GiB = 2**30


def worker(addr, host, mem, replicas=()):
    return WorkerInfo(
        address=addr,
        host=host,
        slots=(Slot("cpu", "cpu", "CPU", mem, mem),),
        replicas={d: Replica(d, complete, 1, 1) for d, complete in replicas},
    )


def loaded(key, digest, addr, mem, last_used, in_flight=0, keep_alive=300.0):
    return Loaded(
        key, digest, digest, addr, "cpu", mem, 4096, last_used, keep_alive, in_flight, True
    )


def test_fits_by_memory():
    ws = [worker("a", "h1", 2 * GiB), worker("b", "h2", 8 * GiB)]
    assert place(ws, [], Need("m", "m", 4 * GiB)) == Place("b", "cpu")


def test_prefers_a_complete_replica_then_partial():
    ws = [
        worker("a", "h1", 8 * GiB),
        worker("b", "h2", 8 * GiB, [("m", False)]),
        worker("c", "h3", 8 * GiB, [("m", True)]),
    ]
    assert place(ws, [], Need("m", "m", GiB)).worker == "c"
    assert place(ws[:2], [], Need("m", "m", GiB)).worker == "b"


def test_spreads_replicas_of_one_model_over_hosts():
    ws = [worker("a", "h1", 16 * GiB), worker("b", "h2", 8 * GiB)]
    already = [loaded("k1", "m", "a", GiB, 0)]
    assert place(ws, already, Need("m", "m", GiB)).worker == "b"


def test_evicts_least_recently_used_idle_model():
    ws = [worker("a", "h1", 4 * GiB)]
    now = time.time()
    models = [
        loaded("old", "x", "a", 2 * GiB, now - 100),
        loaded("new", "y", "a", 2 * GiB, now - 1),
    ]
    decision = place(ws, models, Need("m", "m", 2 * GiB))
    assert decision == Place("a", "cpu", ("old",))


def test_never_evicts_a_busy_model():
    ws = [worker("a", "h1", 4 * GiB)]
    models = [loaded("busy", "x", "a", 3 * GiB, 0, in_flight=2)]
    decision = place(ws, models, Need("m", "model-m", 2 * GiB))
    assert isinstance(decision, Refuse)


def test_max_loaded_per_slot():
    ws = [worker("a", "h1", 64 * GiB)]
    models = [loaded("k1", "x", "a", GiB, 5), loaded("k2", "y", "a", GiB, 1)]
    decision = place(ws, models, Need("m", "m", GiB, max_loaded_per_slot=2))
    assert decision == Place("a", "cpu", ("k2",))


def test_refusal_explains_in_numbers():
    ws = [worker("tcp://10.0.0.1:1", "h1", 7 * GiB), worker("tcp://10.0.0.2:1", "h2", 6 * GiB)]
    decision = place(ws, [], Need("m", "big", int(9.1 * GiB)))
    assert isinstance(decision, Refuse)
    assert "needs 9.1 GiB" in decision.reason
    assert "7.0 GiB" in decision.reason and "tcp://10.0.0.1:1" in decision.reason


def test_no_workers():
    assert isinstance(place([], [], Need("m", "m", 1)), Refuse)


def test_expiry():
    now = 1000.0
    models = [
        loaded("gone", "x", "a", 1, now - 400),
        loaded("kept", "y", "a", 1, now - 400, keep_alive=-1),
        loaded("busy", "z", "a", 1, now - 400, in_flight=1),
        loaded("fresh", "w", "a", 1, now - 10),
    ]
    assert [m.key for m in expired(models, now)] == ["gone"]


def test_memory_estimate_includes_kv_cache():
    cfg = {
        "num_hidden_layers": 30,
        "hidden_size": 576,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
    }
    weights = 500 * 2**20
    assert estimate_memory(cfg, weights, 8192) - estimate_memory(cfg, weights, 4096) == (
        2 * 30 * 3 * 64 * 4096 * 4
    )


def test_a_thousand_slots_and_five_hundred_models_decide_fast():
    rng = random.Random(0)
    ws = [
        worker(
            f"tcp://w{i}:1",
            f"h{i // 4}",
            rng.choice([8, 16, 24, 80]) * GiB,
            [(f"m{rng.randrange(500)}", True) for _ in range(3)],
        )
        for i in range(1000)
    ]
    models = [
        loaded(
            f"k{j}",
            f"m{j}",
            f"tcp://w{rng.randrange(1000)}:1",
            rng.choice([1, 4, 7]) * GiB,
            rng.random() * 1000,
        )
        for j in range(500)
    ]
    place(ws, models, Need("m7", "m7", 6 * GiB))
    start = time.perf_counter()
    for _ in range(20):
        decision = place(ws, models, Need("m7", "m7", 6 * GiB))
    per_decision = (time.perf_counter() - start) / 20
    assert isinstance(decision, Place)
    assert per_decision < 0.05, f"{per_decision * 1000:.1f} ms per decision"


def test_a_second_copy_goes_to_another_slot():
    ws = [worker("a", "h1", 64 * GiB), worker("b", "h1", 8 * GiB)]
    already = [loaded("k1", "m", "a", GiB, 0)]
    assert place(ws, already, Need("m", "m", GiB)).worker == "b"
    assert isinstance(place(ws[:1], already, Need("m", "m", GiB)), Refuse)
