"""Decode steps of the fast path on CUDA, replayed from captured CUDA graphs.

A decode step of a small model launches a few hundred small kernels (a dozen per
layer), and on a GPU launching them from Python takes longer than running them: the
GPU waits on the CPU. A CUDA graph records one step's launches once and replays them
with one call. A graph fixes its shapes, so steps are bucketed:

- rows: the decode rows padded up to a power of two (at most ``max_slots``); a padding
  row decodes token 0 at position 0 and writes its key and value into column
  ``max_len`` of the cache, a column the runner allocates on CUDA for this and no
  attention reads;
- keys: every row attends over the first ``length`` cache columns, the step's longest
  row rounded up to a power of two (at least 64, at most ``max_len``), masked per row
  to its own position and each layer's window, as the eager step does.

A graph is captured the first time its bucket comes up (a fraction of a second once)
and all of them share one memory pool. The eager step stays for steps with prompt
segments, for pinned (seeded) rows, whose bits must not follow the batch, and for
everything after a capture that fails (logged once). The padded rows make the bucket's
row count, not the step's, choose a dense kernel's algorithm: like any unpinned row,
a temperature-0 request may then break a near tie otherwise than alone.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from omax.engine.fastpath import window_mask

log = logging.getLogger(__name__)

MIN_KEYS = 64


def bucket(n: int, low: int, high: int) -> int:
    """The power of two at or above ``n`` (not below ``low``), capped at ``high``."""
    b = low
    while b < n:
        b *= 2
    return min(b, high)


class GraphDecoder:
    """Captured decode steps over a ``FastRunner``'s cache (its ``k``/``v`` lists,
    with one spare column past ``max_len``)."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner
        self.fast = runner.fast
        dev = runner.device
        n = runner.max_slots
        # Every tensor a graph reads is owned here (or by the model and cache): a graph
        # keeps no reference to what it reads, and a tensor freed after capture would be
        # reused by the allocator while replays still read its old address.
        self.ids = torch.zeros(n, dtype=torch.long, device=dev)
        self.pos = torch.zeros(n, dtype=torch.long, device=dev)
        self.cols = torch.zeros(n, dtype=torch.long, device=dev)
        self.rows = torch.arange(n, device=dev)
        self.graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.pool: Any = None
        self.failed = False

    def decode(self, tokens: list[int], positions: list[int]) -> torch.Tensor | None:
        """Logits [B, V] of one decode step, or None where the eager step must run."""
        if self.failed:
            return None
        rows, keys = self.stage(tokens, positions)
        graph = self.graphs.get((rows, keys))
        if graph is None:
            try:
                graph = self.graphs[(rows, keys)] = self._capture(rows, keys)
            except Exception:  # noqa: BLE001 - any capture failure: decode eagerly
                log.exception("CUDA graph capture failed; decoding without graphs")
                self.failed = True
                return None
        graph[0].replay()
        return graph[1][: len(tokens)].clone()  # the next replay overwrites it

    def stage(self, tokens: list[int], positions: list[int]) -> tuple[int, int]:
        """Put a step's inputs, padded, where its graph reads them; its (rows, keys)."""
        r = self.runner
        b = len(tokens)
        rows = bucket(b, 1, r.max_slots)
        keys = bucket(max(positions) + 1, MIN_KEYS, r.max_len)
        pad = rows - b
        host = torch.tensor(
            [
                [*tokens, *[0] * pad],
                [*positions, *[0] * pad],
                [*positions, *[r.max_len] * pad],
            ],
            dtype=torch.long,
        )
        self.ids[:rows].copy_(host[0])
        self.pos[:rows].copy_(host[1])
        self.cols[:rows].copy_(host[2])
        r._ensure_init(rows, keys)
        return rows, keys

    def _step(self, rows: int, keys: int):
        r, fast = self.runner, self.fast
        ids, pos, cols = self.ids[:rows], self.pos[:rows], self.cols[:rows]
        at = self.rows[:rows]
        nkv, g, hd = r.n_kv, r.group, r.head_dim
        windows = [layer.window for layer in fast.layers]

        def step() -> torch.Tensor:
            masks = {w: window_mask(pos, keys, w, r.device)[:, None, None, :] for w in set(windows)}

            def attend(i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
                kc, vc = r.k[i], r.v[i]
                kc[at, :, cols] = k
                vc[at, :, cols] = v
                q = q.reshape(rows, nkv, g, hd)
                o = fast.attention(q, kc[:rows, :, :keys], vc[:rows, :, :keys], masks[windows[i]])
                return o.reshape(rows, -1)

            return fast.logits(fast.forward(ids, pos, attend))

        return step

    def _capture(self, rows: int, keys: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        step = self._step(rows, keys)
        side = torch.cuda.Stream(self.runner.device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            step()  # once outside the graph: library handles and workspaces get made
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: other actors' threads on this GPU may allocate meanwhile
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            out = step()
        self.pool = graph.pool()
        log.debug("captured a decode graph for %d rows over %d keys", rows, keys)
        return graph, out
