"""Which sequences run this step: a pure function of plain numbers (no torch).

Each step has a budget of ``chunk`` prompt tokens. Waiting requests are admitted in
FIFO order while a decode slot is free for each and their reserved KV tokens fit the
budget, so a long prompt is never starved by later short ones:

* a prompt whose rest fits this step's remaining tokens is prefilled whole, straight
  into the cache row it decodes from (many short prompts join in one step);
* a longer one goes to the runner's single staging slot and is prefilled chunk by
  chunk over the next steps (``prefilling``); later requests wait behind it until the
  staging slot is free, except short ones that fit beside its chunk.

A prompt is always cut at the same places, ``cached + k * chunk``, whatever else runs
in its step: a prompt that does not fit what is left of a step waits for the next one
rather than being split at a boundary other requests would decide, so its prefill
runs the same way alone or among others.

An admitted prompt whose leading tokens come from a prefix row (``Waiting.cached``)
prefills from there on.
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
class Chunk:
    rid: str
    start: int
    n: int
    staged: bool  # in the staging slot (a prompt prefilled over several steps)


@dataclass(frozen=True)
class Decision:
    admit: tuple[str, ...]  # waiting requests admitted this step, in FIFO order
    prefill: tuple[Chunk, ...]  # the staged chunk (if any) first, then whole prompts
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
    used = sum(d.reserve for d in decoding) + (prefilling.reserve if prefilling else 0)
    free = max_slots - len(decoding) - (1 if prefilling else 0)
    tokens = chunk
    staged: list[Chunk] = []
    whole: list[Chunk] = []
    if prefilling is not None:
        n = min(chunk, prefilling.prompt_len - prefilling.done)
        if n > 0:
            staged.append(Chunk(prefilling.rid, prefilling.done, n, staged=True))
            tokens -= n
    stage_free = prefilling is None
    admit: list[str] = []
    for w in waiting:
        if free <= 0 or tokens <= 0:
            break
        # An empty engine always admits (a lone request larger than the budget is
        # the batcher's to cap, not ours to starve).
        alone = not decoding and not admit and prefilling is None
        if used + w.reserve > kv_budget and not alone:
            break
        rest = w.prompt_len - w.cached
        if rest <= tokens:
            whole.append(Chunk(w.rid, w.cached, rest, staged=False))
            tokens -= rest
        elif stage_free and tokens >= chunk:
            staged.append(Chunk(w.rid, w.cached, chunk, staged=True))
            stage_free, tokens = False, 0
        else:
            break  # FIFO: it waits for a step with room (or for the staging slot)
        admit.append(w.rid)
        used += w.reserve
        free -= 1
    return Decision(admit=tuple(admit), prefill=tuple(staged + whole), decode=bool(decoding))
