"""Prompt-prefix reuse: which cached KV row a new prompt starts from (pure, no torch).

The runner keeps a few "prefix rows" beside its decode slots and staging slot. When a
sequence leaves the batch, the batcher copies its cached KV (the token ids
``(prompt + generated)[:pos]``) into one of them; when a later prompt starts with the
same tokens (a chat that resends its history, ``/api/generate`` with ``context``), its
leading KV is copied from that row into the staging slot and only the rest is
prefilled. Positions ``[0, k)`` of a row hold exactly the KV of ``tokens[:k]``, so any
common prefix of a row's tokens is reusable.

``match`` decides how much a prompt reuses and from which row; ``plan_store`` decides
which row a leaving sequence is written to and from which position. Both are
functions of plain token lists; ``PrefixCache`` holds the entries and does the
bookkeeping the batcher needs, and never touches the cache tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    row: int  # index among the prefix rows (0..n_rows-1)
    tokens: tuple[int, ...]  # the token ids whose KV the row holds, positions 0..len-1
    used: int  # recency tick: larger is more recent


@dataclass(frozen=True)
class Hit:
    row: int
    n: int  # leading prompt tokens whose KV is copied from the row


@dataclass(frozen=True)
class Store:
    row: int
    start: int  # positions [0, start) of the row already hold these tokens' KV
    touch_only: bool = False  # the tokens are already cached: no copy, refresh recency


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token sequences."""
    if type(a) is not type(b):  # a list never equals a tuple, slice by slice
        a, b = tuple(a), tuple(b)
    n = min(len(a), len(b))
    if a[:n] == b[:n]:  # whole-slice comparison runs in C; the common chat case
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo] and a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def match(prompt: Sequence[int], entries: Sequence[Entry], *, min_tokens: int) -> Hit | None:
    """The row sharing the longest prefix with ``prompt``, if at least ``min_tokens``.

    The last prompt token is never reused: it must run to give the first logits.
    Ties go to the most recently used row.
    """
    best: Hit | None = None
    best_used = -1
    p = tuple(prompt)
    for e in entries:
        n = min(common_prefix(p, e.tokens), len(p) - 1)
        if best is None or n > best.n or (n == best.n and e.used > best_used):
            best, best_used = Hit(e.row, n), e.used
    if best is None or best.n < max(1, min_tokens):
        return None
    return best


def plan_store(
    tokens: Sequence[int], entries: Sequence[Entry], *, n_rows: int, min_tokens: int
) -> Store | None:
    """Where to keep the KV of a leaving sequence whose cache holds ``tokens``.

    * shorter than ``min_tokens``: not kept;
    * already contained in a row: refresh that row, copy nothing;
    * extends a row (the row's tokens are a prefix, as a chat's previous turn is):
      that row, copying only the new tail;
    * otherwise a free row, else the least recently used one, copied in full.
    """
    n = len(tokens)
    if n < max(1, min_tokens) or n_rows <= 0:
        return None
    t = tuple(tokens)
    extend: tuple[int, int] | None = None  # (row, k)
    for e in entries:
        k = common_prefix(t, e.tokens)
        if k == n:
            return Store(e.row, n, touch_only=True)
        if k == len(e.tokens) and (extend is None or k > extend[1]):
            extend = (e.row, k)
    if extend is not None:
        return Store(extend[0], extend[1])
    taken = {e.row for e in entries}
    free = [r for r in range(n_rows) if r not in taken]
    if free:
        return Store(free[0], 0)
    return Store(min(entries, key=lambda e: e.used).row, 0)


class PrefixCache:
    """The entries of ``n_rows`` prefix rows with an LRU clock (bookkeeping only)."""

    def __init__(self, n_rows: int, *, min_tokens: int = 16) -> None:
        self.n_rows = n_rows
        self.min_tokens = min_tokens
        self.entries: dict[int, Entry] = {}
        self._clock = 0

    def _tick(self) -> int:
        self._clock += 1
        return self._clock

    def match(self, prompt: Sequence[int]) -> Hit | None:
        if not self.entries:
            return None
        return match(prompt, list(self.entries.values()), min_tokens=self.min_tokens)

    def use(self, row: int) -> None:
        """Mark ``row`` as just used (a hit)."""
        e = self.entries[row]
        self.entries[row] = Entry(e.row, e.tokens, self._tick())

    def plan(self, tokens: Sequence[int]) -> Store | None:
        return plan_store(
            tokens, list(self.entries.values()), n_rows=self.n_rows, min_tokens=self.min_tokens
        )

    def begin_write(self, row: int) -> None:
        """Forget ``row`` before its KV is overwritten (a failed copy leaves no entry)."""
        self.entries.pop(row, None)

    def commit(self, row: int, tokens: Sequence[int]) -> None:
        self.entries[row] = Entry(row, tuple(tokens), self._tick())

    def tokens(self) -> int:
        """Tokens held in prefix rows (safe to call while the batching thread writes)."""
        return sum(len(e.tokens) for e in list(self.entries.values()))

    def clear(self) -> None:
        self.entries.clear()
