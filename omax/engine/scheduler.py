"""Which sequences run this step: a pure function of plain numbers (no torch).

The batcher owns one staging slot for prompt prefill (one prompt at a time, chunked)
and ``max_slots`` decode slots. A waiting request is admitted to prefill only when a
decode slot will be free for it and its reserved KV tokens fit the budget, in FIFO
order, so a long prompt is never starved by later short ones. An admitted prompt whose
leading tokens come from a prefix row (``Waiting.cached``) prefills from there on.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Waiting:
    rid: str
    prompt_len: int
    reserve: int  # KV tokens this request may grow to (prompt + generation, capped)
    cached: int = 0  # leading prompt tokens whose KV a prefix row supplies on admission


@dataclass(frozen=True)
class Prefilling:
    rid: str
    done: int  # prompt tokens already in the cache
    prompt_len: int
    reserve: int


@dataclass(frozen=True)
class Decoding:
    rid: str
    reserve: int


@dataclass(frozen=True)
class Decision:
    admit: str | None  # waiting request moved to prefill this step
    prefill: tuple[str, int, int] | None  # (rid, start, n_tokens) to prefill this step
    decode: bool  # run one decode step for every decoding sequence


def schedule(
    waiting: list[Waiting],
    prefilling: Prefilling | None,
    decoding: list[Decoding],
    *,
    max_slots: int,
    kv_budget: int,
    chunk: int,
) -> Decision:
    """Return this step's plan. ``kv_budget`` counts tokens over all sequences."""
    admit = None
    used = sum(d.reserve for d in decoding) + (prefilling.reserve if prefilling else 0)
    if prefilling is None and waiting and len(decoding) < max_slots:
        head = waiting[0]
        # An empty engine always admits (a lone request larger than the budget is
        # the batcher's to cap, not ours to starve).
        if used + head.reserve <= kv_budget or (not decoding):
            admit = head.rid
            prefilling = Prefilling(head.rid, head.cached, head.prompt_len, head.reserve)
    prefill = None
    if prefilling is not None:
        n = min(chunk, prefilling.prompt_len - prefilling.done)
        if n > 0:
            prefill = (prefilling.rid, prefilling.done, n)
    return Decision(admit=admit, prefill=prefill, decode=bool(decoding))
