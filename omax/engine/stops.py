"""Turning token ids into safe text: incremental detokenising and stop strings (pure).

``Detokenizer`` emits text only once it is complete UTF-8 (a multi-byte character
split across tokens decodes to U+FFFD until its last byte arrives). ``StopMatcher``
never emits a stop string, even when it arrives split across tokens: it holds back the
longest tail of the text that could still be the start of a stop string.
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


class StopMatcher:
    """Feed text pieces; get back what may be emitted and whether a stop was hit."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self._held = ""
        self.stopped = False

    def push(self, text: str) -> str:
        if self.stopped:
            return ""
        buf = self._held + text
        cut = min((i for i in (buf.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._held = ""
            return buf[:cut]
        hold = self._holdback(buf)
        self._held = buf[len(buf) - hold :] if hold else ""
        return buf[: len(buf) - hold]

    def flush(self) -> str:
        """At the end of generation the held text is not a stop: release it."""
        out, self._held = ("" if self.stopped else self._held), ""
        return out

    def _holdback(self, buf: str) -> int:
        """Length of the longest suffix of ``buf`` that is a proper prefix of a stop."""
        best = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(buf)), best, -1):
                if buf.endswith(s[:n]):
                    best = n
                    break
        return best
