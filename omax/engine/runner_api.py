"""What the batcher drives: the ``Runner`` protocol its runners follow, the prompt
``Segment`` a step takes, and the cache row layout both runners share (``CacheRows``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

import torch


class Segment(NamedTuple):
    """A prompt's tokens ``ids`` at positions ``start..`` of cache row ``row``.

    ``pinned``: the request must compute the same alone and in any batch (a seeded
    one), so the fast path gives its rows kernels that do not follow the batch."""

    ids: list[int]
    start: int
    row: int
    pinned: bool = False


Segments = Sequence[Segment]


class CacheRows:
    """The row layout both runners' caches share.

    Rows ``0..max_slots-1`` are decode slots, row ``staging`` (``max_slots``) is where a
    long prompt is prefilled chunk by chunk, and ``prefix_rows`` rows after it keep the
    KV of finished sequences. Every row holds up to ``max_len`` positions.
    """

    def __init__(self, max_slots: int, max_len: int, prefix_rows: int) -> None:
        self.max_slots = max_slots
        self.max_len = max_len
        self.staging = max_slots
        self.prefix_rows = prefix_rows

    @property
    def n_rows(self) -> int:
        return self.max_slots + 1 + self.prefix_rows

    def prefix_row(self, i: int) -> int:
        """The cache row of prefix row ``i`` (``0 <= i < prefix_rows``)."""
        assert 0 <= i < self.prefix_rows
        return self.max_slots + 1 + i


class Runner(Protocol):
    """What the batcher drives: ``FastRunner`` and ``generic.GenericRunner``."""

    max_slots: int
    max_len: int
    staging: int
    prefix_rows: int

    @property
    def bytes_per_token(self) -> int: ...

    def prefix_row(self, i: int) -> int: ...

    def copy_slot(self, src: int, dst: int, length: int, start: int = 0) -> None: ...

    def prefill(self, token_ids: list[int], start: int, slot: int | None = None) -> Any: ...

    def step(
        self,
        tokens: list[int],
        positions: list[int],
        segments: Segments = (),
        pinned: Sequence[bool] = (),
    ) -> tuple[torch.Tensor | None, list[torch.Tensor]]: ...
