"""Prometheus collectors on Dask's own ``/metrics`` endpoints, scheduler and worker.

Dask serves ``prometheus_client.REGISTRY`` (the process's default registry) at
``http://<scheduler>:8787/metrics`` and at each worker's dashboard port; a collector
registered there appears beside Dask's own ``dask_*`` metrics. Names follow
Prometheus' conventions (``omax_`` prefix, unit suffixes, ``_total`` counters,
``_seconds`` histograms) and vLLM's metric set where one exists
(``vllm:num_requests_running`` -> ``omax_requests_running``). docs/operations.md
lists them.

A collector reads what the plugins already hold, at scrape time: the scheduler's
through ``omax.dashboard.snapshot.Monitor.take``, a worker's through
``OmaxWorkerPlugin.heartbeat`` (the numbers its heartbeats carry). One collector of
each kind is registered per process and reports every live plugin of its kind there.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from omax.engine.counters import BUCKETS_S

_schedulers: weakref.WeakSet = weakref.WeakSet()  # Monitor objects
_workers: weakref.WeakSet = weakref.WeakSet()  # OmaxWorkerPlugin objects
_registered: set[str] = set()


def _register(kind: str, collector: Any) -> None:
    if kind not in _registered:
        REGISTRY.register(collector)
        _registered.add(kind)


def register_scheduler(monitor: Any) -> None:
    """Report ``monitor``'s cluster on this process's ``/metrics``."""
    _schedulers.add(monitor)
    _register("scheduler", SchedulerCollector())


def register_worker(plugin: Any) -> None:
    """Report ``plugin``'s worker on this process's ``/metrics``."""
    _workers.add(plugin)
    _register("worker", WorkerCollector())


def _alive(server: Any) -> bool:
    """Whether a scheduler or worker still serves (a closed one in this process, a test's
    earlier cluster say, is not reported)."""
    status = getattr(server, "status", None)
    return server is not None and getattr(status, "name", "") not in ("closing", "closed")


def _histogram(name: str, doc: str, labels: list[str]) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, labels=labels)


def _add_histogram(family: HistogramMetricFamily, labels: list[str], h: dict[str, Any]) -> None:
    """Add a ``Histogram.to_dict()`` (bucket counts, not cumulative) to ``family``."""
    counts = list(h.get("counts", ()))
    if len(counts) != len(BUCKETS_S) + 1:
        return
    buckets, seen = [], 0
    for bound, n in zip([*map(str, BUCKETS_S), "+Inf"], counts, strict=True):
        seen += n
        buckets.append((bound, seen))
    family.add_metric(labels, buckets, h.get("sum", 0.0))


class SchedulerCollector:
    """Slots, replicas, loaded models, placements refused and evictions."""

    def collect(self) -> Iterator[Metric]:
        slots = GaugeMetricFamily("omax_slots", "Inference slots", labels=["device"])
        memory = GaugeMetricFamily(
            "omax_slot_memory_bytes", "Slot memory by state", labels=["state"]
        )
        replicas = GaugeMetricFamily("omax_replicas", "Model replicas", labels=["state"])
        models = GaugeMetricFamily("omax_models_loaded", "Loaded models", labels=["state"])
        wanted = GaugeMetricFamily("omax_models_wanted", "Models kept at a replica count")
        per_model = GaugeMetricFamily(
            "omax_model_replicas", "Replicas of each model", labels=["model", "state"]
        )
        per_model_wanted = GaugeMetricFamily(
            "omax_model_replicas_wanted", "Replica count kept for each model", labels=["model"]
        )
        totals = {
            "loads": CounterMetricFamily("omax_model_loads", "Models loaded"),
            "unloads": CounterMetricFamily("omax_model_unloads", "Models unloaded"),
            "evictions": CounterMetricFamily(
                "omax_model_evictions", "Loaded models evicted to make room"
            ),
            "placements_refused": CounterMetricFamily(
                "omax_placements_refused", "Loads refused: no slot had room"
            ),
        }
        for monitor in list(_schedulers):
            if not _alive(monitor.plugin.scheduler):
                continue
            snap = monitor.take()
            count: dict[str, dict[str, int]] = {
                k: {} for k in ("device", "memory", "replica", "model")
            }
            for w in snap["workers"]:
                for s in w["slots"]:
                    _inc(count["device"], s["device"], 1)
                    _inc(count["memory"], "total", s["memory_total"])
                for m in w["loaded"]:
                    _inc(count["memory"], "reserved", m["memory"])
                    _inc(count["model"], "ready" if m["ready"] else "loading", 1)
                for r in w["replicas"].values():
                    _inc(count["replica"], "complete" if r["complete"] else "partial", 1)
            _fill(slots, count["device"], ("cpu", "cuda"))
            _fill(memory, count["memory"], ("total", "reserved"))
            _fill(replicas, count["replica"], ("complete", "partial"))
            _fill(models, count["model"], ("ready", "loading"))
            wanted.add_metric([], len(snap["wanted"]))
            _per_model(per_model, per_model_wanted, snap)
            for key, family in totals.items():
                family.add_metric([], snap["counters"].get(key, 0))
        yield from (slots, memory, replicas, models, wanted, per_model, per_model_wanted)
        yield from totals.values()


def _per_model(replicas: GaugeMetricFamily, wanted: GaugeMetricFamily, snap: dict) -> None:
    """Complete and partial replicas of every model held or wanted, and its wanted count."""
    count: dict[tuple[str, str], int] = {}
    for digest in snap["wanted"]:
        count[(digest, "complete")] = count[(digest, "partial")] = 0
    for w in snap["workers"]:
        for digest, r in w["replicas"].items():
            key = (digest, "complete" if r["complete"] else "partial")
            count[key] = count.get(key, 0) + 1
            count.setdefault((digest, "partial" if r["complete"] else "complete"), 0)
    for (digest, state), n in sorted(count.items()):
        replicas.add_metric([digest, state], n)
    for digest, n in sorted(snap["wanted"].items()):
        wanted.add_metric([digest], n)


def _inc(d: dict[str, int], key: str, n: int) -> None:
    d[key] = d.get(key, 0) + n


def _fill(family: GaugeMetricFamily, counts: dict[str, int], always: tuple[str, ...]) -> None:
    for label in sorted({*always, *counts}):
        family.add_metric([label], counts.get(label, 0))


class WorkerCollector:
    """Per model actor: sequences, KV cache, step time, latencies, tokens; and the
    worker's replication bytes."""

    def collect(self) -> Iterator[Metric]:
        labels = ["model", "slot"]
        g = {
            "running": GaugeMetricFamily(
                "omax_requests_running", "Sequences in the batch", labels=labels
            ),
            "waiting": GaugeMetricFamily(
                "omax_requests_waiting", "Sequences queued for the batch", labels=labels
            ),
            "kv_tokens": GaugeMetricFamily(
                "omax_kv_cache_tokens", "Tokens held in the KV cache", labels=labels
            ),
            "kv_usage": GaugeMetricFamily(
                "omax_kv_cache_usage_ratio", "KV cache tokens over its budget", labels=labels
            ),
            "load_seconds": GaugeMetricFamily(
                "omax_model_load_seconds", "How long the model took to load", labels=labels
            ),
        }
        c = {
            "prompt_tokens": CounterMetricFamily(
                "omax_prompt_tokens", "Prompt tokens prefilled", labels=labels
            ),
            "generation_tokens": CounterMetricFamily(
                "omax_generation_tokens", "Tokens generated", labels=labels
            ),
        }
        finished = CounterMetricFamily(
            "omax_requests_finished", "Requests ended, by reason", labels=[*labels, "reason"]
        )
        h = {
            "step": _histogram("omax_step_duration_seconds", "Batch step time", labels),
            "ttft": _histogram("omax_time_to_first_token_seconds", "Submit to first token", labels),
            "itl": _histogram("omax_inter_token_latency_seconds", "Between tokens", labels),
        }
        fetched = CounterMetricFamily("omax_replication_bytes", "Replica bytes fetched")
        served = CounterMetricFamily("omax_replication_served_bytes", "Blob bytes sent to peers")
        for plugin in list(_workers):
            if not _alive(plugin.worker):
                continue
            beat = plugin.heartbeat(plugin.worker)
            fetched.add_metric([], beat["replication_bytes"])
            served.add_metric([], beat["served_bytes"])
            for m in beat["models"].values():
                if "running" not in m:
                    continue  # still loading
                at = [m["model"], m["slot"]]
                for key in ("running", "waiting", "kv_tokens", "load_seconds"):
                    g[key].add_metric(at, m[key])
                g["kv_usage"].add_metric(at, m["kv_tokens"] / max(m["kv_budget"], 1))
                for key, family in c.items():
                    family.add_metric(at, m[key])
                for reason, n in m["finished"].items():
                    finished.add_metric([*at, reason], n)
                for key, hist in h.items():
                    _add_histogram(hist, at, m[key])
        yield from (*g.values(), *c.values(), finished, *h.values(), fetched, served)
