"""Stop strings over streamed text (pure).

``StopMatcher`` never emits a stop string, even when it arrives split across tokens:
it holds back the longest tail of the text that could still be the start of a stop
string. ``first_match`` and ``partial_suffix`` are the two questions it asks of the
text; the tool-call stream (``omax.engine.toolcalls``) asks them of its openers.
"""

from __future__ import annotations

from collections.abc import Sequence


def first_match(buf: str, needles: Sequence[str]) -> int:
    """Index of the earliest occurrence in ``buf`` of any of ``needles`` (-1: none)."""
    return min((i for i in (buf.find(s) for s in needles) if i >= 0), default=-1)


def partial_suffix(buf: str, needles: Sequence[str]) -> int:
    """Length of the longest suffix of ``buf`` that is a proper prefix of a needle."""
    best = 0
    for s in needles:
        for n in range(min(len(s) - 1, len(buf)), best, -1):
            if buf.endswith(s[:n]):
                best = n
                break
    return best


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
        cut = first_match(buf, self.stops)
        if cut >= 0:
            self.stopped = True
            self._held = ""
            return buf[:cut]
        hold = partial_suffix(buf, self.stops)
        self._held = buf[len(buf) - hold :] if hold else ""
        return buf[: len(buf) - hold]

    def flush(self) -> str:
        """At the end of generation the held text is not a stop: release it."""
        out, self._held = ("" if self.stopped else self._held), ""
        return out
