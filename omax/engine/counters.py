"""Running totals of one engine's batching loop, for dashboards and Prometheus.

The batching thread writes them (a few integer additions a step or a token); the
worker's event loop reads them at each heartbeat through ``snapshot``. A reader may
see a step half-counted: the numbers are for watching, never for decisions.

Latencies are kept as (non-cumulative) bucket counts over ``BUCKETS_S`` (seconds), the
shape a Prometheus histogram takes, so the worker sends a few dozen integers a
heartbeat however many requests ran.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

# Upper bounds in seconds; a last, implicit bucket holds everything above.
BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BOUNDS_NS = tuple(int(b * 1e9) for b in BUCKETS_S)


@dataclass
class Histogram:
    """Counts of observations per bucket of ``BUCKETS_S``, plus their sum."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS_S) + 1))
    sum_ns: int = 0

    def observe_ns(self, ns: int) -> None:
        self.counts[bisect.bisect_left(_BOUNDS_NS, ns)] += 1
        self.sum_ns += ns

    def to_dict(self) -> dict[str, Any]:
        return {"counts": list(self.counts), "sum": self.sum_ns / 1e9}


@dataclass
class EngineCounters:
    """Totals since the engine loaded. ``finished`` counts requests by done reason
    (stop, length, cancel, error)."""

    steps: Histogram = field(default_factory=Histogram)
    ttft: Histogram = field(default_factory=Histogram)  # submit to first token
    itl: Histogram = field(default_factory=Histogram)  # between a request's tokens
    prompt_tokens: int = 0
    generation_tokens: int = 0
    finished: dict[str, int] = field(default_factory=dict)

    def finish(self, reason: str) -> None:
        self.finished[reason] = self.finished.get(reason, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        """Plain, msgpack-friendly numbers."""
        return {
            "step": self.steps.to_dict(),
            "ttft": self.ttft.to_dict(),
            "itl": self.itl.to_dict(),
            "prompt_tokens": self.prompt_tokens,
            "generation_tokens": self.generation_tokens,
            "finished": dict(self.finished),
        }


def quantile(counts: list[int] | tuple[int, ...], q: float) -> float | None:
    """The upper bound of the bucket holding quantile ``q`` (like Prometheus'
    ``histogram_quantile`` without interpolation); None without observations, and
    the last bound for the overflow bucket."""
    total = sum(counts)
    if total == 0:
        return None
    rank, seen = q * total, 0
    for i, n in enumerate(counts):
        seen += n
        if seen >= rank and n:
            return BUCKETS_S[min(i, len(BUCKETS_S) - 1)]
    return BUCKETS_S[-1]
