"""Turning token ids into text incrementally (pure).

``Detokenizer`` emits text only once it is complete UTF-8: a multi-byte character
split across tokens decodes to U+FFFD until its last byte arrives.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

Decode = Callable[[Sequence[int]], str]


class Detokenizer:
    """Incremental decoding with a sliding prefix window (as vLLM and TGI do)."""

    def __init__(self, decode: Decode, prompt_tail: Sequence[int] = ()) -> None:
        self._decode = decode
        self._ids: list[int] = list(prompt_tail[-4:])
        self._prefix = 0
        self._read = len(self._ids)

    def push(self, token_id: int) -> str:
        """Add one token; return the newly complete text (may be empty)."""
        self._ids.append(token_id)
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        full = self._decode(self._ids[self._prefix :])
        if full.endswith("\ufffd") or len(full) <= len(prefix_text):
            return ""
        new = full[len(prefix_text) :]
        self._prefix = self._read
        self._read = len(self._ids)
        return new

    def flush(self) -> str:
        """Text still held back (an incomplete character at the end)."""
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        full = self._decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return full[len(prefix_text) :] if len(full) > len(prefix_text) else ""
