"""Quantities as people read them: byte counts in binary units."""

from __future__ import annotations


def fmt_bytes(n: float) -> str:
    """``n`` bytes in the binary unit that keeps the number under 1024 (TiB at most):
    ``"512 B"``, ``"1.5 GiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
