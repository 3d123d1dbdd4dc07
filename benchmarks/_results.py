"""Print a results table and append it to benchmarks/RESULTS.md with the machine."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, Python {platform.python_version()}"


def append_results(title: str, rows: list[tuple[str, str, str]], command: str) -> None:
    """``rows``: (measure, value, target)."""
    width = max(len(r[0]) for r in rows)
    print(title)
    for measure, value, target in rows:
        print(f"  {measure:<{width}}  {value:>10}  (target {target})")
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"\n## {title} — {date}\n",
        f"Machine: {machine()}  ",
        f"Command: `{command}`\n",
        "| measure | value | target |",
        "|---|---|---|",
        *[f"| {m} | {v} | {t} |" for m, v, t in rows],
        "",
    ]
    with RESULTS.open("a") as f:
        f.write("\n".join(lines))
