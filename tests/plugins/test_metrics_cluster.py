"""Prometheus ``/metrics`` of a real worker and scheduler move with traffic.

The cluster (``observed``, tests/plugins/conftest.py) has the demo model loaded and
a slow replication under way; the tests scrape Dask's own endpoints."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from omax.sharding.blobs import BlobStore
from omax.sharding.manifest import Manifest
from tests.plugins.observed_cluster import generate, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """Every omax sample at ``url``/metrics: (name, sorted labels) -> value."""
    text = httpx.get(url + "/metrics", timeout=10).text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("omax_"):
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(samples: dict, name: str, **labels: str) -> float:
    """Sum of ``name``'s samples whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def test_worker_metrics_move_with_traffic(observed):
    before = scrape(observed.worker_http)
    for name in (
        "omax_requests_running",
        "omax_requests_waiting",
        "omax_kv_cache_usage_ratio",
        "omax_kv_cache_tokens",
        "omax_model_load_seconds",
    ):
        assert any(n == name for n, _ in before), name
    assert total(before, "omax_model_load_seconds") > 0
    streams = generate(observed.client.scheduler.address, n=2, tokens=8)
    made = sum(chunks[-1].metrics.eval_count for chunks in streams)
    after = scrape(observed.worker_http)
    tokens = "omax_generation_tokens_total"
    assert total(after, tokens) - total(before, tokens) == made
    assert total(after, "omax_prompt_tokens_total") > total(before, "omax_prompt_tokens_total")
    finished = "omax_requests_finished_total"
    assert total(after, finished) - total(before, finished) == 2
    ttft = "omax_time_to_first_token_seconds_count"
    assert total(after, ttft) - total(before, ttft) == 2
    itl = "omax_inter_token_latency_seconds_count"
    assert total(after, itl) - total(before, itl) == made - 2
    steps = "omax_step_duration_seconds_count"
    assert total(after, steps) > total(before, steps)
    assert total(after, "omax_step_duration_seconds_bucket", le="+Inf") == total(after, steps)
    # the slow replication's bytes (12 blobs of 2 MiB, ~24 s) are counted as they
    # arrive, whether or not earlier tests outlasted the fetch
    fetched = "omax_replication_bytes_total"
    wait_for(
        lambda: total(scrape(observed.worker_http), fetched) >= 12 * (2 << 20),
        timeout=120,
        what="the slow model's replication bytes",
    )


def test_scheduler_metrics_count_slots_models_and_refusals(observed):
    url = observed.dashboard

    def loaded() -> dict | None:
        m = scrape(url)
        return m if total(m, "omax_model_loads_total") else None

    s = wait_for(loaded, what="the load counted")
    assert total(s, "omax_slots", device="cpu") == 1
    assert total(s, "omax_models_loaded", state="ready") == 1
    assert total(s, "omax_replicas", state="complete") >= 1
    assert total(s, "omax_slot_memory_bytes", state="reserved") > 0
    assert total(s, "omax_model_evictions_total") == 0
    demo = observed.demo
    assert total(s, "omax_model_replicas", model=demo, state="complete") == 1
    assert total(s, "omax_model_replicas_wanted", model=demo) >= 1
    # a model no slot can hold: its load is refused, and the counter says so
    huge = Manifest(
        format="safetensors",
        family="test",
        config={"num_hidden_layers": 512, "hidden_size": 8192, "num_attention_heads": 8},
        tensors=(),
    )
    client = observed.client
    origin = client.sync(client.scheduler.omax_info)["store_url"]
    digest = BlobStore(origin).put_bytes(huge.to_json())
    reply = client.sync(client.scheduler.omax_ensure, name="huge", digest=digest)
    assert reply.get("type") == "PlacementRefused", reply
    refused = "omax_placements_refused_total"
    assert total(scrape(url), refused) == total(s, refused) + 1
