"""A short memory of snapshots, for rates and time series. Plain data, no Dask.

``History.add(snap)`` keeps the numbers of each snapshot that rates need (tokens
generated per model replica, replication bytes per (model, worker), the scheduler's
load and eviction totals); the last ``keep`` samples stay. The scheduler plugin adds
one a second (``omax.dashboard.snapshot.sample_forever``) whether or not a page is
open, so a page opened late still shows the last minutes.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Sample:
    time: float
    tokens: dict[str, int]  # actor key -> tokens generated since load
    names: dict[str, str]  # actor key -> model name
    fetched: dict[tuple[str, str], int]  # (digest, worker) -> bytes done
    counters: dict[str, int] = field(default_factory=dict)  # loads, unloads, evictions...


def sample_of(snap: dict[str, Any]) -> Sample:
    """The numbers of ``snap`` that rates and series need."""
    tokens, names, fetched = {}, {}, {}
    for w in snap.get("workers", ()):
        beats = snap.get("heartbeats", {}).get(w["address"], {}).get("models", {})
        for m in w.get("loaded", ()):
            tokens[m["key"]] = int(beats.get(m["key"], {}).get("generation_tokens", 0))
            names[m["key"]] = m["name"]
        for p in w.get("replicating", ()):
            fetched[(p["digest"], w["address"])] = int(p["completed"])
    return Sample(snap.get("time", 0.0), tokens, names, fetched, dict(snap.get("counters", {})))


def _rate(new: int, old: int | None, dt: float) -> float:
    return max(0, new - old) / dt if old is not None and dt > 0 else 0.0


class History:
    def __init__(self, keep: int = 600) -> None:
        self.samples: deque[Sample] = deque(maxlen=keep)

    def add(self, snap: dict[str, Any]) -> None:
        self.samples.append(sample_of(snap))

    def _pair(self, window: float) -> tuple[Sample, Sample] | None:
        """The newest sample and the oldest one within ``window`` s before it."""
        if len(self.samples) < 2:
            return None
        new = self.samples[-1]
        old = next(s for s in self.samples if s.time >= new.time - window)
        return (old, new) if old is not new else (self.samples[-2], new)

    def tokens_per_s(self, window: float = 5.0) -> dict[str, float]:
        """Tokens generated per second by each actor over the last ``window`` s."""
        return self._rates("tokens", window)

    def fetch_rates(self, window: float = 5.0) -> dict[tuple[str, str], float]:
        """Replication bytes per second of each fetch under way."""
        return self._rates("fetched", window)

    def _rates(self, counters: str, window: float) -> dict[Any, float]:
        """Per-key rate of the sample's ``counters`` mapping over the last ``window`` s."""
        pair = self._pair(window)
        if pair is None:
            return {}
        old, new = pair
        before, after = getattr(old, counters), getattr(new, counters)
        return {k: _rate(n, before.get(k), new.time - old.time) for k, n in after.items()}

    def token_series(self) -> dict[str, tuple[list[float], list[float]]]:
        """Model name -> (times, tokens/s summed over its replicas), one point per
        pair of consecutive samples."""
        out: dict[str, tuple[list[float], list[float]]] = {}
        samples = list(self.samples)
        for old, new in zip(samples, samples[1:], strict=False):
            dt = new.time - old.time
            per_model: dict[str, float] = {}
            for k, n in new.tokens.items():
                name = new.names.get(k, k)
                per_model[name] = per_model.get(name, 0.0) + _rate(n, old.tokens.get(k), dt)
            for name, rate in per_model.items():
                times, rates = out.setdefault(name, ([], []))
                times.append(new.time)
                rates.append(rate)
        return out

    def counter_series(self, names: tuple[str, ...]) -> dict[str, list[float]]:
        """``time`` and each named scheduler total, one value per sample."""
        out: dict[str, list[float]] = {"time": [s.time for s in self.samples]}
        for n in names:
            out[n] = [float(s.counters.get(n, 0)) for s in self.samples]
        return out
