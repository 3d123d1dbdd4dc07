"""The registry's plain data: inference slots, replicas and loaded models.

These cross Dask RPC as dicts (``to_dict`` / ``from_dict``): the scheduler does not
deserialise pickles, and msgpack turns lists into tuples, so every field is a
str, int, float, bool or a dict/list of those.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Self


class _Flat:
    """``to_dict`` / ``from_dict`` of a dataclass whose fields are all plain values;
    ``from_dict`` ignores keys it does not know (a newer peer's)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class Slot(_Flat):
    """One inference slot: a GPU, or the CPU of a worker without one."""

    id: str  # "cpu" or "cuda:0"
    device: str  # "cpu" | "cuda"
    name: str  # "CPU" or the GPU's name
    memory_total: int
    memory_free: int
    utilization: float = 0.0


@dataclass(frozen=True)
class Replica(_Flat):
    """A worker's local copy of one manifest's blobs."""

    digest: str
    complete: bool
    bytes_done: int
    bytes_total: int


@dataclass(frozen=True)
class Loaded:
    """A ModelActor the scheduler started, and what it costs."""

    key: str  # the actor's Dask key
    name: str  # "name:tag" it was loaded for
    digest: str
    worker: str
    slot: str
    memory: int  # bytes reserved on the slot (weights + KV cache)
    num_ctx: int
    last_used: float  # time.time()
    keep_alive: float  # seconds after last use; negative = forever
    in_flight: int = 0
    ready: bool = False

    @property
    def expires_at(self) -> float:
        """Unix time the model unloads if unused; inf when kept forever."""
        if self.keep_alive < 0:
            return float("inf")
        return self.last_used + self.keep_alive

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["expires_at"] = self.expires_at if self.keep_alive >= 0 else -1.0
        return d

    def touched(self, now: float, keep_alive: float | None = None, delta: int = 0) -> Loaded:
        return replace(
            self,
            last_used=now,
            keep_alive=self.keep_alive if keep_alive is None else keep_alive,
            in_flight=max(0, self.in_flight + delta),
        )


@dataclass(frozen=True)
class WorkerInfo:
    address: str
    host: str
    slots: tuple[Slot, ...] = ()
    replicas: dict[str, Replica] = field(default_factory=dict)
    disk_budget: int = 0  # bytes its local store may hold; 0: no limit

    def to_dict(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "host": self.host,
            "disk_budget": self.disk_budget,
            "slots": [s.to_dict() for s in self.slots],
            "replicas": {k: r.to_dict() for k, r in self.replicas.items()},
        }
