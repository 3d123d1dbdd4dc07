"""The scheduler plugin's registry: plain state and its updates. No Dask, no asyncio.

It holds what the scheduler knows of the cluster:

- ``workers``: every worker's inference slots and replicas, as it last reported;
- ``progress``: replication progress per (model digest, worker);
- ``loaded``: every ModelActor started, by its Dask key (ready or still loading);
- ``used``: when each (model, worker) replica was last used (fetched, or its
  model used on that worker), for eviction;
- ``placing``: (model, worker) replicas a load in progress has chosen; eviction
  leaves them alone.

Each update computes the new mapping, then assigns it: the plugin's hooks call
these, and Dask swallows an exception raised in a hook, so a half-made update
must never be visible. Readers may keep a mapping they got; it is not mutated in
place by the updates that replace it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from omax.plugins.state import Loaded, Replica, Slot, WorkerInfo

Spot = tuple[str, str]  # (model digest, worker address)


@dataclass(frozen=True)
class Departure:
    """What left with a worker."""

    replicas: tuple[str, ...] = ()  # digests of the complete replicas it held
    models: tuple[Loaded, ...] = ()  # loaded models (ready or not) it ran


class Registry:
    def __init__(self) -> None:
        self.workers: dict[str, WorkerInfo] = {}
        self.loaded: dict[str, Loaded] = {}
        self.progress: dict[Spot, tuple[int, int]] = {}
        self.used: dict[Spot, float] = {}
        self.placing: frozenset[Spot] = frozenset()

    # ---- workers --------------------------------------------------------------

    def report(
        self,
        worker: str,
        now: float,
        host: str = "",
        slots: Iterable[Any] = (),
        replicas: dict[str, Any] | None = None,
        disk_budget: int = 0,
    ) -> None:
        """A worker's slots and replicas (as dicts off the wire), replacing what was known."""
        info = WorkerInfo(
            address=worker,
            host=host,
            slots=tuple(Slot.from_dict(s) for s in slots),
            replicas={d: Replica.from_dict(r) for d, r in (replicas or {}).items()},
            disk_budget=int(disk_budget),
        )
        old = self.workers.get(worker)
        progress = dict(self.progress)
        used = dict(self.used)
        for digest, r in info.replicas.items():
            if r.complete:
                progress.pop((digest, worker), None)
                if old is None or not _complete(old, digest):
                    used.setdefault((digest, worker), now)  # arrived: a use
        for digest in old.replicas if old is not None else ():
            if digest not in info.replicas:
                used.pop((digest, worker), None)
        self.workers = {**self.workers, worker: info}
        self.progress, self.used = progress, used

    def set_progress(self, worker: str, digest: str, done: int, total: int) -> None:
        self.progress = {**self.progress, (digest, worker): (int(done), int(total))}

    def remove_worker(self, worker: str) -> Departure:
        """Forget ``worker`` and everything on it; say what left with it."""
        info = self.workers.get(worker)
        lost = tuple(d for d, r in info.replicas.items() if r.complete) if info else ()
        models = tuple(m for m in self.loaded.values() if m.worker == worker)
        self.workers = {a: w for a, w in self.workers.items() if a != worker}
        self.loaded = {k: m for k, m in self.loaded.items() if m.worker != worker}
        self.progress = {k: v for k, v in self.progress.items() if k[1] != worker}
        self.used = {k: t for k, t in self.used.items() if k[1] != worker}
        return Departure(lost, models)

    def record_replica(self, worker: str, digest: str, replica: dict[str, Any], now: float) -> None:
        """A fetch finished complete: note it before the worker's own report comes."""
        info = self.workers.get(worker)
        if info is None:
            return
        replicas = {**info.replicas, digest: Replica.from_dict(replica)}
        self.workers = {**self.workers, worker: replace(info, replicas=replicas)}
        self.used = {**self.used, (digest, worker): now}

    def note_use(self, digest: str, worker: str, when: float) -> None:
        """The replica of ``digest`` on ``worker`` was used at ``when`` (kept if later)."""
        spot = (digest, worker)
        self.used = {**self.used, spot: max(when, self.used.get(spot, 0))}

    # ---- loaded models --------------------------------------------------------

    def ready(self, digest: str) -> list[Loaded]:
        return [m for m in self.loaded.values() if m.digest == digest and m.ready]

    def add_loaded(self, entry: Loaded) -> None:
        self.loaded = {**self.loaded, entry.key: entry}

    def mark_ready(self, key: str, now: float) -> Loaded | None:
        """The actor ``key`` finished loading; None if it was unloaded meanwhile."""
        m = self.loaded.get(key)
        if m is None:
            return None
        m = replace(m, ready=True, last_used=now)
        self.loaded = {**self.loaded, key: m}
        return m

    def drop_loaded(self, key: str) -> Loaded | None:
        """Forget the actor ``key``; return what it was, if it was known."""
        m = self.loaded.get(key)
        if m is not None:
            self.loaded = {k: v for k, v in self.loaded.items() if k != key}
        return m

    def touch(self, key: str, now: float, keep_alive: float | None = None, delta: int = 0) -> bool:
        """A use of actor ``key`` (``delta``: requests starting or ending). False if unknown."""
        m = self.loaded.get(key)
        if m is None:
            return False
        self.loaded = {**self.loaded, key: m.touched(now, keep_alive, delta)}
        return True

    def settle_idle(self, key: str, idle_since: float) -> None:
        """The actor ``key`` says it serves nothing (front doors that counted requests
        on it died): no requests in flight, last used at ``idle_since``."""
        m = self.loaded.get(key)
        if m is not None:
            m = replace(m, in_flight=0, last_used=min(m.last_used, idle_since))
            self.loaded = {**self.loaded, key: m}

    def last_used(self) -> dict[Spot, float]:
        """Last use of every replica, a loaded model's own use counting for its replica."""
        return {**self.used, **{(m.digest, m.worker): m.last_used for m in self.loaded.values()}}

    # ---- answers --------------------------------------------------------------

    def ps(self) -> list[dict[str, Any]]:
        return [m.to_dict() for m in self.loaded.values() if m.ready]

    def workers_view(self) -> list[dict[str, Any]]:
        """Each worker as ``omax_cluster`` shows it: its loaded models and fetches too."""
        out = []
        for w in self.workers.values():
            d = w.to_dict()
            d["loaded"] = [m.to_dict() for m in self.loaded.values() if m.worker == w.address]
            d["replicating"] = [
                {"digest": dg, "completed": done, "total": total}
                for (dg, wk), (done, total) in self.progress.items()
                if wk == w.address
            ]
            out.append(d)
        return out


def _complete(w: WorkerInfo, digest: str) -> bool:
    r = w.replicas.get(digest)
    return r is not None and r.complete
