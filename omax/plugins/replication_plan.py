"""Replication policy, as pure functions of the registry's plain data.

- ``plan`` keeps every wanted model at its target count of complete replicas: for
  each model short of its target it picks workers to fetch it (one whose disk budget
  has room for it first; then a worker with a partial replica, since it resumes;
  then the worker holding the fewest bytes) and names the workers that hold it
  whole as sources.
- ``sources_for`` names the peers one worker can fetch a model from.
- ``budgets`` maps each worker with a disk budget to it, in bytes.
- ``plan_evictions`` frees disk on workers over their budget: it drops replicas
  that are neither loaded nor needed for a target, least recently used first, and
  plans copies of needed ones onto workers with room so they can go next round.

Workers are ``WorkerInfo``; "busy" pairs ``(digest, worker)`` are fetches already
running; "bad" pairs ``(digest, worker)`` are replicas that served damaged bytes
and are not used as sources until they verify again.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from omax.plugins.state import WorkerInfo


@dataclass(frozen=True)
class Job:
    """Fetch model ``digest`` onto ``worker`` from ``sources`` (then the origin)."""

    digest: str
    worker: str
    sources: tuple[str, ...]


@dataclass(frozen=True)
class Drop:
    """Remove the replica of ``digest`` from ``worker``."""

    digest: str
    worker: str


def holders(workers: Iterable[WorkerInfo], digest: str) -> list[str]:
    """Addresses of the workers holding a complete replica of ``digest``, sorted."""
    return sorted(
        w.address for w in workers if (r := w.replicas.get(digest)) is not None and r.complete
    )


def sources_for(
    workers: Iterable[WorkerInfo],
    digest: str,
    worker: str,
    bad: Collection[tuple[str, str]] = (),
) -> tuple[str, ...]:
    """Peers ``worker`` can fetch ``digest`` from: complete, not itself, not bad."""
    return tuple(a for a in holders(workers, digest) if a != worker and (digest, a) not in bad)


def held_bytes(w: WorkerInfo) -> int:
    return sum(r.bytes_done for r in w.replicas.values())


def plan(
    workers: Iterable[WorkerInfo],
    targets: Mapping[str, int],
    busy: Collection[tuple[str, str]] = (),
    bad: Collection[tuple[str, str]] = (),
) -> list[Job]:
    """Jobs that bring every model of ``targets`` up to its count of complete replicas.

    A running fetch counts toward the target. When there are fewer workers than the
    target, every worker gets one. A worker over its disk budget (``disk_budget``)
    is chosen only when no worker has room: the target wins over the budget.
    """
    pool = list(workers)
    load = {w.address: held_bytes(w) for w in pool}
    busy_set = set(busy)
    jobs: list[Job] = []
    for digest in sorted(targets):
        have = holders(pool, digest)
        running = {wk for d, wk in busy_set if d == digest}
        short = targets[digest] - len(set(have) | running)
        if short <= 0:
            continue
        taken = set(have) | running
        sources = tuple(a for a in have if (digest, a) not in bad)
        candidates = [w for w in pool if w.address not in taken]
        size = max((r.bytes_total for w in pool if (r := w.replicas.get(digest))), default=1)
        candidates.sort(key=lambda w: _rank(w, digest, size, load))
        for w in candidates[:short]:
            jobs.append(Job(digest, w.address, sources))
            load[w.address] += size
    return jobs


def _rank(
    w: WorkerInfo, digest: str, size: int, load: Mapping[str, int]
) -> tuple[bool, int, int, str]:
    r = w.replicas.get(digest)
    done = r.bytes_done if r else 0
    no_room = 0 < w.disk_budget < load[w.address] + size - done
    return (no_room, -done, load[w.address], w.address)


def budgets(workers: Iterable[WorkerInfo]) -> dict[str, int]:
    """Disk budget per worker address, in bytes; workers without a limit are left out."""
    return {w.address: w.disk_budget for w in workers if w.disk_budget > 0}


def plan_evictions(
    workers: Iterable[WorkerInfo],
    budgets: Mapping[str, int],
    targets: Mapping[str, int],
    loaded: Collection[tuple[str, str]] = (),
    last_used: Mapping[tuple[str, str], float] | None = None,
    busy: Collection[tuple[str, str]] = (),
) -> tuple[list[Drop], list[Job]]:
    """Drops and copies that bring workers under their disk budget (bytes).

    A replica may be dropped when it is complete, not loaded on its worker, not
    being fetched, and its model keeps its target without it; least recently used
    (``last_used[(digest, worker)]``, 0 when unknown) first. A replica needed for
    the target on an over-budget worker is copied to the worker with the most room
    that can take it, so a later round can drop it.
    """
    pool = list(workers)
    used = last_used or {}
    counts: dict[str, int] = {}
    for w in pool:
        for d, r in w.replicas.items():
            if r.complete:
                counts[d] = counts.get(d, 0) + 1
    held = {w.address: held_bytes(w) for w in pool}
    drops: list[Drop] = []
    jobs: list[Job] = []
    for w in sorted(pool, key=lambda w: w.address):
        budget = budgets.get(w.address)
        if budget is None or held[w.address] <= budget:
            continue
        replicas = sorted(
            (r for r in w.replicas.values() if r.complete),
            key=lambda r: (used.get((r.digest, w.address), 0.0), r.digest),
        )
        for r in replicas:
            if held[w.address] <= budget:
                break
            key = (r.digest, w.address)
            if key in loaded or key in busy:
                continue
            if counts[r.digest] > targets.get(r.digest, 0):
                drops.append(Drop(r.digest, w.address))
                counts[r.digest] -= 1
                held[w.address] -= r.bytes_total
                continue
            room = [
                o
                for o in pool
                if o.address != w.address
                and r.digest not in o.replicas
                and held[o.address] + r.bytes_total <= budgets.get(o.address, 1 << 62)
            ]
            if room:
                dest = max(room, key=lambda o: budgets.get(o.address, 1 << 62) - held[o.address])
                jobs.append(Job(r.digest, dest.address, (w.address,)))
                held[dest.address] += r.bytes_total
    return drops, jobs
