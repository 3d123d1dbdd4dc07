"""Test-only fault injection into the batch step.

With the Dask config key ``omax.engine.fault-inject-step`` set to a string, a step
that would run a request whose prompt (or a chat message) contains that string raises
instead, as a broken kernel would. The batcher reads the key when the engine starts;
it is never set outside tests.
"""

from __future__ import annotations

from collections.abc import Iterable

from omax.engine.request import GenerateRequest

FAULT_KEY = "omax.engine.fault-inject-step"


def fault_marker() -> str:
    """The ``omax.engine.fault-inject-step`` marker; "" when unset (always, outside tests)."""
    import dask.config

    return str(dask.config.get(FAULT_KEY, None) or "")


def check_fault(marker: str, reqs: Iterable[GenerateRequest]) -> None:
    """Raise as a broken kernel would if any of ``reqs`` asks for the fault ``marker``
    (a non-empty one: the caller skips the check, and building ``reqs``, without)."""
    if any(_asks_fault(r, marker) for r in reqs):
        raise RuntimeError(f"fault injected by {FAULT_KEY} (test only)")


def _asks_fault(req: GenerateRequest, marker: str) -> bool:
    if req.prompt is not None and marker in req.prompt:
        return True
    return any(marker in (m.content or "") for m in req.messages or ())
