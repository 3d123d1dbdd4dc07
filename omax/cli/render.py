"""What client commands print: sizes, tables, progress streams, timing summaries and
word-wrapped replies, in the shapes the ollama CLI uses."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterable
from typing import Any, TextIO

import click

from omax.cli.timefmt import go_duration


def human_bytes(n: float) -> str:
    """``1.5 GB``, ``270 MB``, ``12 B``: decimal units, one decimal below ten."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            value = n / scale
            if value >= 10 or value == int(value):
                return f"{int(value)} {unit}"
            return f"{value:.1f} {unit}"
    return f"{int(n)} B"


def table(rows: list[list[str]], header: list[str]) -> None:
    """Left-aligned columns four spaces apart, header first, no borders."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo("    ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def progress(lines: Iterable[dict[str, Any]], err: bool = False) -> None:
    """Render an Ollama progress stream: a bar per (status, digest) on stderr (a layer
    being pulled; one bar per worker while a model replicates: the digest is the
    model's for each), a line per other status (on stdout, or stderr with ``err``)."""
    from tqdm import tqdm

    bars: dict[str, Any] = {}
    last_status = None
    try:
        for item in lines:
            status = item.get("status", "")
            total = item.get("total")
            key = f"{status}|{item.get('digest') or ''}"
            if total:
                bar = bars.get(key)
                if bar is None:
                    bar = bars[key] = tqdm(
                        total=total, desc=status, unit="B", unit_scale=True, leave=True
                    )
                bar.update(max(0, (item.get("completed") or 0) - bar.n))
            elif status != last_status:
                click.echo(status, err=err)
            last_status = status
    finally:
        for bar in bars.values():
            bar.close()


def summary(last: dict[str, Any], out: TextIO | None = None) -> None:
    """Ollama's ``--verbose`` timing lines from a final chunk (durations in ns), on stderr."""
    out = out or sys.stderr
    total, load = last.get("total_duration", 0), last.get("load_duration", 0)
    p_count, p_dur = last.get("prompt_eval_count", 0), last.get("prompt_eval_duration", 0)
    e_count, e_dur = last.get("eval_count", 0), last.get("eval_duration", 0)
    lines = []
    if total > 0:
        lines.append(f"total duration:       {go_duration(total)}")
    if load > 0:
        lines.append(f"load duration:        {go_duration(load)}")
    if p_count > 0:
        lines.append(f"prompt eval count:    {p_count} token(s)")
    if p_dur > 0:
        lines.append(f"prompt eval duration: {go_duration(p_dur)}")
        lines.append(f"prompt eval rate:     {p_count / (p_dur / 1e9):.2f} tokens/s")
    if e_count > 0:
        lines.append(f"eval count:           {e_count} token(s)")
    if e_dur > 0:
        lines.append(f"eval duration:        {go_duration(e_dur)}")
        lines.append(f"eval rate:            {e_count / (e_dur / 1e9):.2f} tokens/s")
    for line in lines:
        print(line, file=out)
    out.flush()


class Writer:
    """Streams reply text to stdout, wrapping at word boundaries to the terminal width.

    Without wrapping, text is written as it arrives. With it, the word being typed is
    held back until a space or newline ends it, then moved to the next line if it would
    pass the margin, so no word is split across lines.
    """

    def __init__(self, wrap: bool, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.width = shutil.get_terminal_size((80, 24)).columns - 5
        self.wrap = wrap and self.width >= 5
        self.column = 0
        self.word = ""

    def write(self, text: str) -> None:
        if not self.wrap:
            self.out.write(text)
        else:
            for ch in text:
                if ch in " \t\n":
                    self._flush_word()
                    self.out.write(ch)
                    self.column = 0 if ch == "\n" else self.column + 1
                else:
                    self.word += ch
        self.out.flush()

    def _flush_word(self) -> None:
        if not self.word:
            return
        if self.column and self.column + len(self.word) > self.width:
            self.out.write("\n")
            self.column = 0
        self.out.write(self.word)
        self.column += len(self.word)
        self.word = ""

    def close(self) -> None:
        """Write what is held back (the last word)."""
        self._flush_word()
        self.out.flush()
