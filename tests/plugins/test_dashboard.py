"""What the dashboard pages and /metrics show, from plain snapshots: no cluster."""

from prometheus_client.core import HistogramMetricFamily

from omax.dashboard.components import render_table
from omax.dashboard.history import History
from omax.dashboard.tables import gpu_rows, latency_histograms, replication_rows, request_rows
from omax.engine.counters import BUCKETS_S, EngineCounters, quantile
from omax.plugins.metrics import _add_histogram

A, B = "sha256:" + "a" * 64, "sha256:" + "b" * 64
W1, W2 = "tcp://10.0.0.1:9000", "tcp://10.0.0.2:9000"
GiB = 2**30


def _loaded(key="k1", worker=W1, name="llama3:8b", digest=A):
    return {
        "key": key,
        "name": name,
        "digest": digest,
        "worker": worker,
        "slot": "cuda:0",
        "memory": 16 * GiB,
        "in_flight": 3,
        "ready": True,
    }


def _beat(tokens=0, running=2, waiting=1):
    c = EngineCounters()
    for ms in (30, 40, 400):
        c.itl.observe_ns(ms * 1_000_000)
    c.ttft.observe_ns(200_000_000)
    c.generation_tokens = tokens
    c.finish("stop")
    c.finish("error")
    return {
        "running": running,
        "waiting": waiting,
        "kv_tokens": 10,
        "kv_budget": 100,
        **c.snapshot(),
    }


def snapshot(t=100.0, tokens=0, done=5):
    return {
        "time": t,
        "workers": [
            {
                "address": W1,
                "slots": [
                    {
                        "id": "cuda:0",
                        "name": "H100",
                        "memory_total": 80 * GiB,
                        "memory_free": 80 * GiB,
                    }
                ],
                "replicas": {
                    A: {"complete": True, "bytes_done": 10, "bytes_total": 10},
                    B: {"complete": False, "bytes_done": 3, "bytes_total": 10},
                },
                "replicating": [],
                "loaded": [_loaded()],
            },
            {
                "address": W2,
                "slots": [],
                "replicas": {},
                "replicating": [{"digest": A, "completed": done, "total": 10}],
                "loaded": [],
            },
        ],
        "wanted": {A: 2},
        "damage": [{"digest": B, "worker": W1, "source": W1}],
        "failed": [{"digest": A, "worker": W1}],
        "fetching": [[A, W2]],
        "heartbeats": {
            W1: {
                "models": {"k1": _beat(tokens)},
                "slots": [
                    {
                        "id": "cuda:0",
                        "name": "H100",
                        "memory_total": 80 * GiB,
                        "memory_free": 60 * GiB,
                        "utilization": 45.0,
                    }
                ],
            }
        },
        "counters": {"loads": 1, "unloads": 0, "evictions": 0},
    }


def test_replication_rows_name_states_and_wanted_counts():
    rows = {(r["digest"], r["worker"]): r for r in replication_rows(snapshot(), {(A, W2): 2.5})}
    assert rows[(A, W1)]["state"] == "complete" and rows[(A, W1)]["model"] == "llama3:8b"
    assert rows[(A, W2)]["state"] == "fetching" and rows[(A, W2)]["rate"] == 2.5
    assert rows[(A, W2)]["percent"] == 50.0
    assert rows[(A, W1)]["complete_replicas"] == 1 and rows[(A, W1)]["target"] == 2
    # partial after a damage report: damaged; its name unknown (not loaded): short digest
    assert rows[(B, W1)]["state"] == "damaged" and rows[(B, W1)]["model"] == "b" * 12


def test_request_rows_join_the_registry_and_the_heartbeat():
    [row] = request_rows(snapshot(), {"k1": 12.5})
    assert row["model"] == "llama3:8b" and row["in_flight"] == 3
    assert (row["running"], row["waiting"], row["tokens_per_s"]) == (2, 1, 12.5)
    assert row["ttft_p50"] == 0.25 and row["itl_p50"] == 0.05 and row["itl_p95"] == 0.5
    assert row["errors"] == 1 and row["failed_replicas"] == 1


def test_gpu_rows_prefer_the_live_device_numbers():
    [row] = gpu_rows(snapshot())
    assert row["memory_free"] == 60 * GiB and row["memory_used"] == 20 * GiB
    assert row["utilization"] == 45.0 and row["reserved"] == 16 * GiB
    assert row["models"] == "llama3:8b"


def test_history_rates_and_series():
    h = History()
    h.add(snapshot(t=100.0, tokens=0, done=2))
    h.add(snapshot(t=102.0, tokens=50, done=6))
    assert h.tokens_per_s() == {"k1": 25.0}
    assert h.fetch_rates() == {(A, W2): 2.0}
    assert h.token_series() == {"llama3:8b": ([102.0], [25.0])}
    assert h.counter_series(("loads",)) == {"time": [100.0, 102.0], "loads": [1.0, 1.0]}


def test_latency_histograms_sum_replicas_and_quantiles_use_bucket_bounds():
    hist = latency_histograms(snapshot())
    assert sum(hist["itl"]) == 3 and sum(hist["ttft"]) == 1
    assert quantile([0] * (len(BUCKETS_S) + 1), 0.5) is None


def test_render_table_escapes_and_formats():
    text = render_table(
        "T", [("model", "Model"), ("bytes_done", "Done")], [{"model": "<x>", "bytes_done": 3 * GiB}]
    )
    assert "&lt;x&gt;" in text and "3.0 GiB" in text
    assert "<p>none</p>" in render_table("T", [("model", "Model")], [])


def test_histogram_buckets_are_cumulative_for_prometheus():
    c = EngineCounters()
    c.steps.observe_ns(2_000_000)  # 2 ms
    c.steps.observe_ns(60_000_000_000)  # past the last bound
    family = HistogramMetricFamily("omax_step_duration_seconds", "", labels=["model"])
    _add_histogram(family, ["m"], c.snapshot()["step"])
    samples = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    assert samples[("omax_step_duration_seconds_bucket", "0.001")] == 0
    assert samples[("omax_step_duration_seconds_bucket", "0.0025")] == 1
    assert samples[("omax_step_duration_seconds_bucket", "+Inf")] == 2
    assert samples[("omax_step_duration_seconds_count", None)] == 2
