"""Times as the ollama CLI prints them: "2 minutes ago", "4 minutes from now", "1.5s".

Pure functions of numbers (``now`` is an argument), so tests need no clock.
"""

from __future__ import annotations

from datetime import datetime

# omax reports a model kept "forever" (negative keep_alive) as loaded for ten more
# years; Ollama's far-future time is centuries away. Anything past this is "Forever".
FOREVER_S = 5 * 365 * 86400


def human_duration(seconds: float) -> str:
    """An approximate span: "Less than a second", "About a minute", "3 days", …"""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = s // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(seconds / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds // 3600) // 24 // 365} years"


def parse_time(text: str | None) -> float | None:
    """Seconds since the epoch of an RFC 3339 time (``Z`` or an offset); None if unset."""
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.year <= 1:  # Go's zero time
        return None
    return parsed.timestamp()


def human_time(when: float | None, now: float, zero: str = "Never") -> str:
    """``when`` relative to ``now``: "2 minutes ago", "4 minutes from now", "Forever"."""
    if when is None:
        return zero
    delta = now - when
    if delta < -FOREVER_S:
        return "Forever"
    if delta < 0:
        return human_duration(-delta) + " from now"
    return human_duration(delta) + " ago"


def go_duration(ns: int) -> str:
    """A duration in nanoseconds written as Go's ``time.Duration`` prints it (``1.2345s``)."""
    if ns == 0:
        return "0s"
    sign, ns = ("-", -ns) if ns < 0 else ("", ns)
    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{_decimal(ns, 1_000)}µs"
    if ns < 1_000_000_000:
        return f"{sign}{_decimal(ns, 1_000_000)}ms"
    hours, rest = divmod(ns, 3600 * 10**9)
    minutes, rest = divmod(rest, 60 * 10**9)
    text = f"{_decimal(rest, 10**9)}s"
    if hours:
        return f"{sign}{hours}h{minutes}m{text}"
    if minutes:
        return f"{sign}{minutes}m{text}"
    return sign + text


def _decimal(value: int, unit: int) -> str:
    """``value / unit`` exactly, without trailing zeros (Go's fractional formatting)."""
    whole, frac = divmod(value, unit)
    digits = len(str(unit)) - 1
    tail = str(frac).rjust(digits, "0").rstrip("0")
    return f"{whole}.{tail}" if tail else str(whole)
