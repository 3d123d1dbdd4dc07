"""Placement policy: a cluster snapshot in, a decision out. No Dask, no torch.

``place`` picks the slot a model should load on:

1. it must fit by memory (weights plus the KV cache for the requested context),
   counting what models already loaded there reserve, and not already serve this
   model (a second copy goes to another slot);
2. among slots that fit, prefer one whose worker already holds a complete replica,
   then a partial one; then a host that does not run this model yet (spread);
   then the slot with fewest loaded models; then the most free memory;
3. a slot at ``max_loaded_per_slot`` or short of memory can still be chosen by
   evicting idle models (no request in flight), least recently used first; the
   choice needing the fewest, oldest evictions wins;
4. otherwise it refuses and says why, in numbers.

Runs in O(slots + loaded models) per decision. What a model needs comes from
``omax.plugins.memory``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from omax.plugins.state import Loaded, WorkerInfo
from omax.units import fmt_bytes


@dataclass(frozen=True)
class Need:
    digest: str
    name: str
    memory: int  # bytes: weights in memory + KV cache for num_ctx
    max_loaded_per_slot: int = 0  # 0 = no limit


@dataclass(frozen=True)
class Place:
    worker: str
    slot: str
    evict: tuple[str, ...] = ()  # keys of loaded models to unload first


@dataclass(frozen=True)
class Refuse:
    reason: str


def place(workers: Iterable[WorkerInfo], loaded: Sequence[Loaded], need: Need) -> Place | Refuse:
    """Decide where ``need`` loads. Pure: reads its arguments, changes nothing."""
    by_slot: dict[tuple[str, str], list[Loaded]] = defaultdict(list)
    hosts_running: set[str] = set()
    for m in loaded:
        by_slot[(m.worker, m.slot)].append(m)
    workers = list(workers)
    host_of = {w.address: w.host for w in workers}
    for m in loaded:
        if m.digest == need.digest and m.worker in host_of:
            hosts_running.add(host_of[m.worker])

    best: tuple[tuple, Place] | None = None
    best_evicting: tuple[tuple, Place] | None = None
    largest_free = (-1, "")
    for w in workers:
        replica = w.replicas.get(need.digest)
        locality = 2 if replica and replica.complete else 1 if replica else 0
        spread = 0 if w.host in hosts_running else 1
        for s in w.slots:
            here = by_slot.get((w.address, s.id), [])
            if any(m.digest == need.digest for m in here):
                continue
            free = s.memory_total - sum(m.memory for m in here)
            if free > largest_free[0]:
                largest_free = (free, f"{s.id} on {w.address}")
            full = bool(need.max_loaded_per_slot) and len(here) >= need.max_loaded_per_slot
            if free >= need.memory and not full:
                score = (locality, spread, -len(here), free)
                if best is None or score > best[0]:
                    best = (score, Place(w.address, s.id))
                continue
            if best is not None or s.memory_total < need.memory:
                continue
            evict = _evictions(here, free, need)
            if evict is None:
                continue
            oldest = max(m.last_used for m in evict)
            score_e = (-len(evict), -oldest, locality, spread)
            if best_evicting is None or score_e > best_evicting[0]:
                best_evicting = (score_e, Place(w.address, s.id, tuple(m.key for m in evict)))
    if best is not None:
        return best[1]
    if best_evicting is not None:
        return best_evicting[1]
    if largest_free[0] < 0:
        return Refuse(f"model '{need.name}' needs {fmt_bytes(need.memory)}; no inference slots")
    return Refuse(
        f"model '{need.name}' needs {fmt_bytes(need.memory)}; "
        f"the largest free slot has {fmt_bytes(max(largest_free[0], 0))} ({largest_free[1]})"
    )


def _evictions(here: list[Loaded], free: int, need: Need) -> list[Loaded] | None:
    """Idle models to unload, least recently used first, so ``need`` fits; None if none do."""
    idle = sorted((m for m in here if m.in_flight == 0), key=lambda m: m.last_used)
    count = len(here)
    evict: list[Loaded] = []
    for m in idle:
        limit_ok = not need.max_loaded_per_slot or count < need.max_loaded_per_slot
        if free >= need.memory and limit_ok:
            break
        evict.append(m)
        free += m.memory
        count -= 1
    limit_ok = not need.max_loaded_per_slot or count < need.max_loaded_per_slot
    if free >= need.memory and limit_ok:
        return evict
    return None


def expired(loaded: Iterable[Loaded], now: float) -> list[Loaded]:
    """Loaded models whose keep_alive has run out and that serve no request."""
    return [m for m in loaded if m.in_flight == 0 and m.ready and m.expires_at <= now]
