"""Prompt-prefix reuse carried out on a runner's cache rows.

``omax.engine.prefix.PrefixCache`` decides, from token ids alone, which prefix row a
prompt starts from and which row a leaving sequence is kept in; these functions copy
the KV between the runner's rows as it decided and keep its bookkeeping in step with
what the rows hold.
"""

from __future__ import annotations

import time

from omax.engine.prefix import Hit, PrefixCache
from omax.engine.runner_api import Runner
from omax.engine.sequence import Sequence


def match(runner: Runner, cache: PrefixCache, prompt: list[int]) -> Hit | None:
    """The prefix row ``prompt`` may start from (None: none, or no prefix rows)."""
    return cache.match(prompt) if runner.prefix_rows > 0 else None


def reuse_prefix(runner: Runner, cache: PrefixCache, seq: Sequence, hit: Hit, row: int) -> None:
    """Copy the KV of ``seq.prompt[:hit.n]`` from a prefix row into cache ``row``."""
    t0 = time.perf_counter_ns()
    runner.copy_slot(runner.prefix_row(hit.row), row, hit.n)
    cache.use(hit.row)
    seq.pos = seq.cached = hit.n
    seq.prefill_ns += time.perf_counter_ns() - t0


def keep_prefix(runner: Runner, cache: PrefixCache, seq: Sequence) -> None:
    """Save the KV of a leaving sequence (still in its slot) to a prefix row."""
    if runner.prefix_rows <= 0 or seq.slot < 0 or seq.pos <= 0:
        return
    tokens = (seq.prompt + seq.generated)[: seq.pos]  # the last sample is not cached
    plan = cache.plan(tokens)
    if plan is None:
        return
    if plan.touch_only:
        cache.use(plan.row)
        return
    cache.begin_write(plan.row)
    runner.copy_slot(seq.slot, runner.prefix_row(plan.row), seq.pos, plan.start)
    cache.commit(plan.row, tokens)
